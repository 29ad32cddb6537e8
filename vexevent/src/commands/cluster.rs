//! `vexevent cluster status`, `add`, `remove` and `vexevent log --from INDEX [--follow]`: a
//! cluster member's view (members, leader, term, commit index, lags), membership changes and its
//! committed log, through its control API.

use std::{
    io::{BufRead as _, Write as _},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use vexevent::{
    http::{
        CLUSTER_LOG_PATH, CLUSTER_MEMBERS_PATH, CLUSTER_STATUS_PATH, FOLLOW_HEARTBEAT, MemberAdd,
        NEXT_INDEX_HEADER,
    },
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

/// The query of a log request: its session (an index and how long to wait, in ms), if any.
fn session_query(session: Option<(u64, u64)>) -> String {
    session.map_or_else(String::new, |(index, wait_ms)| format!("&session={index}&wait_ms={wait_ms}"))
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

/// Prints the committed events from log index `from` (after the first `skip` events of that
/// entry; JSON lines, commit order) up to the commit index, then says on stderr where to resume
/// and the session to carry to another member. With a `session` (an index and how long to
/// wait, in ms), the member answers only once it applied that index.
pub fn log(
    remote: &Remote,
    addr: SocketAddr,
    token: &str,
    (from, skip): (u64, u64),
    session: Option<(u64, u64)>,
) -> anyhow::Result<()> {
    let mut from = from;
    let mut stdout = std::io::stdout().lock();
    let mut query = format!("&skip={skip}{}", session_query(session));
    loop {
        let path = format!("{CLUSTER_LOG_PATH}?from={from}{query}");
        // Once the member answered, it applied the session's index; `skip` counts in `from`.
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

/// Longest line of a follow stream read (an entry holds at most 65,536 events; one event's
/// JSON is a few KiB at most).
const MAX_LINE_BYTES: u64 = 64 << 20;

/// A line of a follow stream, as far as the reader needs it (the event is printed as it came).
#[derive(serde::Deserialize)]
struct FollowLine {
    index: Option<u64>,
    offset: Option<u64>,
    next: Option<u64>,
    error: Option<String>,
}

/// How long a follow stream may say nothing (heartbeats come every [`FOLLOW_HEARTBEAT`]) before
/// the member counts as gone (stopped, or cut off without the connection closing).
const SILENCE: Duration = FOLLOW_HEARTBEAT.saturating_mul(3);

/// Where a follow reader stands (it has everything before the `skip`th event of entry `at`),
/// and since when it waits for the member (`None`: it is not waiting on the network).
struct Watch {
    at: u64,
    skip: u64,
    waiting_since: Option<Instant>,
}

/// Says on stderr where to resume and why the stream ended.
fn resume_from(watch: &Watch, ended: &str) -> anyhow::Error {
    let (at, skip) = (watch.at, watch.skip);
    eprintln!("resume: --from {at} --skip {skip}");
    anyhow::anyhow!("{ended}; resume on any member with --from {at} --skip {skip}")
}

/// Prints the committed log from the `skip`th event of entry `from`, and each entry as it
/// commits, until the member ends the stream, goes away or says nothing for [`SILENCE`]; each
/// event as `{"index":N,"offset":K,"event":{..}}`. On the way out, says on stderr where to
/// resume (on any member). With a `session`, the member starts only once it applied that index.
pub fn follow(
    remote: &Remote,
    addr: SocketAddr,
    token: &str,
    (from, skip): (u64, u64),
    session: Option<(u64, u64)>,
) -> anyhow::Result<()> {
    // The member may first wait for the session's index.
    let answer_within = Duration::from_millis(session.map_or(0, |(_, wait_ms)| wait_ms));
    let watch =
        Arc::new(Mutex::new(Watch { at: from, skip, waiting_since: Some(Instant::now() + answer_within) }));
    let watchdog = Arc::clone(&watch);
    std::thread::spawn(move || {
        loop {
            let left = {
                let watch = lock(&watchdog);
                let waited = watch.waiting_since.map_or(Duration::ZERO, |since| since.elapsed());
                if waited >= SILENCE {
                    let why = format!("the member at {addr} sent nothing for {} s", SILENCE.as_secs());
                    eprintln!("Error: {}", resume_from(&watch, &why));
                    std::process::exit(1);
                }
                SILENCE.saturating_sub(waited)
            };
            std::thread::sleep(left);
        }
    });
    let path = format!("{CLUSTER_LOG_PATH}?from={from}&skip={skip}&follow=true{}", session_query(session));
    let mut response = remote.control_get(addr, &path, token)?;
    if !response.status().is_success() {
        let body =
            response.body_mut().with_config().limit(MAX_LINE_BYTES).read_to_string().unwrap_or_default();
        bail!("{}", body.trim_end());
    }
    let mut reader = std::io::BufReader::new(response.body_mut().as_reader());
    let mut stdout = std::io::stdout().lock();
    let mut line = Vec::new();
    let ended = loop {
        line.clear();
        if reader.buffer().is_empty() {
            stdout.flush()?;
            lock(&watch).waiting_since = Some(Instant::now());
        }
        let read = std::io::Read::take(&mut reader, MAX_LINE_BYTES).read_until(b'\n', &mut line);
        lock(&watch).waiting_since = None;
        match read {
            Ok(0) => break format!("the member at {addr} closed the stream"),
            Ok(_) if line.last() != Some(&b'\n') => {
                break format!("the member at {addr} broke off the stream (a line cut short)");
            }
            Ok(_) => {}
            Err(error) => break format!("the stream from {addr} broke off: {error}"),
        }
        let Ok(parsed) = serde_json::from_slice::<FollowLine>(&line) else {
            break format!(
                "the member at {addr} sent a line that is not the log's: {}",
                String::from_utf8_lossy(&line)
            );
        };
        let (at, skip) = match parsed {
            FollowLine { error: Some(error), .. } => break error,
            FollowLine { index: Some(index), offset: Some(offset), .. } => {
                stdout.write_all(&line)?;
                (index, offset + 1)
            }
            FollowLine { next: Some(next), .. } => (next, 0),
            FollowLine { .. } => {
                break format!(
                    "the member at {addr} sent an unknown line: {}",
                    String::from_utf8_lossy(&line)
                );
            }
        };
        let mut watch = lock(&watch);
        (watch.at, watch.skip) = (at, skip);
    };
    stdout.flush()?;
    let error = resume_from(&lock(&watch), &ended);
    Err(error)
}

fn lock(watch: &Mutex<Watch>) -> std::sync::MutexGuard<'_, Watch> {
    watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
