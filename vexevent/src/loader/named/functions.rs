//! Kernel functions by name (`[[kernel_functions]]`): names and globs resolved against
//! /proc/kallsyms, arguments typed from the kernel's BTF (the module's split BTF for a module's
//! functions) or from a declared signature, the struct offsets the probes follow, and which
//! functions exist, are attachable, or are inlined or missing (`vexevent functions --list`).

use std::collections::HashMap;

use serde::Deserialize;
use vexevent_common::{
    KERNEL_ARGS, KERNEL_TEXTS, KERNEL_VALUES, KernelField, KernelLayout, KernelSpec, field_kind, spec_kernel,
};

use super::{NamedKind, NamedSource, NamedText, NamedValue, default_rate, event_type_for};
use crate::{
    event::EventType,
    loader::kernel_btf::{KernelBtf, ParamType},
};

/// Most functions one glob may attach to.
pub const MAX_GLOB_MATCHES: usize = 32;
/// Where the kernel lists its symbols.
const KALLSYMS: &str = "/proc/kallsyms";
/// Present when the kernel can create kprobes through perf (what aya attaches with).
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

fn yes() -> bool {
    true
}

/// `[[kernel_functions]]`: one kernel function, or a glob of them.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// The function's name (`vfs_mkdir`), or a glob (`vexfs_*`) matched against /proc/kallsyms
    /// (at most 32 functions).
    pub name: String,
    /// Arguments to capture, by their names (default: every argument of the first six that has
    /// a type vexevent reads, at most eight numbers and two objects or strings).
    #[serde(default)]
    pub args: Vec<String>,
    /// The function's parameters as C declarations (`"struct dentry *dentry"`, `"umode_t
    /// mode"`), for functions without BTF (an out-of-tree module built without it).
    #[serde(default)]
    pub signature: Vec<String>,
    /// One event at return with the duration and return value (else one at entry).
    #[serde(default = "yes")]
    pub timed: bool,
    /// The `VexFS` event type (default: implied by the name, e.g. `mkdir` -> `FilesystemMkdir`,
    /// else `ObservabilityAuditEvent`).
    #[serde(default)]
    pub event_type: Option<EventType>,
    /// Most events per second per CPU (0: no cap); the rest are counted (`filtered_kernel_rate`).
    #[serde(default = "default_rate")]
    pub rate_per_sec: u32,
    /// How to attach: `auto` (fentry/fexit for a vmlinux function where the kernel loads them,
    /// else kprobe/kretprobe) or `kprobe`.
    #[serde(default)]
    pub hook: FunctionHook,
}

/// How a function is attached (`[[kernel_functions]] hook`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FunctionHook {
    /// fentry/fexit where possible, else kprobe/kretprobe.
    #[default]
    Auto,
    /// kprobe/kretprobe only.
    Kprobe,
}

/// A function symbol of the running kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub address: u64,
    /// The module it belongs to (`None`: vmlinux).
    pub module: Option<String>,
}

/// The text symbols of /proc/kallsyms by name (the first of duplicate names).
#[must_use]
pub fn parse_kallsyms(text: &str) -> HashMap<String, Symbol> {
    let mut symbols = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(address), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        let Ok(address) = u64::from_str_radix(address, 16) else { continue };
        let module = fields.next().map(|m| m.trim_matches(['[', ']']).to_owned());
        symbols.entry(name.to_owned()).or_insert(Symbol { address, module });
    }
    symbols
}

/// How one function stands on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionStatus {
    pub name: String,
    /// In /proc/kallsyms (its address, its module).
    pub symbol: Option<Symbol>,
    /// Described in the kernel's BTF (its arguments can be typed).
    pub btf: bool,
    /// `Ok(how)` when it can be attached here, else why not.
    pub attachable: Result<String, String>,
}

/// Whether this kernel attaches kprobes (and why not).
pub fn kprobes_available() -> Result<(), String> {
    if std::path::Path::new(KPROBE_PMU).exists() {
        Ok(())
    } else {
        Err(format!("this kernel has no kprobes ({KPROBE_PMU} is missing: CONFIG_KPROBES unset)"))
    }
}

