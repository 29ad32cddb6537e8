//! Tracepoints and kernel functions attached by name (`[[tracepoints]]`, `[[kernel_functions]]`):
//! their configuration, the plan for each (which fields or arguments the generic probes copy,
//! into which slot of the record), and the table of sources translate reads records with. A
//! source that cannot be attached is reported ("not attached: NAME (why)"), never fatal.

mod format;
pub mod functions;

use std::{io::Read as _, path::Path};

use aya::{
    Ebpf,
    maps::{Array, HashMap},
};
use serde::Deserialize;
use vexevent_common::{
    KERNEL_TEXTS, KERNEL_VALUES, KernelField, KernelLayout, KernelSpec, MAX_FENTRY_SLOTS, MAX_KERNEL_SOURCES,
    MAX_TRACEPOINTS, field_kind, map_names, program_names,
};

pub use format::{FieldType, FormatError, FormatField};
pub use functions::{FunctionConfig, FunctionStatus, Symbol, list_functions};

use super::{hooks::Hooks, tracefs::TRACEFS};
use crate::event::EventType;

/// Default rate cap: records per second per CPU of one source.
pub const DEFAULT_RATE_PER_SEC: u32 = 10_000;

fn default_rate() -> u32 {
    DEFAULT_RATE_PER_SEC
}

/// `[[tracepoints]]`: one tracepoint, by its tracefs name.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracepointConfig {
    /// `category:name`, as under `/sys/kernel/tracing/events` (`writeback:writeback_dirty_inode`).
    pub name: String,
    /// Fields to capture, by their names in the `format` file (default: the integer fields, up to
    /// eight, and the first two string fields).
    #[serde(default)]
    pub fields: Vec<String>,
    /// The `VexFS` event type its events get (default: implied by the name, see
    /// [`implied_event_type`], else `ObservabilityAuditEvent`).
    #[serde(default)]
    pub event_type: Option<EventType>,
    /// Most events per second per CPU (0: no cap); the rest are counted (`filtered_kernel_rate`).
    #[serde(default = "default_rate")]
    pub rate_per_sec: u32,
}

/// Where a source comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamedKind {
    Tracepoint,
    /// A function through the kprobe/kretprobe pair.
    Kprobe,
    /// A vmlinux function through an fentry/fexit pair.
    Fentry,
}

impl NamedKind {
    /// The hook, as events say it (`context.kernel.hook`).
    #[must_use]
    pub const fn hook(self) -> &'static str {
        match self {
            Self::Tracepoint => "tracepoint",
            Self::Kprobe => "kprobe",
            Self::Fentry => "fentry",
        }
    }
}

/// A numeric value of a source's records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedValue {
    pub name: String,
    /// Sign-extend from `size` bytes.
    pub signed: bool,
    pub size: u8,
}

/// A text value of a source's records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedText {
    pub name: String,
    /// A dentry walk (names leaf first) with a device and inode, rather than a plain string.
    pub object: bool,
}

/// One attached source: what its records' slots mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedSource {
    pub kind: NamedKind,
    /// `category:name` or the function's name.
    pub name: String,
    pub event_type: EventType,
    /// Value slot `i` of the record is `values[i]`.
    pub values: Vec<NamedValue>,
    /// Text slot `j` of the record is `texts[j]`.
    pub texts: Vec<NamedText>,
    /// Records come at return, with duration and return value.
    pub timed: bool,
    /// The function returns a signed integer of this many bytes (an `int` arrives in a 64-bit
    /// register zero-extended: -39 reads 4294967257 until sign-extended).
    pub signed_return: Option<u8>,
}

