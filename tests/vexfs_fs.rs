//! An in-memory FUSE file system following `VexFS`'s FUSE conventions, for vexevent's FUSE tests.
//!
//! `*.vec` files hold comma-separated `f32` vectors; writing a `*.search` file or
//! `_vexfs/search` (`vector: 0.1,0.2\nk: 3`) runs [`vexfs_search_vectors`]; `_vexfs/control`
//! stores what is written to it; `_vexfs/stats` reads `vectors=<n>\nsearches=<m>\nhits=<h>\n`.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    BackgroundSession, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, ReplyXattr, Request, SessionACL,
    TimeOrNow, WriteFlags,
};

/// Calls of [`vexfs_search_vectors`] in this process.
static SEARCHES: AtomicUsize = AtomicUsize::new(0);
/// Vectors stored in the file system that ran the latest search.
static STORED_VECTORS: AtomicUsize = AtomicUsize::new(0);

/// Fixed inodes: the root, `_vexfs` and its three control files.
const ROOT: u64 = 1;
const VEXFS_DIR: u64 = 2;
const SEARCH: u64 = 3;
const CONTROL: u64 = 4;
const STATS: u64 = 5;
/// Attribute and entry lifetime: zero, so sizes and counters are never stale.
const TTL: Duration = Duration::ZERO;
/// Largest file size, so a stray `truncate -s 1T` cannot exhaust the test's memory.
const MAX_FILE_SIZE: u64 = 1 << 30;
const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;

/// Runs a (trivial) k-nearest-neighbour search and returns the number of hits,
/// `min(k, stored vectors)`. It is the uprobe target of the FUSE tests, so it is never
/// inlined and keeps its symbol name.
#[inline(never)]
#[no_mangle]
#[must_use]
pub extern "Rust" fn vexfs_search_vectors(query: &[f32], k: usize) -> usize {
    SEARCHES.fetch_add(1, Ordering::SeqCst);
    std::hint::black_box(query.iter().map(|x| x * x).sum::<f32>());
    k.min(STORED_VECTORS.load(Ordering::SeqCst))
}

/// Returns how often [`vexfs_search_vectors`] has run in this process.
#[must_use]
pub fn searches() -> usize {
    SEARCHES.load(Ordering::SeqCst)
}

/// Parses a comma-separated `f32` vector; `None` if empty or malformed.
fn parse_vector(text: &str) -> Option<Vec<f32>> {
    let vector: Vec<f32> = text.split(',').map(|x| x.trim().parse().ok()).collect::<Option<_>>()?;
    (!vector.is_empty()).then_some(vector)
}

/// Parses a search request: `vector: <f32,...>` and optional `k: <n>` (default 10) lines.
fn parse_search(data: &[u8]) -> Option<(Vec<f32>, usize)> {
    let (mut vector, mut k) = (None, 10);
    for line in std::str::from_utf8(data).ok()?.lines() {
        match line.split_once(':').map(|(key, value)| (key.trim(), value)) {
            Some(("vector", value)) => vector = parse_vector(value),
            Some(("k", value)) => k = value.trim().parse().ok()?,
            _ => {}
        }
    }
    Some((vector?, k))
}

/// Converts a file length, or `EFBIG` if it exceeds [`MAX_FILE_SIZE`].
fn file_len(len: u64) -> Result<usize, Errno> {
    usize::try_from(len).ok().filter(|_| len <= MAX_FILE_SIZE).ok_or(Errno::EFBIG)
}

/// Whether `name` ends in `.<ext>`.
fn has_ext(name: &OsStr, ext: &str) -> bool {
    Path::new(name).extension().is_some_and(|e| e == ext)
}

/// Returns the attributes of a new node (its inode number is set on insertion).
fn new_attr(kind: FileType, mode: u32, (uid, gid): (u32, u32)) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm: u16::try_from(mode & 0o7777).unwrap_or(0o600),
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// One file or directory.
struct Node {
    parent: u64,
    name: OsString,
    attr: FileAttr,
    data: Vec<u8>,
    children: BTreeMap<OsString, u64>,
    xattrs: BTreeMap<OsString, Vec<u8>>,
}

