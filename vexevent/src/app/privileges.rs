//! Which capabilities `vexevent run` still needs once the probes are attached and the token
//! files are written, derived from the configuration, each with its reason.

use crate::{
    config::Settings,
    privilege::{Capability, Kept},
    react::{ActionType, Mode},
    sinks::{Destination, FileAccess},
};

/// Kernels before this check `CAP_BPF` on every `bpf()` command (map reads and updates too)
/// when unprivileged BPF is disabled; from 6.5 on only loading programs and creating maps need it.
const BPF_COMMANDS_UNCHECKED_SINCE: (u32, u32) = (6, 5);

/// Ports below this need `CAP_NET_BIND_SERVICE` (the kernel's default
/// `net.ipv4.ip_unprivileged_port_start`).
const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// The capabilities `settings` needs after start:
/// - on kernels before 6.5 with unprivileged BPF disabled, `CAP_BPF` (reading the probes'
///   counters and setting their filters);
/// - always `CAP_SYS_PTRACE` (the cwd and fd links of other users' processes in /proc, which
///   resolve relative paths and fds older than the run) and `CAP_DAC_READ_SEARCH` (stat'ing
///   paths in other users' directories for inodes and file types);
/// - `CAP_NET_BIND_SERVICE` when a server binds a port below 1024 (the servers start after the
///   drop);
/// - for rules in `enforce` mode, what their actions need: `signal` `CAP_KILL`, `run`
///   `CAP_SETUID` and `CAP_SETGID` (to become its user), `quarantine` `CAP_DAC_OVERRIDE` and
///   `CAP_FOWNER` (moving other users' files, out of sticky directories too), `chmod`
///   `CAP_FOWNER`.
///
/// Everything else (loading and attaching the probes, locking memory, reading tracefs) is only
/// needed before.
#[must_use]
pub fn needed(settings: &Settings) -> Vec<Kept> {
    let mut kept = vec![
        Kept {
            capability: Capability::CAP_SYS_PTRACE,
            why: "read other users' /proc/PID/cwd and fd links".into(),
        },
        Kept {
            capability: Capability::CAP_DAC_READ_SEARCH,
            why: "stat paths in other users' directories".into(),
        },
    ];
    if needs_bpf_for_maps(
        &std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default(),
        &std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled").unwrap_or_default(),
    ) {
        kept.push(Kept {
            capability: Capability::CAP_BPF,
            why:
                "read the probes' counters and set their filters (this kernel checks it on every bpf() call)"
                    .into(),
        });
    }
    for (server, addr) in [("stream", settings.stream.addr), ("control", settings.control.addr)] {
        if let Some(addr) = addr.filter(|a| a.port() != 0 && a.port() < FIRST_UNPRIVILEGED_PORT) {
            add(&mut kept, Capability::CAP_NET_BIND_SERVICE, format!("{server}.addr port {}", addr.port()));
        }
    }
    for sink in &settings.outputs.sinks {
        if let Destination::File { access: FileAccess { group: Some(gid), .. }, .. } = &sink.destination {
            add(
                &mut kept,
                Capability::CAP_CHOWN,
                format!("sinks.{} group {gid} (files it rotates to)", sink.name),
            );
        }
    }
    if settings.react.config.mode == Mode::Enforce {
        for rule in &settings.react.rules {
            for action in rule.actions.iter().filter(|a| !a.dry_run) {
                let why = |what: &str| format!("rule {}: {what}", rule.name);
                let needs: &[Capability] = match action.action {
                    ActionType::Signal => &[Capability::CAP_KILL],
                    ActionType::Run => &[Capability::CAP_SETUID, Capability::CAP_SETGID],
                    // trusted.* and security.* attributes are the administrator's.
                    ActionType::Xattr
                        if action.xattr.as_deref().is_some_and(|name| !name.starts_with("user.")) =>
                    {
                        &[Capability::CAP_DAC_OVERRIDE, Capability::CAP_FOWNER, Capability::CAP_SYS_ADMIN]
                    }
                    // Another user's file: write permission and ownership checks.
                    ActionType::Quarantine | ActionType::Xattr => {
                        &[Capability::CAP_DAC_OVERRIDE, Capability::CAP_FOWNER]
                    }
                    ActionType::Chmod => &[Capability::CAP_FOWNER],
                };
                for &capability in needs {
                    add(&mut kept, capability, why(action.action.name()));
                }
            }
        }
    }
    kept
}

