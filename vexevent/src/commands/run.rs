//! How `vexevent run` reports while it runs: each notice of the library as the lines users,
//! scripts and tests read on stderr.

use vexevent::{
    app::Notice,
    http::{METRICS_PATH, RELOAD_PATH, STATS_PATH, STREAM_PATH},
    privilege::Bounding,
};

/// Prints a notice on stderr.
pub fn print_notice(notice: Notice<'_>) {
    match notice {
        Notice::Attached { hooks, traced_syscalls, fuse_mounts } => {
            let attached: Vec<&str> =
                hooks.iter().filter(|h| h.missing.is_none()).map(|h| h.hook.as_str()).collect();
            eprintln!("vexevent: attached {}; tracing {traced_syscalls} syscalls", attached.join(", "));
            for mount in fuse_mounts {
                eprintln!(
                    "vexevent:   FUSE mount {} ({}, connection {})",
                    String::from_utf8_lossy(&mount.mount_point),
                    mount.fstype,
                    mount.connection
                );
            }
            for hook in hooks {
                if let Some(why) = &hook.missing {
                    eprintln!("vexevent:   not attached: {} ({why})", hook.hook);
                }
            }
        }
        Notice::Privileges { kept, bounding } => {
            let kept: Vec<String> = kept.iter().map(ToString::to_string).collect();
            let bounding = match bounding {
                Bounding::Reduced => "",
                Bounding::AsStarted => " (bounding set left as started: no CAP_SETPCAP)",
            };
            eprintln!(
                "vexevent: dropped root's other capabilities{bounding}; keeping {}; no_new_privs set",
                kept.join(", ")
            );
        }
        Notice::Tokens { token_file, metrics_token_file } => eprintln!(
            "vexevent: API token in {} (metrics token in {})",
            token_file.display(),
            metrics_token_file.display()
        ),
        Notice::ControlApi { addr, tls } => {
            let scheme = if tls { "https" } else { "http" };
            eprintln!(
                "vexevent: control API at {scheme}://{addr}{RELOAD_PATH}, {STATS_PATH} and {METRICS_PATH}"
            );
        }
        Notice::Dashboard { login_url } => {
            eprintln!("vexevent: dashboard: open {login_url} (a one-time login URL)");
        }
        Notice::Stream { addr, tls } => {
            let scheme = if tls { "wss" } else { "ws" };
            eprintln!("vexevent: event stream at {scheme}://{addr}{STREAM_PATH}");
        }
        Notice::Ready { watching } => {
            let watching = if watching.is_empty() { "everything".to_owned() } else { watching.join(", ") };
            eprintln!("vexevent: ready: watching {watching} (pid {})", std::process::id());
        }
        Notice::Reload(Ok(reloaded)) => eprintln!("vexevent: {reloaded}"),
        Notice::Reload(Err(error)) => eprintln!("vexevent: {error}"),
        Notice::Stats(snapshot) => eprint!("{snapshot}"),
    }
}
