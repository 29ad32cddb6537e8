//! `vexevent cluster status`, `add`, `remove` and `vexevent log --from INDEX`: a cluster
//! member's view (members, leader, term, commit index, lags), membership changes and its
//! committed log, through its control API.

use std::{io::Write as _, net::SocketAddr};

use anyhow::{Context as _, bail};
use vexevent::{
    http::{CLUSTER_LOG_PATH, CLUSTER_MEMBERS_PATH, CLUSTER_STATUS_PATH, MemberAdd, NEXT_INDEX_HEADER},
    replicate::ClusterStatus,
};

use super::remote::Remote;

/// Largest answer read from the control API.
const MAX_ANSWER_BYTES: u64 = 1 << 30;

fn get(
    remote: &Remote,
    addr: SocketAddr,
    path_and_query: &str,
    token: &str,
) -> anyhow::Result<(String, Option<u64>)> {
    let mut response = remote.control_get(addr, path_and_query, token)?;
    let next =
        response.headers().get(NEXT_INDEX_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    // One page of the log is at most LOG_ENTRIES_MAX entries of at most a few MiB each.
    let body =
        response.body_mut().with_config().limit(MAX_ANSWER_BYTES).read_to_string().with_context(|| {
            format!("cannot read the control API's answer from {addr} (at most {MAX_ANSWER_BYTES} bytes)")
        })?;
    if !response.status().is_success() {
        bail!("{}", body.trim_end());
    }
    Ok((body, next))
}

/// Prints the member's view of the cluster (or its JSON).
pub fn status(remote: &Remote, addr: SocketAddr, token: &str, json: bool) -> anyhow::Result<()> {
    let (body, _) = get(remote, addr, CLUSTER_STATUS_PATH, token)?;
    if json {
        println!("{}", body.trim_end());
        return Ok(());
    }
    let status: ClusterStatus =
        serde_json::from_str(&body).context("the instance answered an unknown status")?;
    let show = |value: Option<u64>| value.map_or_else(|| "-".to_owned(), |v| v.to_string());
    println!(
        "member {} ({}), term {}, leader {}, commit index {}, last log index {}, first index {}, snapshot {}",
        status.node_id,
        status.state,
        status.term,
        show(status.leader),
        show(status.commit_index),
        show(status.last_log_index),
        status.first_index,
        show(status.snapshot_index),
    );
    if status.joint {
        println!("a membership change is under way (joint configuration)");
    }
    println!("{:>6}  {:<24} {:<8} {:>12} {:>8}", "id", "address", "role", "matched", "lag");
    for member in &status.members {
        println!(
            "{:>6}  {:<24} {:<8} {:>12} {:>8}",
            member.id,
            member.addr,
            if member.voter { "voter" } else { "learner" },
            show(member.matched),
            show(member.lag)
        );
    }
    if status.members.iter().all(|m| m.lag.is_none()) {
        println!("(lags: no leader answered)");
    }
    if let Some(why) = &status.writes_refused {
        println!("strong writes refused here: {why}");
    }
    let totals: Vec<_> = status.counters.iter().filter(|(_, value)| **value > 0).collect();
    if !totals.is_empty() {
        println!("cluster totals (every member's counters, summed):");
        for (name, value) in totals {
            println!("  {name:<32} {value:>14}");
        }
    }
    Ok(())
}

/// Adds member `id` at `addr` (with an address) or removes it (without), through the member
/// at `control`; prints what was done.
pub fn change(
    remote: &Remote,
    control: SocketAddr,
    token: &str,
    addr: Option<SocketAddr>,
    id: u64,
) -> anyhow::Result<()> {
    let base = format!("{}://{control}{CLUSTER_MEMBERS_PATH}", remote.http_scheme());
    let agent = remote.http_agent();
    let bearer = format!("Bearer {token}");
    let sent = match addr {
        Some(addr) => agent
            .post(&base)
            .header("authorization", &bearer)
            .header("content-type", "application/json")
            .send(serde_json::to_vec(&MemberAdd { id, addr })?),
        None => agent.delete(format!("{base}/{id}")).header("authorization", &bearer).call(),
    };
    let mut response = sent.with_context(|| {
        format!(
            "cannot reach the control API at {control} (is vexevent running with --control-addr {control}?)"
        )
    })?;
    let body = response.body_mut().with_config().limit(1 << 16).read_to_string().unwrap_or_default();
    if !response.status().is_success() {
        bail!("{}", body.trim_end());
    }
    println!("{}", body.trim_end());
    Ok(())
}

/// Prints the committed events from log index `from` (JSON lines, commit order) up to the
/// commit index, then says on stderr where to resume and the session to carry to another member.
/// With a `session` (an index and how long to wait, in ms), the member answers only once it
/// applied that index.
pub fn log(
    remote: &Remote,
    addr: SocketAddr,
    token: &str,
    from: u64,
    session: Option<(u64, u64)>,
) -> anyhow::Result<()> {
    let mut from = from;
    let mut stdout = std::io::stdout().lock();
    let mut query =
        session.map_or_else(String::new, |(index, wait_ms)| format!("&session={index}&wait_ms={wait_ms}"));
    loop {
        let path = format!("{CLUSTER_LOG_PATH}?from={from}{query}");
        // Once the member answered, it applied the session's index.
        query.clear();
        let (body, next) = get(remote, addr, &path, token)?;
        stdout.write_all(body.as_bytes())?;
        let next = next.context("the instance did not say where the log continues")?;
        if next <= from {
            break;
        }
        from = next;
    }
    stdout.flush()?;
    eprintln!("next index: {from}");
    // What this reader has seen: the log up to the index before `from`.
    eprintln!("session: {}", session.map_or(0, |(index, _)| index).max(from.saturating_sub(1)));
    Ok(())
}