/// The vmlinux BTF and the BTF of every loaded module asked for.
#[derive(Default)]
struct BtfCache {
    by_module: HashMap<String, Option<KernelBtf>>,
}

impl BtfCache {
    fn get(&mut self, module: Option<&str>) -> Option<&KernelBtf> {
        let key = module.unwrap_or("vmlinux").to_owned();
        self.by_module
            .entry(key)
            .or_insert_with(|| match module {
                Some(module) => KernelBtf::running_kernel(module).ok(),
                None => KernelBtf::vmlinux().ok(),
            })
            .as_ref()
    }
}

/// The functions matching `pattern` (a name or a glob) and how each stands: in kallsyms or
/// not, in BTF or not (in BTF but not in kallsyms: inlined), attachable (by fentry or kprobe,
/// or kprobe only: a module's function) or why not.
///
/// # Errors
/// When the glob is malformed or /proc/kallsyms cannot be read.
pub fn list_functions(pattern: &str) -> Result<Vec<FunctionStatus>, String> {
    let matcher =
        globset::Glob::new(pattern).map_err(|e| format!("bad glob {pattern:?}: {e}"))?.compile_matcher();
    let kallsyms = std::fs::read_to_string(KALLSYMS).map_err(|e| format!("cannot read {KALLSYMS}: {e}"))?;
    let symbols = parse_kallsyms(&kallsyms);
    let mut cache = BtfCache::default();
    let vmlinux_functions: Vec<String> = cache
        .get(None)
        .map(|btf| btf.functions().keys().map(|&name| name.to_owned()).collect())
        .unwrap_or_default();
    let mut names: Vec<String> =
        symbols.keys().filter(|name| matcher.is_match(name.as_str())).cloned().collect();
    names.extend(
        vmlinux_functions.into_iter().filter(|name| matcher.is_match(name) && !symbols.contains_key(name)),
    );
    if names.is_empty() && !pattern.contains(['*', '?', '[']) {
        names.push(pattern.to_owned());
    }
    names.sort();
    names.dedup();
    let kprobes = kprobes_available();
    Ok(names
        .into_iter()
        .map(|name| {
            let symbol = symbols.get(&name).cloned();
            let btf = cache
                .get(symbol.as_ref().and_then(|s| s.module.as_deref()))
                .is_some_and(|btf| btf.functions().contains_key(name.as_str()));
            let attachable = match (&symbol, &kprobes) {
                (None, _) if btf => Err("inlined: in BTF but not in /proc/kallsyms".to_owned()),
                (None, _) => {
                    Err("missing: not in /proc/kallsyms nor BTF (inlined, not built, or misspelled)"
                        .to_owned())
                }
                (Some(_), Err(why)) => Err(why.clone()),
                // vmlinux functions described by BTF: fentry is tried first at start.
                (Some(symbol), Ok(())) if symbol.module.is_none() && btf => Ok("fentry or kprobe".to_owned()),
                (Some(_), Ok(())) => Ok("kprobe".to_owned()),
            };
            FunctionStatus { name, symbol, btf, attachable }
        })
        .collect())
}

/// What one argument becomes in the record.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Capture {
    Value {
        size: u8,
        signed: bool,
    },
    Text(u8),
    /// `struct renamedata *`: both dentries.
    Rename,
    /// Not read (a pointer to something vexevent does not follow, a struct by value).
    Skip,
}

fn capture_of(ty: &ParamType) -> Capture {
    match ty {
        ParamType::Int { size, signed } => {
            Capture::Value { size: u8::try_from(*size).unwrap_or(8).min(8), signed: *signed }
        }
        ParamType::CharPointer => Capture::Text(field_kind::STR),
        ParamType::StructPointer(name) => match name.as_str() {
            "dentry" => Capture::Text(field_kind::DENTRY),
            "file" => Capture::Text(field_kind::FILE),
            "path" => Capture::Text(field_kind::PATH),
            "inode" => Capture::Text(field_kind::INODE),
            "renamedata" => Capture::Rename,
            _ => Capture::Skip,
        },
        ParamType::Pointer | ParamType::Other => Capture::Skip,
    }
}

