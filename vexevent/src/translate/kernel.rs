//! Events of tracepoints and kernel functions attached by name: each record's values and texts
//! named by its source (the loader's plan), dentry walks turned into paths and joined with the
//! mount of their device (mountinfo), the enclosing syscall named, the type the source means.

use std::time::{Duration, Instant};

use serde_json::Value;
use vexevent_common::{KERNEL_VALUES, KernelBody, kernel_flags, syscall_by_nr};

use super::{Disposition, Translator, errno_name};
use crate::{
    capture::RawRecord,
    event::{
        Context, FilesystemContext, KernelContext, OpResult, PathBytes, Priority, SemanticEvent,
        VectorContext,
    },
    loader::{DeviceMount, NamedSource, parse_device_mounts},
};

/// Least time between two reads of mountinfo when a device is not known.
const MOUNTS_REFRESH: Duration = Duration::from_secs(1);

/// The sources and the mounts their devices are joined with.
#[derive(Default)]
pub struct KernelSources {
    /// By record source number.
    sources: Vec<Option<NamedSource>>,
    mounts: Vec<DeviceMount>,
    mounts_read: Option<Instant>,
}

impl KernelSources {
    #[must_use]
    pub fn new(sources: Vec<Option<NamedSource>>) -> Self {
        Self { sources, mounts: Vec::new(), mounts_read: None }
    }

    /// The mount showing `dev`, reading mountinfo again (at most once a second) when unknown.
    fn mount(&mut self, dev: u32) -> Option<&DeviceMount> {
        let known = self.mounts.iter().any(|m| m.dev == dev);
        if !known && self.mounts_read.is_none_or(|at| at.elapsed() >= MOUNTS_REFRESH) {
            self.mounts =
                parse_device_mounts(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
            self.mounts_read = Some(Instant::now());
        }
        // A device mounted several times (bind mounts): the mount of its whole file system first.
        let mut candidates: Vec<&DeviceMount> = self.mounts.iter().filter(|m| m.dev == dev).collect();
        candidates.sort_by_key(|m| m.root.len());
        candidates.into_iter().next()
    }
}

/// A dentry walk (names leaf first, each NUL-terminated) as a path within its file system.
#[must_use]
pub fn walk_to_path(walk: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(walk.len() + 1);
    for name in walk.split(|&b| b == 0).filter(|name| !name.is_empty()).rev() {
        path.push(b'/');
        path.extend_from_slice(name);
    }
    if path.is_empty() {
        path.push(b'/');
    }
    path
}

/// `fs_path` (within a file system) as seen through `mount`, when the mount shows it.
fn through_mount(mount: &DeviceMount, fs_path: &[u8]) -> Option<Vec<u8>> {
    let root = mount.root.strip_suffix(b"/").unwrap_or(&mount.root);
    let rest = fs_path.strip_prefix(root)?;
    if !rest.is_empty() && rest[0] != b'/' {
        return None;
    }
    let mut path = mount.mount_point.clone();
    if path.ends_with(b"/") {
        path.pop();
    }
    path.extend_from_slice(rest);
    if path.is_empty() {
        path.push(b'/');
    }
    Some(path)
}

/// `value` (zero-extended from `size` bytes) as the signed number it holds.
#[expect(clippy::cast_possible_wrap, reason = "two's complement reinterpretation after sign extension")]
fn sign_extend(value: u64, size: u8) -> i64 {
    let bits = u32::from(size.clamp(1, 8)) * 8;
    let shift = 64 - bits;
    ((value << shift) as i64) >> shift
}

/// `MAJ:MIN` of a kernel-encoded device number.
fn device_text(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xf_ffff)
}

/// A vector event's context from the numeric arguments named as its fields (`dimensions`,
/// `element_type`, `vector_count`, `k`, `metric`, `search_type`, `max_results`); `None` when
/// none is.
fn vector_context(fields: &std::collections::BTreeMap<String, Value>) -> Option<VectorContext> {
    let number = |name: &str| fields.get(name).and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok());
    let vector = VectorContext {
        dimensions: number("dimensions"),
        element_type: number("element_type"),
        vector_count: number("vector_count"),
        k: number("k"),
        metric: number("metric"),
        search_type: number("search_type"),
        max_results: number("max_results"),
        ..VectorContext::default()
    };
    (vector != VectorContext::default()).then_some(vector)
}

impl Translator {
    /// The tracepoints and functions attached by name, by record source number.
    pub fn set_named_sources(&mut self, sources: Vec<Option<NamedSource>>) {
        self.kernel_sources = KernelSources::new(sources);
    }

