//! `vexevent top`: a `filetop` in the terminal: follows a running instance's window summaries
//! (the dashboard's stream, `GET /dashboard/events` on its control address) and redraws the top
//! files, processes, cgroups (containers), FUSE daemon functions, slowest operations and anomalies
//! once per window.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
};

use anyhow::{Context as _, bail};
use serde_json::Value;
use vexevent::http::DASHBOARD_EVENTS_PATH;

use super::remote::Remote;

/// Clears the terminal and moves to its top-left corner.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Follows the summaries at `addr` and redraws `rows` rows per table until the stream ends.
pub fn follow(remote: &Remote, addr: SocketAddr, token: &str, rows: usize) -> anyhow::Result<()> {
    let response = remote.control_get(addr, DASHBOARD_EVENTS_PATH, token)?;
    if !response.status().is_success() {
        bail!("the control API answered {}", response.status());
    }
    let mut stdout = std::io::stdout();
    for line in BufReader::new(response.into_body().into_reader()).lines() {
        let line = line.context("the stream broke")?;
        let Some(data) = line.strip_prefix("data:") else { continue };
        let frame: Value =
            serde_json::from_str(data.trim()).context("the stream sent something that is not JSON")?;
        write!(stdout, "{CLEAR}{}", screen(&frame, rows))?;
        stdout.flush()?;
    }
    bail!("the stream closed (the instance stopped)")
}

/// Text of a `top` row's key, shortened from the left to `width` characters.
fn key(value: &Value, width: usize) -> String {
    let text = value.as_str().unwrap_or("?");
    let length = text.chars().count();
    if length <= width {
        text.to_owned()
    } else {
        let tail: String = text.chars().skip(length - width + 1).collect();
        format!("…{tail}")
    }
}

/// A count of the summary (0 when absent), for aligned columns.
fn number(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// One screen for a window summary.
fn screen(frame: &Value, rows: usize) -> String {
    let mut out = String::new();
    let seconds = frame["wall_ms"].as_u64().unwrap_or(0) / 1_000;
    let ready = if frame["health"]["ready"] == true { "ready" } else { "NOT READY" };
    let _ = writeln!(
        out,
        "vexevent top - {:02}:{:02}:{:02} UTC  {} events  {} errors  {} lost  {} late  [{ready}]",
        seconds / 3_600 % 24,
        seconds / 60 % 60,
        seconds % 60,
        number(&frame["events"]),
        number(&frame["errors"]),
        number(&frame["lost"]),
        number(&frame["late"]),
    );
    for (title, dimension) in [("FILE", "path"), ("PROCESS", "pid"), ("CGROUP", "cgroup")] {
        let _ = writeln!(
            out,
            "\n{title:<60} {:>8} {:>10} {:>6} {:>10} {:>8}",
            "OPS", "BYTES", "ERR", "TIME_US", "P99_US"
        );
        for row in frame["top"][dimension].as_array().into_iter().flatten().take(rows) {
            let _ = writeln!(
                out,
                "{:<60} {:>8} {:>10} {:>6} {:>10} {:>8}",
                key(&row["key"], 60),
                number(&row["count"]),
                number(&row["bytes"]),
                number(&row["errors"]),
                number(&row["time_us"]),
                number(&row["p99_us"])
            );
        }
    }
    let functions = frame["daemon_functions"].as_array().filter(|rows| !rows.is_empty());
    if let Some(functions) = functions {
        let _ = writeln!(
            out,
            "\n{:<40} {:>8} {:>10} {:>10} {:>10}",
            "FUSE DAEMON FUNCTION (MOUNT:HANDLER)", "OPS", "P50_US", "P99_US", "MAX_US"
        );
        for row in functions.iter().take(rows) {
            let _ = writeln!(
                out,
                "{:<40} {:>8} {:>10} {:>10} {:>10}",
                key(&row["name"], 40),
                number(&row["count"]),
                number(&row["p50_us"]),
                number(&row["p99_us"]),
                number(&row["max_us"])
            );
        }
    }
    let _ = writeln!(out, "\n{:<12} {:<60} {:<16} {:>10}", "SLOWEST", "FILE", "COMM", "US");
    for op in frame["slowest"].as_array().into_iter().flatten().take(rows) {
        let _ = writeln!(
            out,
            "{:<12} {:<60} {:<16} {:>10}",
            op["operation"].as_str().unwrap_or("?"),
            key(&op["path"], 60),
            op["comm"].as_str().unwrap_or("?"),
            number(&op["duration_us"])
        );
    }
    for anomaly in frame["anomalies"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "ANOMALY {} {} {}: {:.1} (baseline {:.1})",
            anomaly["dimension"].as_str().unwrap_or("?"),
            anomaly["name"].as_str().unwrap_or("?"),
            anomaly["key"].as_str().unwrap_or("?"),
            anomaly["observed"].as_f64().unwrap_or(0.0),
            anomaly["baseline"].as_f64().unwrap_or(0.0)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_screen_shows_cgroups_and_fuse_daemon_functions_when_there_are_some() {
        let row = |key: &str| serde_json::json!({ "key": key, "count": 7, "bytes": 10, "time_us": 3 });
        let mut frame = serde_json::json!({
            "wall_ms": 3_723_000,
            "top": { "path": [row("/w/hot")], "cgroup": [row("/system.slice/app.service")] },
            "daemon_functions": [{ "name": "57:WRITE", "count": 4, "p50_us": 20, "p99_us": 90, "max_us": 95 }],
        });
        let text = screen(&frame, 10);
        assert!(text.starts_with("vexevent top - 01:02:03 UTC"), "{text}");
        let cgroup = text.lines().find(|l| l.starts_with("/system.slice/app.service")).unwrap();
        assert_eq!(cgroup.split_whitespace().nth(1), Some("7"), "{text}");
        let function = text.lines().find(|l| l.starts_with("57:WRITE")).unwrap();
        assert_eq!(function.split_whitespace().collect::<Vec<_>>(), ["57:WRITE", "4", "20", "90", "95"]);
        frame["daemon_functions"] = serde_json::json!([]);
        assert!(!screen(&frame, 10).contains("FUSE DAEMON"), "no FUSE daemon seen: no table");
    }
}
