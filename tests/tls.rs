//! TLS for the stream and the control API off loopback: plain HTTP on a non-loopback address is
//! refused at start unless explicitly allowed; with a certificate and key (a self-signed one
//! generated here with rcgen) both servers speak only TLS. The root test runs vexevent in a
//! network namespace of its own whose only address besides loopback is 10.200.0.1, and talks
//! to it with curl inside that namespace, and with `vexevent reload` and `vexevent tail` given
//! `--tls-ca`.

mod support;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use support::{Vexevent, exclusive_root_test};

/// The namespace's address: not loopback (127.0.0.0/8), so the off-loopback rules apply.
const ADDRESS: &str = "10.200.0.1";
const TOKEN: &str = "a-token-for-remote-clients-0123456789";

/// Runs `vexevent check-config` on `toml`.
fn check_config(dir: &Path, toml: &str) -> Output {
    let file = dir.join("check.toml");
    std::fs::write(&file, toml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_vexevent")).arg("check-config").arg(&file).output().unwrap()
}

#[test]
fn plain_http_off_loopback_is_refused_unless_allowed_or_given_tls() {
    let dir = tempfile::tempdir().unwrap();
    for section in ["stream", "control"] {
        let base = format!("[{section}]\naddr = \"{ADDRESS}:7000\"\ntoken = \"{TOKEN}\"\n");
        let refused = check_config(dir.path(), &base);
        let text =
            String::from_utf8_lossy(&refused.stdout).into_owned() + &String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{text}");
        assert!(text.contains("plain HTTP") && text.contains(&format!("[{section}.tls]")), "{text}");
        let allowed = check_config(dir.path(), &format!("{base}plaintext_off_loopback = true\n"));
        assert!(allowed.status.success(), "{}", String::from_utf8_lossy(&allowed.stderr));
        let with_tls = check_config(
            dir.path(),
            &format!("{base}[{section}.tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n"),
        );
        assert!(with_tls.status.success(), "{}", String::from_utf8_lossy(&with_tls.stderr));
    }
    // Loopback needs neither.
    let loopback = check_config(dir.path(), "[stream]\naddr = \"127.0.0.2:7000\"\n");
    assert!(loopback.status.success(), "{}", String::from_utf8_lossy(&loopback.stderr));
}

/// A self-signed certificate for `ADDRESS`, and its key (mode 0600): (cert, key).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec![ADDRESS.to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (cert, key)
}

/// curl inside the network namespace of process `pid`.
fn curl_in(pid: u32, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["curl", "--silent", "--show-error", "--max-time", "5"])
        .args(args)
        .output()
        .unwrap()
}

/// `vexevent reload` and `vexevent tail` inside the namespace of `pid`, given `--tls-ca`:
/// reload through the control API, tail the stream until a file written in `watched` shows.
fn commands_speak_tls_with_the_certificate(
    pid: u32,
    control: &str,
    stream: &str,
    cacert: &str,
    watched: &Path,
) {
    let vexevent_in = |args: &[&str]| {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/proc/{pid}/ns/net")).arg(env!("CARGO_BIN_EXE_vexevent")).args(args);
        command
    };
    let reload = vexevent_in(&["reload", "--control-addr", control, "--token", TOKEN, "--tls-ca", cacert])
        .output()
        .unwrap();
    assert!(reload.status.success(), "{}", String::from_utf8_lossy(&reload.stderr));
    let untrusted = vexevent_in(&["reload", "--control-addr", control, "--token", TOKEN]).output().unwrap();
    assert!(!untrusted.status.success(), "plain HTTP to a TLS server must fail");
    let mut tail = vexevent_in(&["tail", "--addr", stream, "--token", TOKEN, "--tls-ca", cacert, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let marker = watched.join("over-tls");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let seen = loop {
        // Written until tail, which connects on its own time, has seen it.
        std::fs::write(&marker, b"x").unwrap();
        match lines_rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(line) if line.contains("over-tls") => break true,
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break false,
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
    };
    tail.kill().unwrap();
    let tail = tail.wait_with_output().unwrap();
    assert!(
        seen,
        "vexevent tail --tls-ca never printed the event: {}",
        String::from_utf8_lossy(&tail.stderr)
    );
}

#[test]
fn both_servers_speak_only_tls_off_loopback_with_the_configured_certificate() {
    let Some(_serial) =
        exclusive_root_test("both_servers_speak_only_tls_off_loopback_with_the_configured_certificate")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let config = dir.path().join("vexevent.toml");
    let tls = format!("cert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display());
    std::fs::write(
        &config,
        format!(
            "[stream]\naddr = \"{ADDRESS}:0\"\ntoken = \"{TOKEN}\"\n[stream.tls]\n{tls}\
             [control]\naddr = \"{ADDRESS}:0\"\ntoken = \"{TOKEN}\"\n[control.tls]\n{tls}"
        ),
    )
    .unwrap();
    let watched = tempfile::tempdir().unwrap();
    // A network namespace of its own, with loopback up and ADDRESS on it (no sysfs remount, so
    // tracefs stays where it is).
    let namespace = format!("ip link set lo up && ip addr add {ADDRESS}/32 dev lo && exec \"$@\"");
    let vexevent = Vexevent::start_under(
        &["unshare", "--net", "sh", "-c", &namespace, "sh"],
        &[watched.path()],
        &["--config", config.to_str().unwrap()],
    );
    let stream = vexevent.served_address("wss://");
    let control = vexevent.served_address("https://");
    let pid = vexevent.pid();
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let cacert = cert.to_str().unwrap();

    // The control API over HTTPS, verified against the certificate.
    let stats = curl_in(
        pid,
        &["--cacert", cacert, "-H", &bearer, &format!("https://{control}/api/v1/control/stats")],
    );
    let body = String::from_utf8_lossy(&stats.stdout);
    assert!(
        stats.status.success() && body.contains("\"kernel\""),
        "{body} {}",
        String::from_utf8_lossy(&stats.stderr)
    );
    // The stream upgrades to a WebSocket over TLS.
    let upgrade = curl_in(
        pid,
        &[
            "--http1.1",
            "--include",
            "--cacert",
            cacert,
            "-H",
            &bearer,
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            &format!("https://{stream}/api/v1/semantic/events/stream"),
        ],
    );
    let head = String::from_utf8_lossy(&upgrade.stdout);
    assert!(head.starts_with("HTTP/1.1 101"), "{head} {}", String::from_utf8_lossy(&upgrade.stderr));
    // Plain HTTP gets no answer, and a client that does not trust the certificate stops.
    for server in [&control, &stream] {
        let plain = curl_in(pid, &["-H", &bearer, &format!("http://{server}/api/v1/control/stats")]);
        assert!(
            !plain.status.success() && plain.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&plain.stdout)
        );
        let untrusted = curl_in(pid, &["-H", &bearer, &format!("https://{server}/api/v1/control/stats")]);
        let why = String::from_utf8_lossy(&untrusted.stderr);
        assert!(!untrusted.status.success() && why.contains("certificate"), "{why}");
    }
    commands_speak_tls_with_the_certificate(pid, &control, &stream, cacert, watched.path());
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    assert!(finished.stats["userspace"]["http_accepted"].as_u64().unwrap() >= 2, "{}", finished.stats);
    // Plain HTTP to each server, an untrusting curl to each and a plain `reload`: five failed.
    assert!(finished.stats["userspace"]["http_tls_failed"].as_u64().unwrap() >= 5, "{}", finished.stats);
}
