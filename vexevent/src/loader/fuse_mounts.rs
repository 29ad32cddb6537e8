//! Mounts that matter, from /proc/self/mountinfo: which FUSE connections to watch (the FUSE mounts
//! that lie inside a watched directory or contain one), where `VexFS` is mounted, and where the
//! cgroup v2 file system is. A connection is the mount's device number in the kernel's
//! encoding (`major << 20 | minor`), the value the FUSE tracepoints carry.

use crate::event::WatchScope;

/// A FUSE mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuseMount {
    /// Device number, kernel encoding.
    pub connection: u32,
    pub mount_point: Vec<u8>,
    pub fstype: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(value) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Parses every mount of mountinfo text (the device number in kernel encoding).
fn parse_mounts(mountinfo: &str) -> Vec<FuseMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let fstype = after.split(' ').next()?;
            let (major, minor) = fields.get(2)?.split_once(':')?;
            let connection = (major.parse::<u32>().ok()? << 20) | minor.parse::<u32>().ok()?;
            Some(FuseMount { connection, mount_point: unescape(fields.get(4)?), fstype: fstype.to_owned() })
        })
        .collect()
}

/// A mount as the kernel-function events join it: device (kernel encoding), the directory of
/// its file system it shows (its root), and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMount {
    pub dev: u32,
    pub root: Vec<u8>,
    pub mount_point: Vec<u8>,
}

/// Parses every mount of mountinfo text with its device and root.
#[must_use]
pub fn parse_device_mounts(mountinfo: &str) -> Vec<DeviceMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, _) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let (major, minor) = fields.get(2)?.split_once(':')?;
            let dev = (major.parse::<u32>().ok()? << 20) | minor.parse::<u32>().ok()?;
            Some(DeviceMount { dev, root: unescape(fields.get(3)?), mount_point: unescape(fields.get(4)?) })
        })
        .collect()
}

/// Where the cgroup v2 file system is mounted (its first mount in mountinfo text).
#[must_use]
pub fn cgroup2_mount_point(mountinfo: &str) -> Option<Vec<u8>> {
    parse_mounts(mountinfo).into_iter().find(|m| m.fstype == "cgroup2").map(|m| m.mount_point)
}

/// Parses mountinfo text into its FUSE mounts.
#[must_use]
pub fn parse_fuse_mounts(mountinfo: &str) -> Vec<FuseMount> {
    parse_mounts(mountinfo)
        .into_iter()
        .filter(|m| m.fstype == "fuse" || m.fstype == "fuseblk" || m.fstype.starts_with("fuse."))
        .collect()
}

/// Mount points of `VexFS` file systems: its FUSE daemon (`fuse.vexfs`) or its kernel module
/// (`vexfs_v2_b62`, `vexfs_fixed`, ...).
#[must_use]
pub fn vexfs_mount_points() -> Vec<Vec<u8>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mounts(&mountinfo)
        .into_iter()
        .filter(|m| m.fstype == "fuse.vexfs" || m.fstype.starts_with("vexfs"))
        .map(|m| m.mount_point)
        .collect()
}

/// The FUSE mounts of this system that the scope covers (inside a watched directory, or holding
/// one).
#[must_use]
pub fn watched_fuse_mounts(scope: &WatchScope) -> Vec<FuseMount> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_fuse_mounts(&mountinfo)
        .into_iter()
        .filter(|mount| {
            scope.contains(&mount.mount_point)
                || scope
                    .dirs()
                    .iter()
                    .any(|dir| WatchScope::new(vec![mount.mount_point.clone()]).contains(dir))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:53 / /tmp/w/fuse\\040dir rw,nosuid,nodev,relatime shared:50 - fuse.bindfs bindfs rw,user_id=0
91 22 0:54 / /srv/other rw - fuse /dev/fuse rw
92 22 0:55 / /tmp/w/tmpfs rw - tmpfs none rw
";

    #[test]
    fn finds_fuse_mounts_with_kernel_device_numbers() {
        let mounts = parse_fuse_mounts(MOUNTINFO);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].connection, 53);
        assert_eq!(mounts[0].mount_point, b"/tmp/w/fuse dir");
        assert_eq!(mounts[0].fstype, "fuse.bindfs");
        assert_eq!(mounts[1].connection, 54);
    }
}