/// The whole tree plus the per-mount counters.
struct State {
    nodes: BTreeMap<u64, Node>,
    /// Inode numbers are never reused, so the kernel never sees a stale one come back.
    next_ino: u64,
    searches: usize,
    hits: usize,
}

impl State {
    /// Creates the root directory and `_vexfs` with its control files.
    fn new() -> Self {
        let mut state = State { nodes: BTreeMap::new(), next_ino: ROOT, searches: 0, hits: 0 };
        let (dir, file) = (FileType::Directory, FileType::RegularFile);
        for (parent, name, kind, perm) in [
            (ROOT, "", dir, 0o755),
            (ROOT, "_vexfs", dir, 0o755),
            (VEXFS_DIR, "search", file, 0o644),
            (VEXFS_DIR, "control", file, 0o644),
            (VEXFS_DIR, "stats", file, 0o444),
        ] {
            state.insert(parent, OsStr::new(name), new_attr(kind, perm, (0, 0))).expect("fresh tree");
        }
        state
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    /// Returns the directory `ino`, or `ENOTDIR`.
    fn dir(&self, ino: u64) -> Result<&Node, Errno> {
        let node = self.node(ino)?;
        (node.attr.kind == FileType::Directory).then_some(node).ok_or(Errno::ENOTDIR)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?.children.get(name).copied().ok_or(Errno::ENOENT)
    }

    /// Adds `parent/name` with `attr` and a fresh inode number (the first node is the root).
    fn insert(&mut self, parent: u64, name: &OsStr, mut attr: FileAttr) -> Result<FileAttr, Errno> {
        let ino = self.next_ino;
        if ino != ROOT && self.dir(parent)?.children.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        attr.ino = INodeNo(ino);
        let (name, data, children, xattrs) = (name.to_owned(), Vec::new(), BTreeMap::new(), BTreeMap::new());
        if ino != ROOT {
            self.node_mut(parent)?.children.insert(name.clone(), ino);
        }
        self.nodes.insert(ino, Node { parent, name, attr, data, children, xattrs });
        self.next_ino += 1;
        Ok(attr)
    }

    /// Removes `parent/name`, which must be a directory iff `dir` (and then empty).
    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = self.child(parent, name)?;
        let node = self.node(ino)?;
        match (dir, node.attr.kind == FileType::Directory) {
            _ if ino <= STATS => return Err(Errno::EPERM),
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            (true, true) if !node.children.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        self.nodes.remove(&ino);
        self.node_mut(parent)?.children.remove(name);
        Ok(())
    }

    /// Moves `parent/name` to `to/to_name`, replacing a compatible target.
    fn rename(&mut self, from: (u64, &OsStr), to: (u64, &OsStr), flags: RenameFlags) -> Result<(), Errno> {
        let ((parent, name), (to, to_name)) = (from, to);
        let ino = self.child(parent, name)?;
        self.dir(to)?;
        if ino <= STATS {
            return Err(Errno::EPERM);
        }
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return Err(Errno::EINVAL);
        }
        match self.child(to, to_name) {
            Ok(old) if old == ino => return Ok(()),
            Ok(_) if flags.contains(RenameFlags::RENAME_NOREPLACE) => return Err(Errno::EEXIST),
            Ok(_) => self.remove(to, to_name, self.node(ino)?.attr.kind == FileType::Directory)?,
            Err(_) => {}
        }
        self.node_mut(parent)?.children.remove(name);
        self.node_mut(to)?.children.insert(to_name.to_owned(), ino);
        let node = self.node_mut(ino)?;
        (node.parent, node.name, node.attr.ctime) = (to, to_name.to_owned(), SystemTime::now());
        Ok(())
    }

