//! `[react]` and `[[rules]]` (in the configuration or a rules file): what each rule matches,
//! over which key and time, and what it does; validated with each problem's place
//! (`rules[2] (name): ...`, expressions with their line and column).

use std::{
    collections::BTreeMap,
    io::Read as _,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::expr::{Captures, Filter, FilterError, Macros, compile_steps, parse};

/// `[react]`: how rules act.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReactConfig {
    /// `monitor` (every action is audited as a dry run) or `enforce` (actions run).
    pub mode: Mode,
    /// A TOML file of more `[[rules]]`.
    pub rules_file: Option<PathBuf>,
    /// The append-only, hash-chained audit log.
    pub audit_log: PathBuf,
    /// Where `quarantine` moves files (created 0700; on the same file system as the files).
    pub quarantine_dir: PathBuf,
    /// Keys a rule holds per window (count, distinct) or pending (absence); more are evicted
    /// and counted.
    pub max_keys: usize,
    /// Partial matches a sequence rule holds; more are evicted and counted.
    pub max_partials: usize,
    /// Detections waiting for the action worker; more are audited as `queue_full`.
    pub action_queue: usize,
}

impl Default for ReactConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Monitor,
            rules_file: None,
            audit_log: PathBuf::from("/var/log/vexevent/audit.log"),
            quarantine_dir: PathBuf::from("/var/lib/vexevent/quarantine"),
            max_keys: 10_000,
            max_partials: 10_000,
            action_queue: 256,
        }
    }
}

/// The global switch over every rule's actions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Decide and audit, act on nothing.
    #[default]
    Monitor,
    /// Act (actions with `dry_run = true` still only audit).
    Enforce,
}

/// A rules file: `[[rules]]` only.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// One `[[rules]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    pub kind: RuleKind,
    /// The event condition (count, distinct, absence's first event).
    #[serde(rename = "match")]
    pub match_expr: Option<String>,
    /// count: events; distinct: distinct paths.
    pub at_least: Option<u64>,
    /// The rule's time window, in milliseconds of kernel time.
    pub within_ms: u64,
    /// What events are grouped by.
    #[serde(default)]
    pub key: KeyField,
    /// sequence: 2 to 8 steps, in order.
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// absence: the event that must follow (same key) within `within_ms`.
    pub followed_by: Option<String>,
    /// Events of these paths (prefixes), task names or users never count for the rule.
    #[serde(default)]
    pub except: Exceptions,
    #[serde(default)]
    pub actions: Vec<ActionConfig>,
}

/// Pattern of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleKind {
    /// `at_least` matching events within the window.
    Count,
    /// `at_least` distinct paths among matching events within the window.
    Distinct,
    /// The steps in order within the window.
    Sequence,
    /// `match` not followed by `followed_by` within the window.
    Absence,
}

impl RuleKind {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            RuleKind::Count => "count",
            RuleKind::Distinct => "distinct",
            RuleKind::Sequence => "sequence",
            RuleKind::Absence => "absence",
        }
    }
}

/// What a rule groups events by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyField {
    Path,
    /// The path's directory.
    Dir,
    #[default]
    Pid,
    Uid,
    Comm,
    Inode,
    /// One group for every event.
    None,
}

/// One step of a sequence: `match` may compare with earlier steps' fields (`path == create.path`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    pub name: String,
    #[serde(rename = "match")]
    pub match_expr: String,
}

/// Events a rule ignores.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Exceptions {
    /// Path prefixes.
    pub paths: Vec<String>,
    pub comm: Vec<String>,
    pub uid: Vec<u32>,
}

/// One action of a rule.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    #[serde(rename = "type")]
    pub action: ActionType,
    /// signal: `SIGSTOP`, `SIGCONT` or `SIGKILL`.
    pub signal: Option<String>,
    /// run: the program and its arguments (no shell).
    #[serde(default)]
    pub argv: Vec<String>,
    /// run: the unprivileged user it runs as.
    pub user: Option<String>,
    /// chmod: the new permission bits (TOML octal, e.g. `0o000`).
    pub mode: Option<u32>,
    /// xattr: the extended attribute's name, with its namespace (`user.vexevent.suspect`).
    pub xattr: Option<String>,
    /// xattr: its value (text).
    pub value: Option<String>,
    /// Decide and audit, but do not act.
    #[serde(default)]
    pub dry_run: bool,
    /// At most this many attempts per minute (more are audited as `rate_limited`).
    #[serde(default = "default_per_minute")]
    pub max_per_minute: u32,
    /// Longest the action may take (a `run` program is killed then).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Undo the action this long after it was done (signal SIGSTOP, quarantine, chmod, xattr),
    /// as `vexevent rollback` would.
    pub rollback_after_ms: Option<u64>,
}

