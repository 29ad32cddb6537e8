//! Least privilege: once the probes are attached, a thread keeps only the capabilities it is
//! given (each with its reason), drops every other one from all its sets, the bounding set
//! included, and sets `no_new_privs`, so neither it nor anything it runs can get them back.
//!
//! Capabilities belong to a thread, not to the process: [`restrict`] changes the calling thread
//! and the threads it starts afterwards. `vexevent run` calls it on the main thread before it
//! starts any other, and a thread that must start earlier calls it for itself.

pub use caps::Capability;
use caps::{CapSet, CapsHashSet};

/// The id of a group named in the configuration (a name in /etc/group, or a number).
#[must_use]
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            Some((fields.next()?, fields.nth(1)?))
        })
        .find(|(group, _)| *group == name)
        .and_then(|(_, gid)| gid.parse().ok())
}

/// Sets the calling thread's nice value; threads it starts afterwards inherit it. A lower one
/// than now needs `CAP_SYS_NICE`, so lower it before [`restrict`].
///
/// # Errors
/// When the kernel refuses it.
pub fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // PRIO_PROCESS with a thread id sets that thread's nice value (Linux).
    // SAFETY: plain syscall on this thread's own id.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid.cast_unsigned(), nice) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A capability kept after start, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    pub capability: Capability,
    pub why: String,
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.capability, self.why)
    }
}

/// Why the privileges could not be reduced (vexevent does not run on with more than it needs).
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot read the {set} capability set: {source}")]
    Read {
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot drop {capability} from the bounding set: {source}")]
    Bounding {
        capability: Capability,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot reduce the {set} capability set to the kept ones: {source}")]
    Set {
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot set no_new_privs: {source}")]
    NoNewPrivs {
        #[source]
        source: std::io::Error,
    },
}

/// How [`restrict`] left the bounding set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bounding {
    /// Reduced to the kept capabilities.
    Reduced,
    /// Left as the thread started with it: reducing it needs `CAP_SETPCAP`, which whoever
    /// started vexevent withheld (a systemd unit's `CapabilityBoundingSet` without it). With
    /// `no_new_privs` and the permitted set reduced, nothing regains what is outside that set.
    AsStarted,
}

/// Keeps only `kept` in the calling thread's effective and permitted sets, drops everything
/// else from its bounding set (when it may), empties its inheritable and ambient sets, and sets
/// `no_new_privs`. Threads it starts afterwards inherit all of it.
///
/// # Errors
/// When a set cannot be read or changed (the thread then keeps what it had).
pub fn restrict(kept: &[Kept]) -> Result<Bounding, PrivilegeError> {
    let keep: CapsHashSet = kept.iter().map(|k| k.capability).collect();
    // Dropping from the bounding set needs CAP_SETPCAP, which goes with the effective set last.
    let may_drop = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(|source| PrivilegeError::Read { set: "effective", source })?;
    let bounding = if may_drop {
        let now = caps::read(None, CapSet::Bounding)
            .map_err(|source| PrivilegeError::Read { set: "bounding", source })?;
        for &capability in now.difference(&keep) {
            caps::drop(None, CapSet::Bounding, capability)
                .map_err(|source| PrivilegeError::Bounding { capability, source })?;
        }
        Bounding::Reduced
    } else {
        Bounding::AsStarted
    };
    caps::clear(None, CapSet::Ambient).map_err(|source| PrivilegeError::Set { set: "ambient", source })?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|source| PrivilegeError::Set { set: "inheritable", source })?;
    // The effective set must stay within the permitted one: it shrinks first.
    for (set, name) in [(CapSet::Effective, "effective"), (CapSet::Permitted, "permitted")] {
        let now = caps::read(None, set).map_err(|source| PrivilegeError::Read { set: name, source })?;
        caps::set(None, set, &now.intersection(&keep).copied().collect())
            .map_err(|source| PrivilegeError::Set { set: name, source })?;
    }
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers; it only sets a flag.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::NoNewPrivs { source: std::io::Error::last_os_error() });
    }
    Ok(bounding)
}