/// A declared parameter (`"struct dentry *dentry"`, `"umode_t mode"`, `"const char *name"`):
/// its name and type.
///
/// # Errors
/// When the declaration has no name or its type is not one vexevent knows.
pub fn parse_declaration(text: &str) -> Result<(String, ParamType), String> {
    let text = text.trim();
    let split = text.rfind([' ', '*']).ok_or_else(|| format!("{text:?} has no parameter name"))?;
    let (ty, name) = (text[..=split].trim(), text[split + 1..].trim());
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("{text:?} has no parameter name"));
    }
    let words: Vec<&str> = ty.split_whitespace().filter(|w| !matches!(*w, "const" | "volatile")).collect();
    let ty = words.join(" ");
    let param = if let Some(base) = ty.strip_suffix('*') {
        let base = base.trim();
        if base.ends_with('*') {
            ParamType::Pointer
        } else if let Some(name) = base.strip_prefix("struct ") {
            ParamType::StructPointer(name.trim().to_owned())
        } else if matches!(base, "char" | "unsigned char" | "signed char") {
            ParamType::CharPointer
        } else {
            ParamType::Pointer
        }
    } else {
        let (size, signed) = match ty.as_str() {
            "bool" | "u8" | "unsigned char" => (1, false),
            "char" | "s8" | "signed char" => (1, true),
            "u16" | "unsigned short" | "umode_t" => (2, false),
            "s16" | "short" => (2, true),
            "u32" | "unsigned int" | "unsigned" | "dev_t" | "gfp_t" | "uid_t" | "gid_t" => (4, false),
            "s32" | "int" | "pid_t" => (4, true),
            "u64" | "unsigned long" | "unsigned long long" | "size_t" | "ino_t" | "sector_t" => (8, false),
            "s64" | "long" | "long long" | "ssize_t" | "loff_t" => (8, true),
            other => {
                return Err(format!(
                    "type {other:?} of {name} is not one vexevent reads (integers, char *, struct pointers)"
                ));
            }
        };
        ParamType::Int { size, signed }
    };
    Ok((name.to_owned(), param))
}

/// A planned function: where to attach, what the probes copy, what the record's slots mean.
#[derive(Clone, Debug)]
pub struct FunctionPlan {
    pub function: String,
    pub address: u64,
    /// Try fentry first (`hook = "auto"` and a vmlinux function: fentry needs its BTF).
    pub fentry: bool,
    pub spec: KernelSpec,
    pub source: NamedSource,
}

/// Assigns a function's arguments to the record's slots.
fn function_slots(
    config: &FunctionConfig,
    function: &str,
    params: &[(String, ParamType)],
    layout: Option<&KernelLayout>,
) -> Result<(KernelSpec, NamedSource), String> {
    let mut spec = KernelSpec {
        flags: if config.timed { spec_kernel::TIMED } else { 0 },
        rate_per_sec: config.rate_per_sec,
        ..KernelSpec::default()
    };
    let mut source = NamedSource {
        kind: NamedKind::Kprobe,
        name: function.to_owned(),
        event_type: event_type_for(function, config.event_type),
        values: Vec::new(),
        texts: Vec::new(),
        timed: config.timed,
        signed_return: None,
    };
    for wanted in &config.args {
        let Some(index) = params.iter().position(|(name, _)| name == wanted) else {
            let known: Vec<&str> = params.iter().map(|(name, _)| name.as_str()).collect();
            return Err(format!("has no argument {wanted}; its arguments: {}", known.join(", ")));
        };
        if index >= KERNEL_ARGS {
            return Err(format!(
                "argument {wanted} is argument {index}; only the first {KERNEL_ARGS} are read"
            ));
        }
        if capture_of(&params[index].1) == Capture::Skip {
            return Err(format!("argument {wanted} ({:?}) is not a type vexevent reads", params[index].1));
        }
    }
    let explicit = !config.args.is_empty();
    for (index, (name, ty)) in params.iter().enumerate().take(KERNEL_ARGS) {
        if explicit && !config.args.contains(name) {
            continue;
        }
        let offset = u16::try_from(index).unwrap_or(0);
        let mut text = |kind: u8, text_name: String| -> Result<(), String> {
            if kind != field_kind::STR && layout.is_none() {
                return Err(format!("argument {name} needs the kernel's BTF for struct offsets"));
            }
            match spec.texts.get_mut(source.texts.len()) {
                Some(slot) => {
                    *slot = KernelField { offset, size: 0, kind };
                    source.texts.push(NamedText { name: text_name, object: kind != field_kind::STR });
                    Ok(())
                }
                None if explicit => {
                    Err(format!("more than {KERNEL_TEXTS} object or string arguments; name fewer in args"))
                }
                None => Ok(()),
            }
        };
        match capture_of(ty) {
            Capture::Value { size, signed } => match spec.values.get_mut(source.values.len()) {
                Some(slot) => {
                    *slot = KernelField { offset, size, kind: field_kind::INT };
                    source.values.push(NamedValue { name: name.clone(), signed, size });
                }
                None if explicit => {
                    return Err(format!("more than {KERNEL_VALUES} numeric arguments; name fewer in args"));
                }
                None => {}
            },
            Capture::Text(kind) => text(kind, name.clone())?,
            Capture::Rename => {
                text(field_kind::RENAME_OLD, format!("{name}.old_dentry"))?;
                text(field_kind::RENAME_NEW, format!("{name}.new_dentry"))?;
            }
            Capture::Skip => {}
        }
    }
    Ok((spec, source))
}

