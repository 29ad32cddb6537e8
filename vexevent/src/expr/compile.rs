//! Compiles a parsed filter once into a tree of closures over [`SemanticEvent`] fields: field
//! names, value types, event type names, globs and regexes are checked and built here, so nothing
//! is re-interpreted per event.

use std::{collections::BTreeMap, ffi::OsStr, os::unix::ffi::OsStrExt, path::Path};

use globset::GlobBuilder;

use super::parse::{CompareOp, Expr, TextOp, Value};
use crate::event::{EventType, SemanticEvent};

/// A compiled filter.
pub type Matcher = Box<dyn Fn(&SemanticEvent) -> bool + Send + Sync>;

/// Why a filter cannot be compiled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("unknown field `{field}`; fields: {choices}")]
    UnknownField { field: String, choices: String },
    #[error("field `{field}` is {kind}; `{value}` is not")]
    WrongType { field: String, kind: &'static str, value: String },
    #[error("`{name}` is not an event type (e.g. FilesystemCreate, VectorSearch)")]
    UnknownEventType { name: String },
    #[error("`{op}` applies to text fields, not to `{field}`")]
    NotText { field: String, op: &'static str },
    #[error("invalid pattern {pattern:?}: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("unknown macro `@{name}`")]
    UnknownMacro { name: String },
    #[error("macro `@{name}` refers to itself")]
    RecursiveMacro { name: String },
    #[error("macro `@{name}` is expanded inside {limit} other macros; at most {limit} may nest")]
    MacroNesting { name: String, limit: usize },
}

/// How deep macros may expand inside each other: each level may nest `MAX_NESTING` deep itself,
/// and compiling recurses once per level of both.
const MAX_MACRO_NESTING: usize = 16;

/// Memory one `matches` pattern may take, compiled and in its matching cache (the regex crate
/// allows 10 MiB and 2 MiB): every stream subscription may carry its own filter.
const REGEX_BYTES: usize = 1 << 20;

/// What a field yields for one event.
#[derive(Clone, Copy)]
pub(super) enum Field {
    Number(fn(&SemanticEvent) -> Option<i64>),
    Bytes(fn(&SemanticEvent) -> Option<&[u8]>),
}

const FIELDS: &str = "type, category, code, subtype, source, path, target, comm, error, ok, pid, tid, uid, \
                      gid, cgroup_id, ret, duration_ns, bytes, inode, flags, priority";

fn fs(event: &SemanticEvent) -> Option<&crate::event::FilesystemContext> {
    event.context.filesystem.as_ref()
}

pub(super) fn field(name: &str) -> Result<Field, CompileError> {
    Ok(match name {
        "type" => Field::Bytes(|e| Some(e.event_type.name().as_bytes())),
        "category" => Field::Bytes(|e| Some(e.event_type.category().as_bytes())),
        "subtype" => Field::Bytes(|e| Some(e.event_subtype.as_bytes())),
        "source" => Field::Bytes(|e| Some(source(e).as_bytes())),
        "path" => Field::Bytes(|e| fs(e)?.path.as_ref().map(crate::event::PathBytes::as_bytes)),
        "target" => Field::Bytes(|e| fs(e)?.target_path.as_ref().map(crate::event::PathBytes::as_bytes)),
        "comm" => Field::Bytes(|e| e.process.as_ref().map(|p| p.comm.as_bytes())),
        "error" => Field::Bytes(|e| e.result.as_ref()?.error.as_deref().map(str::as_bytes)),
        "ok" => Field::Bytes(|e| e.result.as_ref().map(|r| if r.ok { &b"true"[..] } else { &b"false"[..] })),
        "code" => Field::Number(|e| Some(i64::from(e.event_type_code))),
        "pid" => Field::Number(|e| e.process.as_ref().map(|p| i64::from(p.pid))),
        "tid" => Field::Number(|e| e.process.as_ref().map(|p| i64::from(p.tid))),
        "uid" => Field::Number(|e| e.process.as_ref().map(|p| i64::from(p.uid))),
        "gid" => Field::Number(|e| e.process.as_ref().map(|p| i64::from(p.gid))),
        // 0: the record did not say (a FUSE request's own record).
        "cgroup_id" => Field::Number(|e| {
            e.process.as_ref().filter(|p| p.cgroup_id != 0).and_then(|p| i64::try_from(p.cgroup_id).ok())
        }),
        "ret" => Field::Number(|e| e.result.as_ref().map(|r| r.ret)),
        "duration_ns" => Field::Number(|e| i64::try_from(e.duration_ns).ok()),
        "bytes" => Field::Number(|e| fs(e)?.bytes.and_then(|b| i64::try_from(b).ok())),
        "inode" => Field::Number(|e| fs(e)?.inode_number.and_then(|i| i64::try_from(i).ok())),
        "flags" => Field::Number(|e| Some(i64::from(e.flags))),
        "priority" => Field::Number(|e| Some(e.priority as i64)),
        other => {
            return Err(CompileError::UnknownField { field: other.to_owned(), choices: FIELDS.to_owned() });
        }
    })
}

/// Which boundary an event comes from.
fn source(event: &SemanticEvent) -> &'static str {
    if event.context.gap.is_some() {
        "gap"
    } else if event.is_fuse_request() {
        "fuse"
    } else {
        "syscall"
    }
}

