//! What userspace knows of each traced process: its cwd and the files behind its fds, learned
//! from the records (chdir, open, dup, close, fork) and, for state older than the run, from /proc.

use std::{
    collections::HashMap,
    ffi::OsStr,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    time::SystemTime,
};

use crate::event::FileType;

/// Processes tracked before the table is pruned of exited ones.
const PRUNE_THRESHOLD: usize = 4096;
/// Open files remembered before the table starts over (the probes' fd scope holds as many). An
/// entry outlives the fds that share it (the last close is not visible here) until its key is
/// reused by a newer open, or the table starts over; then fds fall back to their process's table.
const FILES_CAPACITY: usize = 1 << 17;

/// A file as seen through an fd or a path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileInfo {
    pub path: Vec<u8>,
    pub inode: Option<u64>,
    pub file_type: Option<FileType>,
}

/// Metadata of a path, read with `lstat`.
#[derive(Clone, Copy, Debug)]
pub struct PathStat {
    pub inode: u64,
    pub file_type: FileType,
    /// Birth time, where the file system records it.
    pub born: Option<SystemTime>,
}

/// `lstat` of a path given as bytes.
#[must_use]
pub fn stat_path(path: &[u8]) -> Option<PathStat> {
    let metadata = std::fs::symlink_metadata(OsStr::from_bytes(path)).ok()?;
    Some(PathStat {
        inode: metadata.ino(),
        file_type: file_type_of(metadata.mode()),
        born: metadata.created().ok(),
    })
}

/// The file type in `st_mode` bits.
#[must_use]
pub fn file_type_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::Fifo,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::Regular,
    }
}

fn read_link(path: &str) -> Option<Vec<u8>> {
    std::fs::read_link(path).ok().map(|p| p.as_os_str().as_bytes().to_vec())
}

#[derive(Debug, Default)]
struct ProcessState {
    cwd: Option<Vec<u8>>,
    /// Open fds: the file, and when the fd got it (`CLOCK_MONOTONIC`; 0 when learned from /proc).
    fds: HashMap<i32, (FileInfo, u64)>,
}

/// Per-process cwd and fd tables, and the open files fds share.
#[derive(Debug)]
pub struct ProcessTable {
    processes: HashMap<u32, ProcessState>,
    /// Open files by key (`OpenFile::key`): found through any fd that shares one, in any
    /// process (dup, `fcntl(F_DUPFD)`, fork, fds passed over sockets).
    files: HashMap<u64, FileInfo>,
    /// Table size at which exited processes are pruned next: twice what survived the last
    /// prune, so a table of live processes is not walked again for every new pid.
    prune_at: usize,
}

impl Default for ProcessTable {
    fn default() -> Self {
        Self { processes: HashMap::new(), files: HashMap::new(), prune_at: PRUNE_THRESHOLD }
    }
}

impl ProcessTable {
    fn process(&mut self, pid: u32) -> &mut ProcessState {
        if self.processes.len() >= self.prune_at && !self.processes.contains_key(&pid) {
            self.processes.retain(|pid, _| std::path::Path::new(&format!("/proc/{pid}")).exists());
            self.prune_at = (self.processes.len() * 2).max(PRUNE_THRESHOLD);
        }
        self.processes.entry(pid).or_default()
    }

    /// The process's cwd: as last seen changing, else as /proc shows it now.
    pub fn cwd(&mut self, pid: u32) -> Option<Vec<u8>> {
        let state = self.process(pid);
        if state.cwd.is_none() {
            state.cwd = read_link(&format!("/proc/{pid}/cwd"));
        }
        state.cwd.clone()
    }

    pub fn set_cwd(&mut self, pid: u32, cwd: Vec<u8>) {
        self.process(pid).cwd = Some(cwd);
    }

    /// A child starts with its parent's cwd.
    pub fn fork(&mut self, parent: u32, child: u32) {
        let cwd = self.cwd(parent);
        self.process(child).cwd = cwd;
    }

    /// The file behind an fd: as seen opened, else as /proc shows it now.
    pub fn fd(&mut self, pid: u32, fd: i32) -> Option<FileInfo> {
        if let Some((info, _)) = self.process(pid).fds.get(&fd) {
            return Some(info.clone());
        }
        let path = read_link(&format!("/proc/{pid}/fd/{fd}"))?;
        let stat = stat_path(&path);
        let info = FileInfo { inode: stat.map(|s| s.inode), file_type: stat.map(|s| s.file_type), path };
        self.process(pid).fds.insert(fd, (info.clone(), 0));
        Some(info)
    }

    /// The file behind `fd` of `pid`, whose open file has key `key` (when the record carries
    /// one): by its open file, which any process may have opened, else as [`Self::fd`] finds it
    /// (and then remembered for the open file's other fds).
    pub fn open_file(&mut self, pid: u32, fd: i32, key: Option<u64>) -> Option<FileInfo> {
        let Some(key) = key else { return self.fd(pid, fd) };
        if let Some(info) = self.files.get(&key) {
            return Some(info.clone());
        }
        let info = self.fd(pid, fd)?;
        self.set_file(key, info.clone());
        Some(info)
    }