/// The offsets the function probes follow, from `btf`.
///
/// # Errors
/// When the BTF lacks `struct dentry`, `inode`, `super_block`, `file` or `path`.
pub fn layout(btf: &KernelBtf) -> Result<KernelLayout, String> {
    let field = |ty: &str, path: &[&str]| btf.field(ty, path).map(|f| f.offset).map_err(|e| e.to_string());
    Ok(KernelLayout {
        dentry_name: field("dentry", &["d_name", "name"])?,
        dentry_parent: field("dentry", &["d_parent"])?,
        dentry_inode: field("dentry", &["d_inode"])?,
        dentry_sb: field("dentry", &["d_sb"])?,
        inode_ino: field("inode", &["i_ino"])?,
        inode_sb: field("inode", &["i_sb"])?,
        sb_dev: field("super_block", &["s_dev"])?,
        file_dentry: field("file", &["f_path", "dentry"])?,
        path_dentry: field("path", &["dentry"])?,
        // Linux 5.12+; older kernels pass rename's dentries as arguments.
        rename_old_dentry: field("renamedata", &["old_dentry"]).unwrap_or(0),
        rename_new_dentry: field("renamedata", &["new_dentry"]).unwrap_or(0),
        padding: 0,
    })
}

/// Plans every configured function from source index `first` on: the plans, the layout (when
/// the kernel has BTF), and for each name that cannot be planned, why.
#[must_use]
pub fn plan_functions(configs: &[FunctionConfig], first: u32, max_sources: u32) -> Planned {
    let mut planned = Planned::default();
    if configs.is_empty() {
        return planned;
    }
    let kallsyms = match std::fs::read_to_string(KALLSYMS) {
        Ok(text) => parse_kallsyms(&text),
        Err(error) => {
            planned
                .refused
                .extend(configs.iter().map(|c| (c.name.clone(), format!("cannot read {KALLSYMS}: {error}"))));
            return planned;
        }
    };
    let mut cache = BtfCache::default();
    planned.layout = cache.get(None).and_then(|btf| layout(btf).ok());
    let mut next = first;
    for config in configs {
        let names = match resolve(&config.name, &kallsyms) {
            Ok(names) => names,
            Err(why) => {
                planned.refused.push((config.name.clone(), why));
                continue;
            }
        };
        for name in names {
            if next >= max_sources {
                planned.refused.push((name, format!("more than {max_sources} tracepoints and functions")));
                continue;
            }
            let symbol = &kallsyms[&name];
            let signature = if config.signature.is_empty() {
                let btf = cache.get(symbol.module.as_deref());
                match btf.and_then(|btf| btf.functions().get(name.as_str()).and_then(|&id| btf.signature(id)))
                {
                    Some(signature) => Ok(signature),
                    None => Err("no BTF for it (declare its parameters in signature)".to_owned()),
                }
            } else {
                // Declared functions are taken to return an int, as most kernel functions do.
                let params: Result<Vec<_>, _> =
                    config.signature.iter().map(|d| parse_declaration(d)).collect();
                params.map(|params| (params, ParamType::Int { size: 4, signed: true }))
            };
            let slots = signature.and_then(|(params, returns)| {
                let (spec, mut source) = function_slots(config, &name, &params, planned.layout.as_ref())?;
                if let ParamType::Int { size, signed: true } = returns {
                    source.signed_return = u8::try_from(size).ok();
                }
                Ok((spec, source))
            });
            match slots {
                Ok((mut spec, source)) => {
                    spec.source = next;
                    next += 1;
                    planned.plans.push(FunctionPlan {
                        function: name,
                        address: symbol.address,
                        fentry: symbol.module.is_none() && config.hook == FunctionHook::Auto,
                        spec,
                        source,
                    });
                }
                Err(why) => planned.refused.push((name, why)),
            }
        }
    }
    planned
}