    /// Counts `*.vec` files holding a valid vector.
    fn vectors(&self) -> usize {
        let is_vector = |n: &&Node| {
            let text = std::str::from_utf8(&n.data).ok();
            has_ext(&n.name, "vec") && text.and_then(parse_vector).is_some()
        };
        self.nodes.values().filter(is_vector).count()
    }

    /// The text of `_vexfs/stats`.
    fn stats(&self) -> String {
        format!("vectors={}\nsearches={}\nhits={}\n", self.vectors(), self.searches, self.hits)
    }

    /// Returns the content of `ino`; `_vexfs/stats` is generated on the fly.
    fn content(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        if ino == STATS { Ok(self.stats().into()) } else { Ok(self.node(ino)?.data.clone()) }
    }

    /// Returns the attributes of `ino` with its current size.
    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.node(ino)?;
        let size = if ino == STATS { self.stats().len() } else { node.data.len() } as u64;
        Ok(FileAttr { size, blocks: size.div_ceil(512), ..node.attr })
    }

    /// Writes `data` at `offset` into `ino`, then runs a search if `ino` is a search file.
    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let node = self.node_mut(ino)?;
        if ino == STATS {
            return Err(Errno::EACCES);
        }
        let end = file_len(offset.saturating_add(data.len() as u64))?;
        let start = end - data.len();
        if node.data.len() < end {
            node.data.resize(end, 0);
        }
        node.data[start..end].copy_from_slice(data);
        node.attr.mtime = SystemTime::now();
        let is_search = ino == SEARCH || has_ext(&node.name, "search");
        if let Some((query, k)) = is_search.then(|| parse_search(&node.data)).flatten() {
            STORED_VECTORS.store(self.vectors(), Ordering::SeqCst);
            self.hits = vexfs_search_vectors(&query, k);
            self.searches += 1;
        }
        u32::try_from(data.len()).map_err(|_| Errno::EFBIG)
    }

    /// Applies a `setattr`: new size (truncate/extend) and mode.
    fn set_attr(&mut self, ino: u64, mode: Option<u32>, size: Option<u64>) -> Result<FileAttr, Errno> {
        let node = self.node_mut(ino)?;
        if let Some(size) = size {
            if ino == STATS {
                return Err(Errno::EACCES);
            }
            node.data.resize(file_len(size)?, 0);
            node.attr.mtime = SystemTime::now();
        }
        if let Some(mode) = mode {
            node.attr.perm = u16::try_from(mode & 0o7777).map_err(|_| Errno::EINVAL)?;
        }
        node.attr.ctime = SystemTime::now();
        self.attr(ino)
    }

    /// Sets (`Some`) or removes (`None`) an extended attribute, honouring `XATTR_*` flags.
    fn set_xattr(&mut self, ino: u64, name: &OsStr, value: Option<&[u8]>, flags: i32) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        match (node.xattrs.contains_key(name), value) {
            (true, Some(_)) if flags == XATTR_CREATE => return Err(Errno::EEXIST),
            (false, Some(_)) if flags == XATTR_REPLACE => return Err(Errno::NO_XATTR),
            (false, None) => return Err(Errno::NO_XATTR),
            (_, Some(value)) => drop(node.xattrs.insert(name.to_owned(), value.to_vec())),
            (true, None) => drop(node.xattrs.remove(name)),
        }
        node.attr.ctime = SystemTime::now();
        Ok(())
    }
}

/// Replies with `$ok` on `Ok($value)`, else with the error.
macro_rules! answer {
    ($reply:ident, $result:expr, |$value:pat_param| $ok:expr) => {
        match $result {
            Ok($value) => $ok,
            Err(err) => $reply.error(err),
        }
    };
}