    /// The open file with key `key`, when known.
    #[must_use]
    pub fn file(&self, key: u64) -> Option<FileInfo> {
        self.files.get(&key).cloned()
    }

    /// The open file with key `key` is `info` (an open made it).
    pub fn set_file(&mut self, key: u64, info: FileInfo) {
        if self.files.len() >= FILES_CAPACITY && !self.files.contains_key(&key) {
            self.files.clear();
        }
        self.files.insert(key, info);
    }

    /// `fd` was open on `path` before the run started.
    pub fn seed_fd(&mut self, pid: u32, fd: i32, path: Vec<u8>) {
        let stat = stat_path(&path);
        let info = FileInfo { inode: stat.map(|s| s.inode), file_type: stat.map(|s| s.file_type), path };
        self.process(pid).fds.insert(fd, (info, 0));
    }

    /// `fd` refers to `info` since `since_ns` (the syscall's exit).
    pub fn set_fd(&mut self, pid: u32, fd: i32, info: FileInfo, since_ns: u64) {
        self.process(pid).fds.insert(fd, (info, since_ns));
    }

    /// A close of `fd` that began at `close_entered_ns`: the file it closed (as [`Self::fd`]
    /// finds it), taken out of the table. In a multi-threaded process another thread may already
    /// have reused the number (its open ends after this close began): that newer file is kept.
    pub fn close_fd(&mut self, pid: u32, fd: i32, close_entered_ns: u64) -> Option<FileInfo> {
        if !self.process(pid).fds.contains_key(&fd) {
            // Learned from /proc (stamped 0, so the close takes it).
            self.fd(pid, fd)?;
        }
        self.take_fd(pid, fd, close_entered_ns)
    }

    /// [`Self::close_fd`] without a look at /proc: what the table knows of the number.
    pub fn take_fd(&mut self, pid: u32, fd: i32, close_entered_ns: u64) -> Option<FileInfo> {
        let fds = &mut self.process(pid).fds;
        match fds.get(&fd) {
            Some((_, since)) if *since <= close_entered_ns => fds.remove(&fd).map(|(info, _)| info),
            other => other.map(|(info, _)| info.clone()),
        }
    }

    /// `new_fd` now refers to what `old_fd` does.
    pub fn dup_fd(&mut self, pid: u32, old_fd: i32, new_fd: i32, since_ns: u64) {
        if let Some(info) = self.fd(pid, old_fd) {
            self.set_fd(pid, new_fd, info, since_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_fds_cwd_and_forks() {
        let mut table = ProcessTable::default();
        let info = FileInfo { path: b"/w/a".to_vec(), inode: Some(5), file_type: Some(FileType::Regular) };
        table.set_fd(1_000_000, 3, info.clone(), 10);
        table.dup_fd(1_000_000, 3, 1, 20);
        assert_eq!(table.fd(1_000_000, 1), Some(info.clone()));
        assert_eq!(table.close_fd(1_000_000, 3, 30), Some(info.clone()));
        assert_eq!(table.fd(1_000_000, 3), None, "closed, and no such process in /proc");
        assert_eq!(table.close_fd(1_000_000, 3, 30), None);
        // Another thread reopened fd 1 after a close of it began: the close keeps the new file.
        table.set_fd(1_000_000, 1, info.clone(), 50);
        assert_eq!(table.close_fd(1_000_000, 1, 40), Some(info.clone()));
        assert_eq!(table.fd(1_000_000, 1), Some(info));
        table.set_cwd(1_000_000, b"/w".to_vec());
        table.fork(1_000_000, 1_000_001);
        assert_eq!(table.cwd(1_000_001), Some(b"/w".to_vec()));
    }

    #[test]
    fn an_open_file_is_found_through_any_process_that_shares_it() {
        let mut table = ProcessTable::default();
        let info = FileInfo { path: b"/w/log".to_vec(), inode: Some(9), file_type: Some(FileType::Regular) };
        table.set_file(0xffff_8880_1234_5678, info.clone());
        // A forked child (another pid, any fd number) writing through the inherited open file.
        assert_eq!(table.open_file(2_000_001, 50, Some(0xffff_8880_1234_5678)), Some(info.clone()));
        // A close of one of its fds keeps it for the others.
        assert_eq!(table.take_fd(2_000_001, 50, 10), None, "not opened by this process");
        assert_eq!(table.file(0xffff_8880_1234_5678), Some(info));
        // An fd known from before the run by its number teaches the table its open file.
        table.set_fd(2_000_002, 4, FileInfo { path: b"/w/old".to_vec(), ..FileInfo::default() }, 0);
        assert_eq!(table.open_file(2_000_002, 4, Some(7)).unwrap().path, b"/w/old");
        assert_eq!(table.file(7).unwrap().path, b"/w/old");
        assert_eq!(table.take_fd(2_000_002, 4, 10).unwrap().path, b"/w/old");
        assert_eq!(table.fd(2_000_002, 4), None, "taken, and no such process in /proc");
    }

    #[test]
    fn falls_back_to_proc_for_state_older_than_the_run() {
        let mut table = ProcessTable::default();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(table.cwd(std::process::id()), Some(cwd.as_os_str().as_bytes().to_vec()));
    }
}