/// The functions a configured name stands for.
fn resolve(pattern: &str, kallsyms: &HashMap<String, Symbol>) -> Result<Vec<String>, String> {
    if !pattern.contains(['*', '?', '[']) {
        return if kallsyms.contains_key(pattern) {
            Ok(vec![pattern.to_owned()])
        } else {
            Err("not in /proc/kallsyms (inlined, not built, module not loaded, or misspelled)".to_owned())
        };
    }
    let matcher = globset::Glob::new(pattern).map_err(|e| format!("bad glob: {e}"))?.compile_matcher();
    let mut names: Vec<String> =
        kallsyms.keys().filter(|name| matcher.is_match(name.as_str())).cloned().collect();
    names.sort();
    if names.is_empty() {
        return Err("no function in /proc/kallsyms matches".to_owned());
    }
    if names.len() > MAX_GLOB_MATCHES {
        return Err(format!("matches {} functions; at most {MAX_GLOB_MATCHES} per entry", names.len()));
    }
    Ok(names)
}

/// What `plan_functions` found.
#[derive(Debug, Default)]
pub struct Planned {
    pub plans: Vec<FunctionPlan>,
    pub layout: Option<KernelLayout>,
    /// Names that cannot be attached, and why.
    pub refused: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, args: &[&str]) -> FunctionConfig {
        FunctionConfig {
            name: name.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            signature: Vec::new(),
            timed: true,
            event_type: None,
            rate_per_sec: 0,
            hook: FunctionHook::Auto,
        }
    }

    #[test]
    fn the_hook_is_auto_or_kprobe() {
        let parse = |text: &str| toml::from_str::<FunctionConfig>(text).map(|c| c.hook);
        assert_eq!(parse("name = \"vfs_mkdir\"").unwrap(), FunctionHook::Auto);
        assert_eq!(parse("name = \"vfs_mkdir\"\nhook = \"kprobe\"").unwrap(), FunctionHook::Kprobe);
        assert!(parse("name = \"vfs_mkdir\"\nhook = \"uprobe\"").is_err());
    }

    #[test]
    fn reads_kallsyms() {
        let symbols = parse_kallsyms(
            "ffffffff816ce930 T vfs_mkdir\nffffffffc0a008d0 t vexfs_create\t[vexfs]\n\
             ffffffff81000000 D some_data\nffffffff816ce931 T vfs_mkdir\nnot a line\n",
        );
        assert_eq!(symbols["vfs_mkdir"], Symbol { address: 0xffff_ffff_816c_e930, module: None });
        assert_eq!(symbols["vexfs_create"].module.as_deref(), Some("vexfs"));
        assert!(!symbols.contains_key("some_data"));
        assert_eq!(resolve("vfs_*", &symbols).unwrap(), ["vfs_mkdir"]);
        assert!(resolve("vfs_rmdir", &symbols).is_err());
        assert!(resolve("nothing_*", &symbols).is_err());
    }

    #[test]
    fn parses_declared_signatures() {
        assert_eq!(
            parse_declaration("struct dentry *dentry").unwrap(),
            ("dentry".into(), ParamType::StructPointer("dentry".into()))
        );
        assert_eq!(parse_declaration("const char *name").unwrap(), ("name".into(), ParamType::CharPointer));
        assert_eq!(
            parse_declaration("umode_t mode").unwrap(),
            ("mode".into(), ParamType::Int { size: 2, signed: false })
        );
        assert_eq!(
            parse_declaration("struct inode **delegated").unwrap(),
            ("delegated".into(), ParamType::Pointer)
        );
        assert!(parse_declaration("struct dentry *").is_err());
        assert!(parse_declaration("float x").is_err());
    }

    #[test]
    fn arguments_go_to_their_slots() {
        let layout = KernelLayout::default();
        let mkdir = [
            ("idmap".to_owned(), ParamType::StructPointer("mnt_idmap".into())),
            ("dir".to_owned(), ParamType::StructPointer("inode".into())),
            ("dentry".to_owned(), ParamType::StructPointer("dentry".into())),
            ("mode".to_owned(), ParamType::Int { size: 2, signed: false }),
        ];
        let (spec, source) =
            function_slots(&config("vfs_mkdir", &[]), "vfs_mkdir", &mkdir, Some(&layout)).unwrap();
        assert_eq!(spec.flags, spec_kernel::TIMED);
        assert_eq!(
            spec.texts,
            [
                KernelField { offset: 1, size: 0, kind: field_kind::INODE },
                KernelField { offset: 2, size: 0, kind: field_kind::DENTRY }
            ]
        );
        assert_eq!(spec.values[0], KernelField { offset: 3, size: 2, kind: field_kind::INT });
        assert_eq!(source.event_type, EventType::FilesystemMkdir);
        assert_eq!(source.texts.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["dir", "dentry"]);
        let (spec, _) =
            function_slots(&config("vfs_mkdir", &["dentry"]), "vfs_mkdir", &mkdir, Some(&layout)).unwrap();
        assert_eq!(
            (spec.texts[0].kind, spec.texts[1].kind, spec.values[0].kind),
            (field_kind::DENTRY, field_kind::NONE, field_kind::NONE)
        );
        assert!(
            function_slots(&config("vfs_mkdir", &["idmap"]), "vfs_mkdir", &mkdir, Some(&layout)).is_err()
        );
        assert!(function_slots(&config("vfs_mkdir", &["nope"]), "vfs_mkdir", &mkdir, Some(&layout)).is_err());
        assert!(
            function_slots(&config("vfs_mkdir", &["dentry"]), "vfs_mkdir", &mkdir, None).is_err(),
            "objects need BTF offsets"
        );
        let rename = [("rd".to_owned(), ParamType::StructPointer("renamedata".into()))];
        let (spec, source) =
            function_slots(&config("vfs_rename", &[]), "vfs_rename", &rename, Some(&layout)).unwrap();
        assert_eq!(
            (spec.texts[0].kind, spec.texts[1].kind),
            (field_kind::RENAME_OLD, field_kind::RENAME_NEW)
        );
        assert_eq!(source.event_type, EventType::FilesystemRename);
    }

    /// The running kernel's BTF types `vfs_mkdir`'s arguments, and its struct offsets read.
    #[test]
    fn types_a_vfs_function_from_the_running_kernels_btf() {
        let btf = match KernelBtf::vmlinux() {
            Ok(btf) => btf,
            Err(error) => {
                eprintln!("skipped: no readable kernel BTF ({error})");
                return;
            }
        };
        let functions = btf.functions();
        let (params, returns) = btf.signature(functions["vfs_mkdir"]).unwrap();
        assert!(params.iter().any(|(_, ty)| *ty == ParamType::StructPointer("dentry".into())), "{params:?}");
        // `struct dentry *` since Linux 6.15, `int` before.
        assert!(
            matches!(returns, ParamType::Int { size: 4, signed: true } | ParamType::StructPointer(_)),
            "{returns:?}"
        );
        let (_, returns) = btf.signature(functions["vfs_unlink"]).unwrap();
        assert_eq!(returns, ParamType::Int { size: 4, signed: true });
        let layout = layout(&btf).unwrap();
        assert_ne!(layout.dentry_parent, layout.dentry_name);
        assert!(layout.inode_ino > 0 && layout.sb_dev > 0);
    }
}