/// Answers an xattr query: the size if `size` is 0, the value if it fits, else `ERANGE`.
fn answer_xattr(reply: ReplyXattr, result: Result<Vec<u8>, Errno>, size: u32) {
    match result.map(|value| (u32::try_from(value.len()), value)) {
        Ok((Ok(len), _)) if size == 0 => reply.size(len),
        Ok((Ok(len), value)) if len <= size => reply.data(&value),
        Ok(_) => reply.error(Errno::ERANGE),
        Err(err) => reply.error(err),
    }
}

/// The FUSE file system: one mutex-protected tree.
struct VexFs(Mutex<State>);

impl VexFs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Filesystem for VexFs {
    fn lookup(&self, _: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let st = self.state();
        let result = st.child(parent.0, name).and_then(|ino| st.attr(ino));
        answer!(reply, result, |attr| reply.entry(&TTL, &attr, Generation(0)));
    }

    fn getattr(&self, _: &Request, ino: INodeNo, _: Option<FileHandle>, reply: ReplyAttr) {
        answer!(reply, self.state().attr(ino.0), |attr| reply.attr(&TTL, &attr));
    }

    fn setattr(
        &self,
        _: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _: Option<u32>,
        _: Option<u32>,
        size: Option<u64>,
        _: Option<TimeOrNow>,
        _: Option<TimeOrNow>,
        _: Option<SystemTime>,
        _: Option<FileHandle>,
        _: Option<SystemTime>,
        _: Option<SystemTime>,
        _: Option<SystemTime>,
        _: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.state().set_attr(ino.0, mode, size);
        answer!(reply, result, |attr| reply.attr(&TTL, &attr));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let attr = new_attr(FileType::Directory, mode & !umask, (req.uid(), req.gid()));
        let result = self.state().insert(parent.0, name, attr);
        answer!(reply, result, |attr| reply.entry(&TTL, &attr, Generation(0)));
    }

    fn unlink(&self, _: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer!(reply, self.state().remove(parent.0, name, false), |()| reply.ok());
    }

    fn rmdir(&self, _: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer!(reply, self.state().remove(parent.0, name, true), |()| reply.ok());
    }

    fn rename(
        &self,
        _: &Request,
        parent: INodeNo,
        name: &OsStr,
        to: INodeNo,
        to_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.state().rename((parent.0, name), (to.0, to_name), flags);
        answer!(reply, result, |()| reply.ok());
    }

    fn open(&self, _: &Request, ino: INodeNo, _: OpenFlags, reply: ReplyOpen) {
        // The control files change behind the kernel's back: bypass its page cache.
        let flags = match ino.0 {
            SEARCH | CONTROL | STATS => FopenFlags::FOPEN_DIRECT_IO,
            _ => FopenFlags::empty(),
        };
        answer!(reply, self.state().node(ino.0), |_| reply.opened(FileHandle(0), flags));
    }

    fn read(
        &self,
        _: &Request,
        ino: INodeNo,
        _: FileHandle,
        offset: u64,
        size: u32,
        _: OpenFlags,
        _: Option<LockOwner>,
        reply: ReplyData,
    ) {
        answer!(reply, self.state().content(ino.0), |data| {
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
            reply.data(&data[start..data.len().min(start.saturating_add(size as usize))]);
        });
    }

    fn write(
        &self,
        _: &Request,
        ino: INodeNo,
        _: FileHandle,
        offset: u64,
        data: &[u8],
        _: WriteFlags,
        _: OpenFlags,
        _: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        answer!(reply, self.state().write(ino.0, offset, data), |n| reply.written(n));
    }