    /// Translates a tracepoint or kernel function record.
    pub(super) fn kernel_event(
        &mut self,
        record: &RawRecord,
        body: &KernelBody,
        out: &mut Vec<SemanticEvent>,
    ) -> Disposition {
        let Some(source) = self.kernel_sources.sources.get(body.source as usize).cloned().flatten() else {
            // A record of a source this run did not attach: nothing says what its slots mean.
            return Disposition::Suppressed;
        };
        let mut fields = std::collections::BTreeMap::new();
        for (value, named) in body.values.iter().take(KERNEL_VALUES).zip(&source.values) {
            let number =
                if named.signed { Value::from(sign_extend(*value, named.size)) } else { Value::from(*value) };
            fields.insert(named.name.clone(), number);
        }
        let mut filesystem = FilesystemContext::default();
        let texts = [record.path1.as_deref(), record.path2.as_deref()];
        let truncated = [kernel_flags::TEXT1_TRUNCATED, kernel_flags::TEXT2_TRUNCATED];
        for (slot, named) in source.texts.iter().enumerate() {
            let text = texts[slot].unwrap_or_default();
            if !named.object {
                fields.insert(named.name.clone(), Value::from(String::from_utf8_lossy(text).into_owned()));
                continue;
            }
            let (dev, ino) = (body.devs[slot], body.inos[slot]);
            let mut object = serde_json::Map::new();
            object.insert("dev".into(), Value::from(device_text(dev)));
            if ino != 0 {
                object.insert("ino".into(), Value::from(ino));
            }
            let path = (!text.is_empty() && body.flags & truncated[slot] == 0).then(|| {
                let fs_path = walk_to_path(text);
                self.kernel_sources
                    .mount(dev)
                    .and_then(|mount| through_mount(mount, &fs_path))
                    .unwrap_or(fs_path)
            });
            if let Some(path) = &path {
                object.insert("path".into(), Value::from(String::from_utf8_lossy(path).into_owned()));
                if filesystem.path.is_none() {
                    filesystem.path = Some(PathBytes(path.clone()));
                    filesystem.inode_number = (ino != 0).then_some(ino);
                } else if filesystem.target_path.is_none() {
                    filesystem.target_path = Some(PathBytes(path.clone()));
                }
            } else if filesystem.path.is_none() && filesystem.inode_number.is_none() && ino != 0 {
                filesystem.inode_number = Some(ino);
            }
            fields.insert(named.name.clone(), Value::Object(object));
        }
        if let Some(path) = &filesystem.path {
            if !self.options.scope.contains(path.as_bytes()) {
                return Disposition::OutOfScope;
            }
        }
        let in_syscall = body.flags & kernel_flags::IN_SYSCALL != 0;
        let kernel = KernelContext {
            hook: source.kind.hook().to_owned(),
            name: source.name.clone(),
            fields,
            syscall: in_syscall
                .then(|| syscall_by_nr(body.syscall_nr).map(|entry| entry.name.to_owned()))
                .flatten(),
            syscall_enter_ns: in_syscall.then_some(body.syscall_enter_ns),
            incomplete: body.flags
                & (kernel_flags::READ_FAULT | kernel_flags::TEXT1_TRUNCATED | kernel_flags::TEXT2_TRUNCATED)
                != 0,
        };
        let has_fs = filesystem.path.is_some() || filesystem.inode_number.is_some();
        let vector =
            (source.event_type.category() == "vector").then(|| vector_context(&kernel.fields)).flatten();
        let context = Context {
            filesystem: has_fs.then_some(filesystem),
            vector,
            kernel: Some(kernel),
            ..Context::default()
        };
        let ret = match source.signed_return {
            Some(size) => sign_extend(record.header.ret.cast_unsigned(), size),
            None => record.header.ret,
        };
        let error = (-4095..0).contains(&ret).then(|| errno_name(i32::try_from(-ret).unwrap_or(0)));
        let result = OpResult { ok: error.is_none(), ret, error };
        let returned = body.flags & kernel_flags::RETURNED != 0;
        let mut event =
            self.event(record, source.event_type, source.name.clone(), context, result, Priority::Normal);
        if !returned {
            event.result = None;
            event.duration_ns = 0;
        }
        out.push(event);
        Disposition::Events(1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use vexevent_common::{NOT_A_SYSCALL, OpKind, RecordHeader};

    use super::*;
    use crate::{
        capture::{Captured, decode, encode_kernel},
        event::{EventType, WatchScope},
        loader::{NamedKind, NamedText, NamedValue},
        telemetry::Counters,
        translate::{TranslateOptions, VexfsRoots},
    };

    /// A timed `vfs_rename` record (two dentries, one int) inside a `renameat2`, translated.
    #[test]
    fn a_function_record_becomes_its_event() {
        let mut translator = Translator::new(TranslateOptions {
            scope: WatchScope::new(vec![b"/w".to_vec()]),
            ops: HashSet::new(),
            fuse_mounts: Vec::new(),
            vexfs: VexfsRoots(Vec::new()),
        });
        let source = NamedSource {
            kind: NamedKind::Kprobe,
            name: "vfs_rename".into(),
            event_type: EventType::FilesystemRename,
            values: vec![NamedValue { name: "flags".into(), signed: true, size: 4 }],
            texts: vec![
                NamedText { name: "old".into(), object: true },
                NamedText { name: "new".into(), object: true },
            ],
            timed: true,
            signed_return: Some(4),
        };
        translator.set_named_sources(vec![None, Some(source)]);
        // A device no mount shows: the path stays the one within its file system.
        translator.kernel_sources.mounts_read = Some(Instant::now());
        let header = RecordHeader {
            op: OpKind::KernelFunction as u32,
            syscall_nr: NOT_A_SYSCALL,
            enter_ns: 100,
            exit_ns: 350,
            // An int's -2, zero-extended in the return register.
            ret: 0xffff_fffe,
            pid: 7,
            ..RecordHeader::ZEROED
        };
        let body = KernelBody {
            source: 1,
            flags: kernel_flags::RETURNED | kernel_flags::IN_SYSCALL,
            values: [0xffff_ffff, 0, 0, 0, 0, 0, 0, 0],
            devs: [5, 5],
            inos: [42, 0],
            syscall_nr: 316,
            syscall_enter_ns: 90,
            ..KernelBody::default()
        };
        let bytes = encode_kernel(&header, body, b"a\0w\0", Some(b"b\0w\0"));
        let Ok(Captured::Record(record)) = decode(&bytes) else { panic!("not a record") };
        let mut out = Vec::new();
        assert_eq!(translator.translate(&record, &mut out, &Counters::default()), Disposition::Events(1));
        let event = &out[0];
        assert_eq!(
            (event.event_type, event.event_subtype.as_str(), event.duration_ns),
            (EventType::FilesystemRename, "vfs_rename", 250)
        );
        let fs = event.context.filesystem.as_ref().unwrap();
        assert_eq!((fs.path.as_ref().unwrap().as_bytes(), fs.inode_number), (&b"/w/a"[..], Some(42)));
        assert_eq!(fs.target_path.as_ref().unwrap().as_bytes(), b"/w/b");
        let kernel = event.context.kernel.as_ref().unwrap();
        assert_eq!((kernel.syscall.as_deref(), kernel.syscall_enter_ns), (Some("renameat2"), Some(90)));
        assert_eq!(kernel.fields["flags"], Value::from(-1));
        assert_eq!(kernel.fields["old"]["ino"], Value::from(42));
        let result = event.result.as_ref().unwrap();
        assert_eq!((result.ok, result.error.as_deref()), (false, Some("ENOENT")));
        // A source this run did not attach, and a path outside the watch.
        let unknown = encode_kernel(&header, KernelBody { source: 9, ..body }, b"", None);
        let Ok(Captured::Record(record)) = decode(&unknown) else { panic!("not a record") };
        assert_eq!(translator.translate(&record, &mut out, &Counters::default()), Disposition::Suppressed);
        let outside = encode_kernel(&header, body, b"x\0", None);
        let Ok(Captured::Record(record)) = decode(&outside) else { panic!("not a record") };
        assert_eq!(translator.translate(&record, &mut out, &Counters::default()), Disposition::OutOfScope);
    }

    /// A vector function's numeric arguments named as vector fields fill its vector context.
    #[test]
    fn vector_arguments_fill_the_vector_context() {
        let fields = [("dimensions", Value::from(3)), ("k", Value::from(10)), ("flags", Value::from(1))]
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        let vector = vector_context(&fields).unwrap();
        assert_eq!((vector.dimensions, vector.k, vector.vector_count), (Some(3), Some(10), None));
        let unrelated = [("count".to_owned(), Value::from(3)), ("k".to_owned(), Value::from(-1))];
        assert_eq!(vector_context(&unrelated.into_iter().collect()), None);
    }

    #[test]
    fn walks_become_paths_through_their_mount() {
        assert_eq!(walk_to_path(b"c\0b\0a\0"), b"/a/b/c");
        assert_eq!(walk_to_path(b""), b"/");
        let mount = DeviceMount { dev: 1, root: b"/".to_vec(), mount_point: b"/mnt/w".to_vec() };
        assert_eq!(through_mount(&mount, b"/a/b").unwrap(), b"/mnt/w/a/b");
        let bind = DeviceMount { dev: 1, root: b"/sub".to_vec(), mount_point: b"/srv".to_vec() };
        assert_eq!(through_mount(&bind, b"/sub/x").unwrap(), b"/srv/x");
        assert_eq!(through_mount(&bind, b"/subway/x"), None);
        let root = DeviceMount { dev: 1, root: b"/".to_vec(), mount_point: b"/".to_vec() };
        assert_eq!(through_mount(&root, b"/etc").unwrap(), b"/etc");
    }

    #[test]
    fn numbers_keep_their_sign() {
        assert_eq!(sign_extend(0xffff_fffe, 4), -2);
        assert_eq!(sign_extend(0x7f, 1), 127);
        assert_eq!(sign_extend(0xff, 1), -1);
        assert_eq!(sign_extend(u64::MAX, 8), -1);
        assert_eq!(device_text((8 << 20) | 1), "8:1");
    }
}