/// Whether a kernel of release `osrelease` (`6.1.0-28-amd64`) with
/// `kernel.unprivileged_bpf_disabled` = `disabled` refuses map reads and updates without
/// `CAP_BPF`. An unreadable release is taken as an old kernel.
fn needs_bpf_for_maps(osrelease: &str, disabled: &str) -> bool {
    let mut numbers = osrelease.trim().split(['.', '-']).map(|n| n.parse::<u32>().ok());
    let version = match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor),
        _ => (0, 0),
    };
    version < BPF_COMMANDS_UNCHECKED_SINCE && disabled.trim() != "0"
}

/// Adds `capability` for `why`, or adds `why` to its reasons.
fn add(kept: &mut Vec<Kept>, capability: Capability, why: String) {
    match kept.iter_mut().find(|k| k.capability == capability) {
        Some(existing) if !existing.why.contains(&why) => {
            existing.why.push_str(", ");
            existing.why.push_str(&why);
        }
        Some(_) => {}
        None => kept.push(Kept { capability, why }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn kept(toml: &str) -> Vec<(Capability, String)> {
        let config = Config::from_toml(toml).unwrap();
        let (settings, _) = config.build().unwrap();
        needed(&settings).into_iter().map(|k| (k.capability, k.why)).collect()
    }

    #[test]
    fn kernels_before_6_5_with_unprivileged_bpf_disabled_keep_cap_bpf_for_the_maps() {
        assert!(needs_bpf_for_maps("6.1.0-28-amd64\n", "2\n"));
        assert!(needs_bpf_for_maps("5.15.0", "1"));
        assert!(!needs_bpf_for_maps("5.15.0", "0"), "unprivileged BPF allowed: no check");
        assert!(!needs_bpf_for_maps("6.5.0", "2"));
        assert!(!needs_bpf_for_maps("6.18.0-vm\n", "2\n"));
        assert!(needs_bpf_for_maps("unknown", "2"));
    }

    #[test]
    fn the_default_keeps_only_what_translation_needs() {
        let kept = kept("");
        let names: Vec<Capability> = kept.iter().map(|(c, _)| *c).collect();
        assert_eq!(names, [Capability::CAP_SYS_PTRACE, Capability::CAP_DAC_READ_SEARCH]);
    }

    #[test]
    fn low_ports_and_enforced_actions_add_their_capabilities_with_the_rule_named() {
        let kept = kept(
            r#"
            stream.addr = "127.0.0.1:443"
            [react]
            mode = "enforce"
            [[rules]]
            name = "stop"
            kind = "count"
            match = "true"
            at_least = 2
            within_ms = 1000
            actions = [{ type = "signal", signal = "SIGSTOP" }, { type = "chmod", mode = 0o000, dry_run = true }]
            "#,
        );
        let find = |cap| kept.iter().find(|(c, _)| *c == cap).map(|(_, why)| why.as_str());
        assert_eq!(find(Capability::CAP_NET_BIND_SERVICE), Some("stream.addr port 443"));
        assert_eq!(find(Capability::CAP_KILL), Some("rule stop: signal"));
        assert_eq!(find(Capability::CAP_FOWNER), None, "a dry-run action needs nothing");
    }

    #[test]
    fn a_file_sink_given_to_a_group_keeps_cap_chown() {
        let kept = kept("[sinks.f]\ntype = \"file\"\npath = \"/tmp/x.jsonl\"\ngroup = \"4242\"\n");
        let chown = kept.iter().find(|(c, _)| *c == Capability::CAP_CHOWN).map(|(_, why)| why.as_str());
        assert_eq!(chown, Some("sinks.f group 4242 (files it rotates to)"));
        assert!(!self::kept("").iter().any(|(c, _)| *c == Capability::CAP_CHOWN));
    }

    #[test]
    fn monitor_mode_keeps_nothing_for_actions() {
        let kept = kept(
            r#"
            [[rules]]
            name = "stop"
            kind = "count"
            match = "true"
            at_least = 2
            within_ms = 1000
            actions = [{ type = "signal", signal = "SIGKILL" }]
            "#,
        );
        assert_eq!(kept.len(), 2, "{kept:?}");
    }
}