    fn flush(&self, _: &Request, _: INodeNo, _: FileHandle, _: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn readdir(&self, _: &Request, ino: INodeNo, _: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let st = self.state();
        let dir = match st.dir(ino.0) {
            Ok(dir) => dir,
            Err(err) => return reply.error(err),
        };
        let dots = [(ino.0, OsStr::new(".")), (dir.parent, OsStr::new(".."))];
        let children = dir.children.iter().map(|(name, &child)| (child, name.as_os_str()));
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (child, name)) in dots.into_iter().chain(children).enumerate().skip(skip) {
            let kind = st.node(child).map_or(FileType::Directory, |n| n.attr.kind);
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn setxattr(
        &self,
        _: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _: u32,
        reply: ReplyEmpty,
    ) {
        let result = self.state().set_xattr(ino.0, name, Some(value), flags);
        answer!(reply, result, |()| reply.ok());
    }

    fn getxattr(&self, _: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let st = self.state();
        let value = st.node(ino.0).and_then(|n| n.xattrs.get(name).cloned().ok_or(Errno::NO_XATTR));
        answer_xattr(reply, value, size);
    }

    fn listxattr(&self, _: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let st = self.state();
        let names = st.node(ino.0).map(|n| {
            let nul_terminated = |name: &OsString| [name.as_encoded_bytes(), b"\0"].concat();
            n.xattrs.keys().flat_map(nul_terminated).collect()
        });
        answer_xattr(reply, names, size);
    }

    fn removexattr(&self, _: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer!(reply, self.state().set_xattr(ino.0, name, None, 0), |()| reply.ok());
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _: i32,
        reply: ReplyCreate,
    ) {
        let attr = new_attr(FileType::RegularFile, mode & !umask, (req.uid(), req.gid()));
        let result = self.state().insert(parent.0, name, attr);
        answer!(reply, result, |attr| {
            reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty());
        });
    }
}

/// Returns the `/proc/self/mountinfo` line of the mount at `mount_point`, if mounted.
#[must_use]
pub fn mountinfo_entry(mount_point: &Path) -> Option<String> {
    let path = mount_point.canonicalize().unwrap_or_else(|_| mount_point.to_path_buf());
    let escape = |c: char| match c {
        ' ' | '\t' | '\n' | '\\' => format!("\\{:03o}", u32::from(c)),
        c => c.to_string(),
    };
    let escaped: String = path.to_string_lossy().chars().map(escape).collect();
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let is_ours = |line: &&str| line.split(' ').nth(4) == Some(escaped.as_str());
    info.lines().rev().find(is_ours).map(str::to_owned)
}

/// A `VexFS` instance served by a background thread of this process; unmounted on drop.
pub struct VexfsMount {
    session: Option<BackgroundSession>,
    mount_point: PathBuf,
}

impl VexfsMount {
    /// Mounts a fresh `VexFS` (type `fuse.vexfs`, source `vexfs`) at `mount_point` and waits
    /// up to 10 s until it shows in `/proc/self/mountinfo`.
    ///
    /// # Errors
    /// Fails if the mount point is missing, mounting fails, or the mount never shows up.
    pub fn mount(mount_point: &Path) -> io::Result<VexfsMount> {
        let mount_point = mount_point.canonicalize()?;
        let mut config = Config::default();
        // fuser hands `MountOption::Subtype` only to fusermount3, but as root it calls mount(2)
        // itself with type "fuse"; a raw `subtype=` option reaches the kernel on both paths.
        config.mount_options = vec![
            MountOption::FSName("vexfs".into()),
            MountOption::CUSTOM("subtype=vexfs".into()),
            MountOption::DefaultPermissions,
        ];
        config.acl = SessionACL::All; // allow_other
        let session = fuser::spawn_mount(VexFs(Mutex::new(State::new())), &mount_point, &config)?;
        let mount = VexfsMount { session: Some(session), mount_point };
        let deadline = Instant::now() + Duration::from_secs(10);
        while mountinfo_entry(&mount.mount_point).is_none() {
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "vexfs mount did not appear"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(mount)
    }

    /// The canonical mount point.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for VexfsMount {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        if session.umount_and_join().is_err() && mountinfo_entry(&self.mount_point).is_some() {
            // Busy: detach lazily rather than leave the mount behind.
            let mut lazy = std::process::Command::new("fusermount3");
            let _ = lazy.arg("-uz").arg(&self.mount_point).status();
        }
    }
}