const fn default_per_minute() -> u32 {
    10
}

const fn default_timeout_ms() -> u64 {
    2_000
}

/// Kind of action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionType {
    Signal,
    Run,
    Quarantine,
    Chmod,
    Xattr,
}

impl ActionType {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            ActionType::Signal => "signal",
            ActionType::Run => "run",
            ActionType::Quarantine => "quarantine",
            ActionType::Chmod => "chmod",
            ActionType::Xattr => "xattr",
        }
    }
}

/// What is wrong with a rule.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("react.rules_file {path}: {message}")]
    RulesFile { path: PathBuf, message: String },
    #[error(transparent)]
    Filter(#[from] FilterError),
}

/// Largest rules file read, in bytes.
const MAX_RULES_FILE_BYTES: u64 = 4 << 20;
/// Steps a sequence may have.
const MAX_STEPS: usize = 8;
/// Longest extended attribute name (the kernel's `XATTR_NAME_MAX`) and the longest value an
/// action sets.
const MAX_XATTR_NAME: usize = 255;
const MAX_XATTR_VALUE: usize = 4096;
/// Longest delay of an automatic rollback (a day).
const MAX_ROLLBACK_AFTER_MS: u64 = 86_400_000;

/// Reads a rules file.
///
/// # Errors
/// When it cannot be read, is too large, or is not a valid rules file (with the line).
pub fn read_rules_file(path: &Path) -> Result<Vec<RuleConfig>, RuleError> {
    let error = |message: String| RuleError::RulesFile { path: path.to_owned(), message };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_RULES_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| error(e.to_string()))?;
    if text.len() as u64 > MAX_RULES_FILE_BYTES {
        return Err(error(format!("larger than {MAX_RULES_FILE_BYTES} bytes")));
    }
    toml::from_str::<RulesFile>(&text)
        .map(|file| file.rules)
        .map_err(|e| error(e.to_string().trim_end().replace('\n', " ")))
}

/// The uid and gid of `user`, from the password database.
#[must_use]
pub fn lookup_user(user: &str) -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(user).ok()?;
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid pointers to a name, an entry, a buffer of the given length and the result.
    let rc = unsafe {
        libc::getpwnam_r(name.as_ptr(), &raw mut entry, buffer.as_mut_ptr(), buffer.len(), &raw mut found)
    };
    (rc == 0 && !found.is_null()).then_some((entry.pw_uid, entry.pw_gid))
}

/// The signal number of a supported signal name.
#[must_use]
pub fn signal_number(name: &str) -> Option<i32> {
    match name {
        "SIGSTOP" => Some(libc::SIGSTOP),
        "SIGCONT" => Some(libc::SIGCONT),
        "SIGKILL" => Some(libc::SIGKILL),
        _ => None,
    }
}

/// What is wrong with one action.
fn action_problems(action: &ActionConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let kind = action.action;
    for (present, field) in [
        (action.signal.is_some() && kind != ActionType::Signal, "signal"),
        (!action.argv.is_empty() && kind != ActionType::Run, "argv"),
        (action.user.is_some() && kind != ActionType::Run, "user"),
        (action.mode.is_some() && kind != ActionType::Chmod, "mode"),
        (action.xattr.is_some() && kind != ActionType::Xattr, "xattr"),
        (action.value.is_some() && kind != ActionType::Xattr, "value"),
    ] {
        if present {
            problems.push(format!("`{field}` does not apply"));
        }
    }
    match kind {
        ActionType::Signal => {
            if action.signal.as_deref().and_then(signal_number).is_none() {
                problems.push("`signal` must be SIGSTOP, SIGCONT or SIGKILL".into());
            }
        }
        ActionType::Run => {
            if action.argv.is_empty() {
                problems.push("`argv` must name the program".into());
            }
            let user = action.user.as_deref().unwrap_or(DEFAULT_RUN_USER);
            match lookup_user(user) {
                None => problems.push(format!("user {user:?} does not exist")),
                Some((0, _)) => problems.push(format!("user {user:?} is root; programs run unprivileged")),
                Some(_) => {}
            }
        }
        ActionType::Chmod => {
            if action.mode.is_none_or(|mode| mode > 0o7777) {
                problems.push("`mode` must be permission bits (e.g. 0o000)".into());
            }
        }
        ActionType::Xattr => {
            let namespaced = action.xattr.as_deref().is_some_and(|name| {
                name.len() <= MAX_XATTR_NAME
                    && ["user.", "trusted.", "security."]
                        .iter()
                        .any(|ns| name.len() > ns.len() && name.starts_with(ns))
                    && !name.contains('\0')
            });
            if !namespaced {
                problems.push(format!(
                    "`xattr` must name an attribute in the user., trusted. or security. namespace (at most {MAX_XATTR_NAME} bytes)"
                ));
            }
            if action.value.as_deref().is_none_or(|value| value.len() > MAX_XATTR_VALUE) {
                problems.push(format!("`value` must be given (at most {MAX_XATTR_VALUE} bytes)"));
            }
        }
        ActionType::Quarantine => {}
    }
    if let Some(after) = action.rollback_after_ms {
        let reversible = match kind {
            ActionType::Signal => action.signal.as_deref() == Some("SIGSTOP"),
            ActionType::Run => false,
            ActionType::Quarantine | ActionType::Chmod | ActionType::Xattr => true,
        };
        if !reversible {
            problems.push("`rollback_after_ms` applies to actions that can be undone (signal SIGSTOP, quarantine, chmod, xattr)".into());
        }
        if after == 0 || after > MAX_ROLLBACK_AFTER_MS {
            problems.push(format!("`rollback_after_ms` must be 1 to {MAX_ROLLBACK_AFTER_MS}"));
        }
    }
    if action.max_per_minute == 0 || action.timeout_ms == 0 {
        problems.push("`max_per_minute` and `timeout_ms` must be at least 1".into());
    }
    problems
}