/// Why a named source cannot be attached. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum NamedError {
    #[error("{name:?} is not category:name with identifier parts (as under {TRACEFS}/events)")]
    BadTracepointName { name: String },
    #[error("no tracepoint {name} in this kernel ({TRACEFS}/events/{path} is missing)")]
    NoTracepoint { name: String, path: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Format {
        path: String,
        #[source]
        source: FormatError,
    },
    #[error("{name} has no field {field}; its fields: {known}")]
    NoField { name: String, field: String, known: String },
    #[error("{name}: field {field} is neither an integer nor a string")]
    FieldType { name: String, field: String },
    #[error(
        "{name}: more than {KERNEL_VALUES} integer or {KERNEL_TEXTS} string fields; name fewer in fields"
    )]
    TooManyFields { name: String },
    #[error("more than {MAX_TRACEPOINTS} tracepoints; name fewer")]
    TooManyTracepoints,
}

/// The `VexFS` event type a tracepoint or function name implies, if any: the first of these
/// words it contains, in this order: `rmdir` (`FilesystemRmdir`), `mkdir` (`FilesystemMkdir`),
/// `unlink` (`FilesystemDelete`), `rename` (`FilesystemRename`), `symlink`
/// (`FilesystemSymlink`), `link` (`FilesystemHardlink`), `create` (`FilesystemCreate`),
/// `truncate` (`FilesystemTruncate`), `writeback`, `fsync` or `sync` (`SystemSync`), `write`
/// (`FilesystemWrite`), `read` (`FilesystemRead`), `umount` (`SystemUnmount`), `mount`
/// (`SystemMount`), `setattr` or `chmod` (`FilesystemChmod`), `chown` (`FilesystemChown`).
#[must_use]
pub fn implied_event_type(name: &str) -> Option<EventType> {
    const WORDS: [(&str, EventType); 17] = [
        ("rmdir", EventType::FilesystemRmdir),
        ("mkdir", EventType::FilesystemMkdir),
        ("unlink", EventType::FilesystemDelete),
        ("rename", EventType::FilesystemRename),
        ("symlink", EventType::FilesystemSymlink),
        ("link", EventType::FilesystemHardlink),
        ("create", EventType::FilesystemCreate),
        ("truncate", EventType::FilesystemTruncate),
        ("writeback", EventType::SystemSync),
        ("fsync", EventType::SystemSync),
        ("sync", EventType::SystemSync),
        ("write", EventType::FilesystemWrite),
        ("read", EventType::FilesystemRead),
        ("umount", EventType::SystemUnmount),
        ("mount", EventType::SystemMount),
        ("setattr", EventType::FilesystemChmod),
        ("chown", EventType::FilesystemChown),
    ];
    let name = name.to_ascii_lowercase();
    WORDS.iter().find(|(word, _)| name.contains(word)).map(|(_, ty)| *ty)
}

/// The type of a source's events: configured, implied by its name, else the generic
/// `ObservabilityAuditEvent`.
#[must_use]
pub fn event_type_for(name: &str, configured: Option<EventType>) -> EventType {
    configured.or_else(|| implied_event_type(name)).unwrap_or(EventType::ObservabilityAuditEvent)
}