fn text_of(field_name: &str, value: &Value) -> Result<Vec<u8>, CompileError> {
    let text = match value {
        Value::Text(text) => text.clone(),
        Value::Number(n) => n.to_string(),
    };
    if field_name == "type" && EventType::from_name(&text).is_none() {
        return Err(CompileError::UnknownEventType { name: text });
    }
    Ok(text.into_bytes())
}

fn number_of(field_name: &str, value: &Value) -> Result<i64, CompileError> {
    match value {
        Value::Number(n) => Ok(*n),
        Value::Text(text) => Err(CompileError::WrongType {
            field: field_name.to_owned(),
            kind: "a number",
            value: text.clone(),
        }),
    }
}

/// The event type a `type` comparison names (compared as the enum, not its name).
fn event_type_of(value: &Value) -> Result<EventType, CompileError> {
    let text = String::from_utf8_lossy(&text_of("type", value)?).into_owned();
    EventType::from_name(&text).ok_or(CompileError::UnknownEventType { name: text })
}

fn compare(field_name: &str, op: CompareOp, value: &Value) -> Result<Matcher, CompileError> {
    if field_name == "type" && matches!(op, CompareOp::Eq | CompareOp::Ne) {
        let wanted = event_type_of(value)?;
        let equal = op == CompareOp::Eq;
        return Ok(Box::new(move |e| (e.event_type == wanted) == equal));
    }
    Ok(match field(field_name)? {
        Field::Number(get) => {
            let n = number_of(field_name, value)?;
            match op {
                CompareOp::Eq => Box::new(move |e| get(e) == Some(n)),
                CompareOp::Ne => Box::new(move |e| get(e) != Some(n)),
                CompareOp::Lt => Box::new(move |e| get(e).is_some_and(|v| v < n)),
                CompareOp::Le => Box::new(move |e| get(e).is_some_and(|v| v <= n)),
                CompareOp::Gt => Box::new(move |e| get(e).is_some_and(|v| v > n)),
                CompareOp::Ge => Box::new(move |e| get(e).is_some_and(|v| v >= n)),
                CompareOp::Has => Box::new(move |e| get(e).is_some_and(|v| v & n == n)),
            }
        }
        Field::Bytes(get) => {
            let text = text_of(field_name, value)?;
            match op {
                CompareOp::Eq => Box::new(move |e| get(e) == Some(&text[..])),
                CompareOp::Ne => Box::new(move |e| get(e) != Some(&text[..])),
                _ => {
                    return Err(CompileError::WrongType {
                        field: field_name.to_owned(),
                        kind: "text (use ==, !=, in, glob, prefix, matches, contains)",
                        value: value.to_string(),
                    });
                }
            }
        }
    })
}

fn one_of(field_name: &str, values: &[Value]) -> Result<Matcher, CompileError> {
    if field_name == "type" {
        let set: Vec<EventType> = values.iter().map(event_type_of).collect::<Result<_, _>>()?;
        return Ok(Box::new(move |e| set.contains(&e.event_type)));
    }
    Ok(match field(field_name)? {
        Field::Number(get) => {
            let set: Vec<i64> = values.iter().map(|v| number_of(field_name, v)).collect::<Result<_, _>>()?;
            Box::new(move |e| get(e).is_some_and(|v| set.contains(&v)))
        }
        Field::Bytes(get) => {
            let set: Vec<Vec<u8>> =
                values.iter().map(|v| text_of(field_name, v)).collect::<Result<_, _>>()?;
            Box::new(move |e| get(e).is_some_and(|v| set.iter().any(|s| s == v)))
        }
    })
}

