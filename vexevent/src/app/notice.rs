//! What `vexevent run` tells its user while it runs, as typed notices: the library prints
//! nothing; the binary decides how each notice reads (and tests and scripts wait for its lines).

use std::{net::SocketAddr, path::Path};

use super::{ReloadError, Reloaded};
use crate::{
    loader::{FuseMount, HookReport},
    privilege::{Bounding, Kept},
    telemetry::StatsSnapshot,
};

/// Something the running instance reports.
pub enum Notice<'a> {
    /// The probes are loaded: the hooks (attached, or why not), how many syscalls are traced,
    /// the FUSE mounts being followed.
    Attached { hooks: &'a [HookReport], traced_syscalls: usize, fuse_mounts: &'a [FuseMount] },
    /// The probes are attached: every capability but these was dropped (from the bounding set
    /// too, or not), and `no_new_privs` set.
    Privileges { kept: &'a [Kept], bounding: Bounding },
    /// The HTTP servers' tokens were written to these files.
    Tokens { token_file: &'a Path, metrics_token_file: &'a Path },
    /// The control API listens here.
    ControlApi { addr: SocketAddr, tls: bool },
    /// The dashboard's one-time login URL (it sets a session cookie; the URL then stops working).
    Dashboard { login_url: &'a str },
    /// The live stream listens here.
    Stream { addr: SocketAddr, tls: bool },
    /// Capturing: signals are handled from now on. `watching` is empty when everything is.
    Ready { watching: Vec<String> },
    /// A reload was applied or refused.
    Reload(&'a Result<Reloaded, ReloadError>),
    /// Current counters (SIGUSR1, the stats interval).
    Stats(&'a StatsSnapshot),
}

/// Where notices go.
pub type Notify<'a> = &'a dyn Fn(Notice<'_>);