fn is_identifier(part: &str) -> bool {
    !part.is_empty() && part.len() <= 64 && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Splits `category:name`, refusing anything that is not two identifiers (no path tricks).
///
/// # Errors
/// [`NamedError::BadTracepointName`].
pub fn split_tracepoint_name(name: &str) -> Result<(&str, &str), NamedError> {
    match name.split_once(':') {
        Some((category, event)) if is_identifier(category) && is_identifier(event) => Ok((category, event)),
        _ => Err(NamedError::BadTracepointName { name: name.to_owned() }),
    }
}

/// Reads at most `limit` bytes of a file; more is an error the parser reports as too large.
fn read_bounded(path: &Path, limit: usize) -> Result<String, NamedError> {
    let read_error = |source| NamedError::Read { path: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut text = String::new();
    file.take(u64::try_from(limit + 1).unwrap_or(u64::MAX)).read_to_string(&mut text).map_err(read_error)?;
    Ok(text)
}

/// A planned tracepoint: where it is, what the probe copies, and what the record's slots mean.
#[derive(Clone, Debug)]
pub struct TracepointPlan {
    pub category: String,
    pub event: String,
    pub spec: KernelSpec,
    pub source: NamedSource,
}

/// Plans one tracepoint as source `index`, from its tracefs `format` file.
///
/// # Errors
/// When the name is malformed, the tracepoint does not exist, its format does not parse, or a
/// configured field is missing or cannot be captured.
pub fn plan_tracepoint(config: &TracepointConfig, index: u32) -> Result<TracepointPlan, NamedError> {
    let (category, event) = split_tracepoint_name(&config.name)?;
    let dir = Path::new(TRACEFS).join("events").join(category).join(event);
    if !dir.is_dir() {
        return Err(NamedError::NoTracepoint {
            name: config.name.clone(),
            path: format!("{category}/{event}"),
        });
    }
    let format_path = dir.join("format");
    let text = read_bounded(&format_path, format::MAX_FORMAT_BYTES)?;
    let fields = format::parse(&text)
        .map_err(|source| NamedError::Format { path: format_path.display().to_string(), source })?;
    let (spec, source) = tracepoint_slots(config, index, &fields)?;
    Ok(TracepointPlan { category: category.to_owned(), event: event.to_owned(), spec, source })
}

/// Assigns the configured (or default) fields to the record's slots.
fn tracepoint_slots(
    config: &TracepointConfig,
    index: u32,
    fields: &[FormatField],
) -> Result<(KernelSpec, NamedSource), NamedError> {
    let chosen: Vec<&FormatField> = if config.fields.is_empty() {
        let ints = fields.iter().filter(|f| matches!(f.ty, FieldType::Int { .. })).take(KERNEL_VALUES);
        let texts = fields
            .iter()
            .filter(|f| matches!(f.ty, FieldType::DataLocString | FieldType::CharArray))
            .take(KERNEL_TEXTS);
        ints.chain(texts).collect()
    } else {
        config
            .fields
            .iter()
            .map(|wanted| {
                fields.iter().find(|f| &f.name == wanted).ok_or_else(|| NamedError::NoField {
                    name: config.name.clone(),
                    field: wanted.clone(),
                    known: fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", "),
                })
            })
            .collect::<Result<_, _>>()?
    };
    let mut spec = KernelSpec { source: index, rate_per_sec: config.rate_per_sec, ..KernelSpec::default() };
    let mut source = NamedSource {
        kind: NamedKind::Tracepoint,
        name: config.name.clone(),
        event_type: event_type_for(&config.name, config.event_type),
        values: Vec::new(),
        texts: Vec::new(),
        timed: false,
        signed_return: None,
    };
    let too_many = || NamedError::TooManyFields { name: config.name.clone() };
    for field in chosen {
        match field.ty {
            FieldType::Int { signed } => {
                let slot = spec.values.get_mut(source.values.len()).ok_or_else(too_many)?;
                let size = u8::try_from(field.size).unwrap_or(8);
                *slot = KernelField { offset: field.offset, size, kind: field_kind::INT };
                source.values.push(NamedValue { name: field.name.clone(), signed, size });
            }
            FieldType::DataLocString | FieldType::CharArray => {
                let slot = spec.texts.get_mut(source.texts.len()).ok_or_else(too_many)?;
                let kind = if field.ty == FieldType::DataLocString {
                    field_kind::DATA_LOC_STR
                } else {
                    field_kind::CHAR_ARRAY
                };
                // A char array longer than 255 bytes is read up to 255 (the spec's size is a u8).
                let size = u8::try_from(field.size).unwrap_or(u8::MAX);
                *slot = KernelField { offset: field.offset, size, kind };
                source.texts.push(NamedText { name: field.name.clone(), object: false });
            }
            FieldType::Other => {
                return Err(NamedError::FieldType { name: config.name.clone(), field: field.name.clone() });
            }
        }
    }
    Ok((spec, source))
}

/// Plans, configures and attaches every configured tracepoint and function; what cannot be
/// attached is reported in `hooks` ("not attached: NAME (why)"). Returns the attached sources,
/// indexed by their records' source number.
///
/// # Errors
/// Only when a map of the object is missing (a build problem), never for a source.
pub fn attach(
    ebpf: &mut Ebpf,
    hooks: &mut Hooks,
    tracepoints: &[TracepointConfig],
    functions: &[FunctionConfig],
) -> Result<Vec<Option<NamedSource>>, String> {
    let mut sources: Vec<Option<NamedSource>> = Vec::new();
    for config in tracepoints {
        let Ok(index) = u32::try_from(sources.len()) else { break };
        if index >= MAX_TRACEPOINTS {
            hooks.report(config.name.clone(), Some(NamedError::TooManyTracepoints.to_string()));
            continue;
        }
        let plan = match plan_tracepoint(config, index) {
            Ok(plan) => plan,
            Err(error) => {
                hooks.report(config.name.clone(), Some(error.to_string()));
                continue;
            }
        };
        let mut specs: Array<_, KernelSpec> = map(ebpf, map_names::TRACEPOINT_SPECS)?;
        specs.set(index, plan.spec, 0).map_err(|e| format!("{}: {e}", map_names::TRACEPOINT_SPECS))?;
        let program = program_names::TRACEPOINTS[index as usize];
        if hooks.attach_tracepoint(ebpf, program, &plan.category, &plan.event).is_ok() {
            sources.push(Some(plan.source));
        }
    }
    let first = u32::try_from(sources.len()).unwrap_or(MAX_KERNEL_SOURCES);
    let planned = functions::plan_functions(functions, first, MAX_KERNEL_SOURCES);
    for (name, why) in planned.refused {
        hooks.report(name, Some(why));
    }
    if planned.plans.is_empty() {
        return Ok(sources);
    }
    if let Some(layout) = planned.layout {
        let mut array: Array<_, KernelLayout> = map(ebpf, map_names::KERNEL_LAYOUT)?;
        array.set(0, layout, 0).map_err(|e| format!("{}: {e}", map_names::KERNEL_LAYOUT))?;
    }
    let btf = aya::Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"));
    let kprobes = functions::kprobes_available();
    let mut fentry_slot = 0usize;
    for mut plan in planned.plans {
        let mut specs: HashMap<_, u64, KernelSpec> = map(ebpf, map_names::FUNCTION_SPECS)?;
        specs
            .insert(plan.address, plan.spec, 0)
            .map_err(|e| format!("{}: {e}", map_names::FUNCTION_SPECS))?;
        let index = plan.spec.source as usize;
        // fentry/fexit where the kernel loads them (a vmlinux function, a free slot), else the
        // kprobe pair, saying why.
        let fentry = plan.fentry.then(|| {
            if fentry_slot >= MAX_FENTRY_SLOTS as usize {
                return Err(format!("more than {MAX_FENTRY_SLOTS} functions"));
            }
            btf.as_ref().map_err(Clone::clone).and_then(|btf| {
                hooks.attach_fentry(ebpf, fentry_slot, &plan.function, plan.source.timed, btf)
            })
        });
        let attached = if let Some(Ok(())) = fentry {
            fentry_slot += 1;
            plan.source.kind = NamedKind::Fentry;
            Ok(())
        } else {
            if let Some(Err(why)) = fentry {
                let fallback = if kprobes.is_ok() { "using a kprobe" } else { "no kprobe either" };
                hooks.report(format!("fentry/{}", plan.function), Some(format!("{why}; {fallback}")));
            }
            match &kprobes {
                Ok(()) => hooks.attach_function(ebpf, &plan.function, plan.source.timed),
                Err(why) => {
                    hooks.report(plan.function.clone(), Some(why.clone()));
                    Err(why.clone())
                }
            }
        };
        if attached.is_ok() {
            sources.resize(index + 1, None);
            sources[index] = Some(plan.source);
        } else {
            let mut specs: HashMap<_, u64, KernelSpec> = map(ebpf, map_names::FUNCTION_SPECS)?;
            let _ = specs.remove(&plan.address);
        }
    }
    Ok(sources)
}

/// A map of the object, typed.
fn map<'a, M>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<M, String>
where
    M: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or_else(|| format!("map {name} missing from the object"))?;
    M::try_from(map).map_err(|e| format!("map {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, offset: u16, size: u16, ty: FieldType) -> FormatField {
        FormatField { name: name.to_owned(), offset, size, ty }
    }

    fn config(name: &str, fields: &[&str]) -> TracepointConfig {
        TracepointConfig {
            name: name.to_owned(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            event_type: None,
            rate_per_sec: 5,
        }
    }

    #[test]
    fn names_imply_event_types() {
        assert_eq!(event_type_for("vfs_mkdir", None), EventType::FilesystemMkdir);
        assert_eq!(event_type_for("vfs_rmdir", None), EventType::FilesystemRmdir);
        assert_eq!(event_type_for("vfs_unlink", None), EventType::FilesystemDelete);
        assert_eq!(event_type_for("vfs_symlink", None), EventType::FilesystemSymlink);
        assert_eq!(event_type_for("vfs_link", None), EventType::FilesystemHardlink);
        assert_eq!(event_type_for("writeback:writeback_dirty_inode", None), EventType::SystemSync);
        assert_eq!(event_type_for("vfs_write", None), EventType::FilesystemWrite);
        assert_eq!(
            event_type_for("filemap:mm_filemap_add_to_page_cache", None),
            EventType::ObservabilityAuditEvent
        );
        assert_eq!(
            event_type_for("vfs_mkdir", Some(EventType::VectorCreate)),
            EventType::VectorCreate,
            "a configured type wins"
        );
    }

    #[test]
    fn tracepoint_names_are_two_identifiers() {
        assert_eq!(
            split_tracepoint_name("writeback:writeback_dirty_inode").unwrap(),
            ("writeback", "writeback_dirty_inode")
        );
        for bad in ["writeback", "../x:y", "a:b/c", "a:", ":b", "a:b:c"] {
            assert!(split_tracepoint_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fields_go_to_their_slots() {
        let fields = [
            field("name", 8, 32, FieldType::CharArray),
            field("ino", 40, 8, FieldType::Int { signed: false }),
            field("ret", 48, 4, FieldType::Int { signed: true }),
            field("data", 52, 16, FieldType::Other),
        ];
        let (spec, source) = tracepoint_slots(&config("writeback:x", &[]), 3, &fields).unwrap();
        assert_eq!((spec.source, spec.rate_per_sec), (3, 5));
        assert_eq!(spec.values[0], KernelField { offset: 40, size: 8, kind: field_kind::INT });
        assert_eq!(spec.values[1], KernelField { offset: 48, size: 4, kind: field_kind::INT });
        assert_eq!(spec.values[2].kind, field_kind::NONE);
        assert_eq!(spec.texts[0], KernelField { offset: 8, size: 32, kind: field_kind::CHAR_ARRAY });
        assert_eq!(
            source.values.iter().map(|v| (v.name.as_str(), v.signed)).collect::<Vec<_>>(),
            [("ino", false), ("ret", true)]
        );
        assert_eq!(source.texts[0].name, "name");
        let (spec, source) = tracepoint_slots(&config("writeback:x", &["ret"]), 0, &fields).unwrap();
        assert_eq!((spec.values[0].offset, source.values.len(), source.texts.len()), (48, 1, 0));
        assert!(matches!(
            tracepoint_slots(&config("x:y", &["nope"]), 0, &fields),
            Err(NamedError::NoField { .. })
        ));
        assert!(matches!(
            tracepoint_slots(&config("x:y", &["data"]), 0, &fields),
            Err(NamedError::FieldType { .. })
        ));
        let strings = [
            field("a", 8, 4, FieldType::DataLocString),
            field("b", 12, 4, FieldType::DataLocString),
            field("c", 16, 4, FieldType::DataLocString),
        ];
        assert!(matches!(
            tracepoint_slots(&config("x:y", &["a", "b", "c"]), 0, &strings),
            Err(NamedError::TooManyFields { .. })
        ));
    }
}
