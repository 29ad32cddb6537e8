//! `vexevent reload`: asks a running instance to reload its filters and routes, through its
//! control API (and prints the outcome) or, without one, with SIGHUP to the pid in its stats file.

use std::{net::SocketAddr, path::Path};

use anyhow::{Context as _, bail};
use vexevent::{app::read_stats_file, http::RELOAD_PATH};

use super::remote::Remote;

/// Reloads through the control API at `addr`; fails with the instance's answer when refused.
pub fn through_api(remote: &Remote, addr: SocketAddr, token: &str) -> anyhow::Result<()> {
    let request = remote
        .http_agent()
        .post(format!("{}://{addr}{RELOAD_PATH}", remote.http_scheme()))
        .header("authorization", format!("Bearer {token}"));
    let mut response = request.send("").with_context(|| {
        format!("cannot reach the control API at {addr} (is vexevent running with --control-addr {addr}?)")
    })?;
    let answer = response.body_mut().read_to_string().unwrap_or_default();
    let answer = answer.trim_end();
    if !response.status().is_success() {
        bail!("{answer}");
    }
    println!("{answer}");
    Ok(())
}

/// Sends SIGHUP to the instance whose stats file this is; the outcome is on its stderr.
pub fn with_signal(stats_file: &Path) -> anyhow::Result<()> {
    let snapshot = read_stats_file(stats_file).with_context(|| {
        format!(
            "cannot read stats file {} (is `vexevent run` running, or was it given --stats-file?)",
            stats_file.display()
        )
    })?;
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", snapshot.pid)).unwrap_or_default();
    if snapshot.final_snapshot || comm.trim_end() != "vexevent" {
        bail!("vexevent pid {} (from {}) is no longer running", snapshot.pid, stats_file.display());
    }
    let pid = libc::pid_t::try_from(snapshot.pid).context("pid out of range")?;
    // SAFETY: kill with a valid signal number; the pid was checked to be a vexevent process.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("cannot signal vexevent pid {pid}"));
    }
    println!(
        "sent SIGHUP to vexevent pid {pid}; it prints the outcome on its stderr (use --control-addr for the answer here)"
    );
    Ok(())
}