fn text_match(field_name: &str, op: TextOp, pattern: &str) -> Result<Matcher, CompileError> {
    let Field::Bytes(get) = field(field_name)? else {
        let op = match op {
            TextOp::Glob => "glob",
            TextOp::Prefix => "prefix",
            TextOp::Matches => "matches",
            TextOp::Contains => "contains",
        };
        return Err(CompileError::NotText { field: field_name.to_owned(), op });
    };
    let invalid = |reason: String| CompileError::Pattern { pattern: pattern.to_owned(), reason };
    Ok(match op {
        TextOp::Glob => {
            // Common shapes without a regex: a literal, and `**/*SUFFIX` (a last component
            // ending in SUFFIX: as SUFFIX holds no `/`, the path ends with it).
            const SPECIAL: [char; 7] = ['*', '?', '[', ']', '{', '}', '\\'];
            if !pattern.contains(SPECIAL) {
                let literal = pattern.as_bytes().to_vec();
                return Ok(Box::new(move |e| get(e).is_some_and(|v| v == literal.as_slice())));
            }
            if let Some(suffix) = pattern
                .strip_prefix("**/*")
                .filter(|s| !s.is_empty() && !s.contains(SPECIAL) && !s.contains('/'))
            {
                let suffix = suffix.as_bytes().to_vec();
                return Ok(Box::new(move |e| get(e).is_some_and(|v| v.ends_with(&suffix))));
            }
            // `*` stays within one path component; `**` crosses them.
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| invalid(e.to_string()))?
                .compile_matcher();
            Box::new(move |e| get(e).is_some_and(|v| glob.is_match(Path::new(OsStr::from_bytes(v)))))
        }
        TextOp::Prefix => {
            let prefix = pattern.as_bytes().to_vec();
            Box::new(move |e| get(e).is_some_and(|v| v.starts_with(&prefix)))
        }
        TextOp::Matches => {
            let regex = regex::bytes::RegexBuilder::new(pattern)
                .size_limit(REGEX_BYTES)
                .dfa_size_limit(REGEX_BYTES)
                .build()
                .map_err(|e| invalid(e.to_string()))?;
            Box::new(move |e| get(e).is_some_and(|v| regex.is_match(v)))
        }
        TextOp::Contains => {
            let needle = pattern.as_bytes().to_vec();
            Box::new(move |e| {
                get(e).is_some_and(|v| v.windows(needle.len().max(1)).any(|w| w == needle.as_slice()))
            })
        }
    })
}

/// Compiles `expr`, expanding `@macros` from `macros` (themselves filter expressions).
///
/// # Errors
/// An unknown field or macro, a value of the wrong type, an invalid pattern.
pub fn compile(expr: &Expr, macros: &BTreeMap<String, Expr>) -> Result<Matcher, CompileError> {
    compile_in(expr, macros, &mut Vec::new())
}

pub(super) fn compile_in(
    expr: &Expr,
    macros: &BTreeMap<String, Expr>,
    expanding: &mut Vec<String>,
) -> Result<Matcher, CompileError> {
    Ok(match expr {
        Expr::Const(value) => {
            let value = *value;
            Box::new(move |_| value)
        }
        Expr::Not(inner) => {
            let inner = compile_in(inner, macros, expanding)?;
            Box::new(move |e| !inner(e))
        }
        Expr::And(terms) => {
            let terms: Vec<Matcher> =
                terms.iter().map(|t| compile_in(t, macros, expanding)).collect::<Result<_, _>>()?;
            Box::new(move |e| terms.iter().all(|t| t(e)))
        }
        Expr::Or(terms) => {
            let terms: Vec<Matcher> =
                terms.iter().map(|t| compile_in(t, macros, expanding)).collect::<Result<_, _>>()?;
            Box::new(move |e| terms.iter().any(|t| t(e)))
        }
        Expr::Macro(name) => {
            if expanding.contains(name) {
                return Err(CompileError::RecursiveMacro { name: name.clone() });
            }
            let body = macros.get(name).ok_or_else(|| CompileError::UnknownMacro { name: name.clone() })?;
            if expanding.len() == MAX_MACRO_NESTING {
                return Err(CompileError::MacroNesting { name: name.clone(), limit: MAX_MACRO_NESTING });
            }
            expanding.push(name.clone());
            let compiled = compile_in(body, macros, expanding)?;
            expanding.pop();
            compiled
        }
        Expr::Compare { field, op, value } => compare(field, *op, value)?,
        Expr::In { field, values } => one_of(field, values)?,
        Expr::Text { field, op, pattern } => text_match(field, *op, pattern)?,
    })
}