/// Every problem of `rules` (names unique, fields for their kind, expressions compile).
#[must_use]
pub fn rule_problems(rules: &[RuleConfig], macros: &Macros) -> Vec<RuleError> {
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (index, rule) in rules.iter().enumerate() {
        let what = format!("rules[{index}] ({})", rule.name);
        let mut invalid = |message: String| problems.push(RuleError::Invalid { what: what.clone(), message });
        if rule.name.is_empty() || !rule.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            invalid("`name` must be letters, digits, `-`, `_` or `.`".into());
        }
        if !seen.insert(rule.name.as_str()) {
            invalid("the name is used twice".into());
        }
        if rule.within_ms == 0 {
            invalid("`within_ms` must be at least 1".into());
        }
        let kind = rule.kind.name();
        let counts = matches!(rule.kind, RuleKind::Count | RuleKind::Distinct);
        match (counts, rule.at_least) {
            (true, None | Some(0)) => invalid(format!("kind {kind} needs `at_least` (1 or more)")),
            (false, Some(_)) => invalid(format!("`at_least` does not apply to kind {kind}")),
            _ => {}
        }
        let sequence = rule.kind == RuleKind::Sequence;
        match (sequence, rule.match_expr.is_some()) {
            (false, false) => invalid(format!("kind {kind} needs `match`")),
            (true, true) => invalid("kind sequence matches with `steps`, not `match`".into()),
            _ => {}
        }
        if sequence && !(2..=MAX_STEPS).contains(&rule.steps.len()) {
            invalid(format!("kind sequence needs 2 to {MAX_STEPS} `steps`"));
        }
        if !sequence && !rule.steps.is_empty() {
            invalid(format!("`steps` does not apply to kind {kind}"));
        }
        match (rule.kind == RuleKind::Absence, rule.followed_by.is_some()) {
            (true, false) => invalid("kind absence needs `followed_by`".into()),
            (false, true) => invalid(format!("`followed_by` does not apply to kind {kind}")),
            _ => {}
        }
        for (n, action) in rule.actions.iter().enumerate() {
            for message in action_problems(action) {
                invalid(format!("actions[{n}] ({}): {message}", action.action.name()));
            }
        }
        let name = |part: &str| format!("rules.{}.{part}", rule.name);
        for (part, text) in [("match", &rule.match_expr), ("followed_by", &rule.followed_by)] {
            if let Some(text) = text {
                if let Err(error) = Filter::new(&name(part), text, macros) {
                    problems.push(error.into());
                }
            }
        }
        let mut earlier: Vec<&str> = Vec::new();
        let mut captures = Captures::default();
        for step in &rule.steps {
            let step_name = name(&format!("steps.{}", step.name));
            match parse(&step.match_expr) {
                Err(source) => problems.push(FilterError::Parse { name: step_name, source }.into()),
                Ok(expr) => {
                    if let Err(source) = compile_steps(&expr, &earlier, macros, &mut captures) {
                        problems.push(FilterError::Compile { name: step_name, source }.into());
                    }
                }
            }
            earlier.push(&step.name);
        }
    }
    problems
}

/// The user `run` programs run as unless the action names one.
pub const DEFAULT_RUN_USER: &str = "nobody";

/// The validated rules and how they act: what the `react` stage is built from.
#[derive(Clone, Debug, Default)]
pub struct ReactSettings {
    pub config: ReactConfig,
    /// The configuration's rules, then the rules file's.
    pub rules: Vec<RuleConfig>,
    /// The filter's macros (`@name`), usable in rules.
    pub macros: BTreeMap<String, String>,
}
