//! `[cluster]`: this instance's place in a replicated cluster (its raft id, where it listens,
//! every member, where its log lives, the consistency mode, the shared secret peers prove), and
//! the checks that turn it into [`ClusterSettings`].

use std::{
    collections::BTreeMap,
    fmt,
    io::Read as _,
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

use super::tls::{PeerTls, PeerTlsError, PeerTlsFiles};

/// Fewest bytes a shared secret may have (128 bits).
pub const SECRET_MIN_BYTES: usize = 16;
/// Most bytes read from a secret file (a secret is a line of random text).
pub const SECRET_MAX_BYTES: usize = 4096;
/// Most events one log entry may hold: larger entries made the probe's p99 commit latency jump
/// to seconds (shared/notes/openraft.md).
pub const ENTRY_EVENTS_MAX: usize = 65_536;
/// Fewest bytes `min_free_bytes` may keep free: more than the largest append a member takes at once.
pub const MIN_FREE_BYTES_MIN: u64 = 1 << 20;

/// What the events a member delivers promise (README, "Cluster": what each mode promises).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// An event is delivered (on every node) only once a majority has it on disk, in commit order.
    #[default]
    Strong,
    /// As `strong`; a reader carries a session (the last log index it saw) to another member,
    /// which answers only once it applied that index (or refuses after a bounded wait).
    Session,
    /// Every event carries a hybrid logical clock stamped here; members deliver the committed
    /// events in clock order, holding them `causal_delay_ms` to sort them.
    Causal,
    /// A member delivers its own events at once, without waiting for the commit; other members'
    /// events as they commit.
    Eventual,
}

/// `[cluster]` as written.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This member's raft id (1 or more); a key of `peers`.
    pub node_id: u64,
    /// Address the peer protocol listens on (loopback or a private network).
    pub listen: SocketAddr,
    /// The members this one forms the cluster with, itself included: raft id (a TOML key, "1") =
    /// the address this member dials for it (before the cluster's membership knows it, and
    /// instead of the address the membership holds). With `join`, only addresses to dial.
    #[serde(default)]
    pub peers: BTreeMap<String, SocketAddr>,
    /// This member does not form a cluster: it waits to be added to a running one (`vexevent
    /// cluster add`) and learns the members from it.
    #[serde(default)]
    pub join: bool,
    /// Directory of the replicated log, the snapshot and the delivered mark (created if absent).
    pub data_dir: PathBuf,
    #[serde(default)]
    pub consistency: Consistency,
    /// File holding the secret every member shares (at least 16 bytes, readable by its owner only).
    pub secret_file: PathBuf,
    /// Events captured here and not yet committed that may wait (for a leader); more are dropped
    /// and counted (`cluster_dropped_buffer_full`).
    #[serde(default = "default_buffer_events")]
    pub buffer_events: usize,
    /// Most events in one log entry (batches adapt below it; at most 2 are in flight).
    #[serde(default = "default_entry_events")]
    pub entry_events: usize,
    /// Bytes of log applied between two snapshots (the snapshot holds the dedup table, not the
    /// events; the log before it is then purged down to `keep_entries`).
    #[serde(default = "default_snapshot_bytes")]
    pub snapshot_bytes: u64,
    /// Entries kept behind a snapshot (for `vexevent log --from` and slow followers).
    #[serde(default = "default_keep_entries")]
    pub keep_entries: u64,
    /// Leader heartbeat interval, in milliseconds.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in [min, max] ms starts an election.
    #[serde(default = "default_election_ms")]
    pub election_timeout_ms: [u64; 2],
    /// `causal` mode: how long committed events are held here to be delivered in clock order.
    #[serde(default = "default_causal_delay_ms")]
    pub causal_delay_ms: u64,
    /// Mutual TLS between members (certificate, key, cluster CA); absent: plain TCP, allowed on
    /// loopback only unless `plaintext_off_loopback`.
    #[serde(default)]
    pub tls: Option<PeerTlsFiles>,
    /// Lets members talk plain TCP on addresses that are not loopback (a private network).
    #[serde(default)]
    pub plaintext_off_loopback: bool,
    /// Bytes the file system of `data_dir` keeps free: under it, this member stops proposing,
    /// takes no new entries and does not lead, until space is freed.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
}

const fn default_buffer_events() -> usize {
    100_000
}
const fn default_entry_events() -> usize {
    8_192
}
const fn default_snapshot_bytes() -> u64 {
    64 << 20
}
const fn default_keep_entries() -> u64 {
    1_024
}
// Heartbeat 20 ms and an election timeout of 60-120 ms elected a new leader in ~0.2 s in the
// probe here (default timers: ~0.5 s); slack for a loaded 2-core machine, where an fsync of
// the vote can take long enough to make tighter elections fail over and over.
const fn default_heartbeat_ms() -> u64 {
    50
}
const fn default_election_ms() -> [u64; 2] {
    [300, 600]
}
const fn default_min_free_bytes() -> u64 {
    64 << 20
}
// 100 ms left up to a quarter of the events late under load in the root test here; 500 ms a
// few in a thousand (README, "Cluster").
const fn default_causal_delay_ms() -> u64 {
    500
}

/// What is wrong with `[cluster]`.
#[derive(Debug, thiserror::Error)]
pub enum ClusterConfigError {
    #[error("cluster.node_id must be at least 1")]
    NodeIdZero,
    #[error("cluster.peers: {key:?} is not a raft id (a number of 1 or more)")]
    PeerId { key: String },
    #[error(
        "cluster.peers has no entry for this node (cluster.node_id = {node_id}); list every member, or set cluster.join = true to wait to be added to a running cluster"
    )]
    SelfMissing { node_id: u64 },
    #[error("cluster.secret_file {path}: {message}")]
    Secret { path: PathBuf, message: String },
    #[error("cluster.data_dir {path} exists and is not a directory")]
    DataDir { path: PathBuf },
    #[error("cluster.{field} = {value} must be between {min} and {max}")]
    Range { field: &'static str, value: u64, min: u64, max: u64 },
    #[error(transparent)]
    Tls(#[from] PeerTlsError),
    #[error(
        "cluster: {addr} is not loopback and peer traffic would be plain TCP; give [cluster.tls] cert, key and ca, or set cluster.plaintext_off_loopback = true (a private network)"
    )]
    Plaintext { addr: SocketAddr },
    #[error(
        "cluster timers: heartbeat_ms ({heartbeat}) < election_timeout_ms[0] ({min}) < election_timeout_ms[1] ({max}) must hold"
    )]
    Timers { heartbeat: u64, min: u64, max: u64 },
}

/// The shared secret (never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) Arc<[u8]>);

impl Secret {
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// `[cluster]`, checked.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub node_id: u64,
    pub listen: SocketAddr,
    /// The configured members by raft id (`peers`): the first members when this node forms the
    /// cluster, and the address it dials for each.
    pub members: BTreeMap<u64, SocketAddr>,
    /// Wait to be added instead of forming the cluster.
    pub join: bool,
    pub data_dir: PathBuf,
    pub consistency: Consistency,
    pub secret: Secret,
    pub buffer_events: usize,
    pub entry_events: usize,
    pub snapshot_bytes: u64,
    pub keep_entries: u64,
    pub heartbeat: Duration,
    pub election_timeout: [Duration; 2],
    pub causal_delay: Duration,
    /// Mutual TLS between members (`None`: plain TCP).
    pub tls: Option<PeerTls>,
    pub min_free_bytes: u64,
}

impl ClusterConfig {
    /// Every problem, in field order.
    #[must_use]
    pub fn problems(&self) -> Vec<ClusterConfigError> {
        self.check().err().unwrap_or_default()
    }

    /// The checked settings (the secret read).
    ///
    /// # Errors
    /// The first problem.
    ///
    /// # Panics
    /// Never: a section that does not check has at least one problem.
    pub fn settings(&self) -> Result<ClusterSettings, ClusterConfigError> {
        self.check().map_err(|problems| problems.into_iter().next().expect("at least one problem"))
    }

    fn check(&self) -> Result<ClusterSettings, Vec<ClusterConfigError>> {
        let mut problems = Vec::new();
        if self.node_id == 0 {
            problems.push(ClusterConfigError::NodeIdZero);
        }
        let mut members = BTreeMap::new();
        for (key, addr) in &self.peers {
            match key.parse::<u64>() {
                Ok(id) if id > 0 => {
                    members.insert(id, *addr);
                }
                _ => problems.push(ClusterConfigError::PeerId { key: key.clone() }),
            }
        }
        if self.node_id > 0 && !self.join && !members.contains_key(&self.node_id) {
            problems.push(ClusterConfigError::SelfMissing { node_id: self.node_id });
        }
        let secret = read_secret(&self.secret_file).map_err(|message| problems.push(message)).ok();
        if self.data_dir.exists() && !self.data_dir.is_dir() {
            problems.push(ClusterConfigError::DataDir { path: self.data_dir.clone() });
        }
        let mut range = |field, value: u64, min, max| {
            if !(min..=max).contains(&value) {
                problems.push(ClusterConfigError::Range { field, value, min, max });
            }
        };
        range("entry_events", self.entry_events as u64, 1, ENTRY_EVENTS_MAX as u64);
        range("buffer_events", self.buffer_events as u64, self.entry_events as u64, 1 << 30);
        range("snapshot_bytes", self.snapshot_bytes, 1 << 20, 1 << 40);
        range("keep_entries", self.keep_entries, 0, 1 << 20);
        range("causal_delay_ms", self.causal_delay_ms, 0, 10_000);
        range("min_free_bytes", self.min_free_bytes, MIN_FREE_BYTES_MIN, 1 << 40);
        let dialed = members.get(&self.node_id).copied().unwrap_or(self.listen);
        let tls = if let Some(files) = &self.tls {
            PeerTls::load(files, dialed.ip()).map(Some).map_err(|e| problems.push(e.into()))
        } else {
            if !self.plaintext_off_loopback {
                let addrs = std::iter::once(self.listen).chain(self.peers.values().copied());
                if let Some(addr) = addrs.into_iter().find(|addr| !addr.ip().is_loopback()) {
                    problems.push(ClusterConfigError::Plaintext { addr });
                }
            }
            Ok(None)
        };
        let [min, max] = self.election_timeout_ms;
        if !(self.heartbeat_ms > 0 && self.heartbeat_ms < min && min < max) {
            problems.push(ClusterConfigError::Timers { heartbeat: self.heartbeat_ms, min, max });
        }
        match (secret, tls) {
            (Some(secret), Ok(tls)) if problems.is_empty() => Ok(ClusterSettings {
                node_id: self.node_id,
                listen: self.listen,
                members,
                join: self.join,
                data_dir: self.data_dir.clone(),
                consistency: self.consistency,
                secret,
                buffer_events: self.buffer_events,
                entry_events: self.entry_events,
                snapshot_bytes: self.snapshot_bytes,
                keep_entries: self.keep_entries,
                heartbeat: Duration::from_millis(self.heartbeat_ms),
                election_timeout: [Duration::from_millis(min), Duration::from_millis(max)],
                causal_delay: Duration::from_millis(self.causal_delay_ms),
                tls,
                min_free_bytes: self.min_free_bytes,
            }),
            _ => Err(problems),
        }
    }
}

/// Reads the shared secret: trailing white space is not part of it; the file must be readable
/// by its owner only (a secret others can read proves nothing).
fn read_secret(path: &Path) -> Result<Secret, ClusterConfigError> {
    let refuse = |message: String| ClusterConfigError::Secret { path: path.to_owned(), message };
    let file = std::fs::File::open(path).map_err(|error| refuse(format!("cannot open it ({error})")))?;
    let mode = file.metadata().map_err(|error| refuse(error.to_string()))?.mode();
    if mode & 0o077 != 0 {
        return Err(refuse(format!("mode {:o} lets others read it; chmod 600 it", mode & 0o777)));
    }
    let mut bytes = Vec::new();
    file.take(SECRET_MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| refuse(error.to_string()))?;
    if bytes.len() > SECRET_MAX_BYTES {
        return Err(refuse(format!("longer than {SECRET_MAX_BYTES} bytes; a secret is one line")));
    }
    let len = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |last| last + 1);
    bytes.truncate(len);
    if bytes.len() < SECRET_MIN_BYTES {
        return Err(refuse(format!(
            "holds {} bytes; at least {SECRET_MIN_BYTES} are needed (e.g. `head -c 32 /dev/urandom | base64`)",
            bytes.len()
        )));
    }
    Ok(Secret(bytes.into()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn secret_file(dir: &Path, content: &str, mode: u32) -> PathBuf {
        let path = dir.join("secret");
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn config(secret: &Path, data_dir: &Path) -> String {
        format!(
            "node_id = 2\nlisten = \"127.0.0.1:7402\"\ndata_dir = {data_dir:?}\nsecret_file = {secret:?}\n\
             [peers]\n1 = \"127.0.0.1:7401\"\n2 = \"127.0.0.1:7402\"\n3 = \"127.0.0.1:7403\"\n"
        )
    }

    #[test]
    fn a_valid_section_gives_every_member_and_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret = secret_file(dir.path(), "0123456789abcdef0123\n", 0o600);
        let parsed: ClusterConfig = toml::from_str(&config(&secret, &dir.path().join("raft"))).unwrap();
        let settings = parsed.settings().unwrap();
        assert_eq!(settings.node_id, 2);
        assert_eq!(settings.members.len(), 3);
        assert_eq!(settings.members[&3], "127.0.0.1:7403".parse().unwrap());
        assert_eq!(settings.secret.bytes(), b"0123456789abcdef0123", "the newline is not part of it");
        assert_eq!(settings.consistency, Consistency::Strong);
        assert_eq!(settings.entry_events, 8_192);
        assert_eq!(settings.causal_delay, Duration::from_millis(500));
        assert!(!format!("{settings:?}").contains("0123456789"), "the secret is never printed");
    }

    #[test]
    fn every_problem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let secret = secret_file(dir.path(), "short", 0o644);
        let text = config(&secret, &secret).replace("node_id = 2", "node_id = 7").replace("1 = ", "x = ");
        let mut parsed: ClusterConfig = toml::from_str(&text).unwrap();
        parsed.entry_events = 0;
        parsed.heartbeat_ms = 500;
        let problems: Vec<String> = parsed.problems().iter().map(ToString::to_string).collect();
        assert!(problems.iter().any(|p| p.contains("\"x\" is not a raft id")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("no entry for this node (cluster.node_id = 7)")));
        assert!(problems.iter().any(|p| p.contains("lets others read it")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("is not a directory")));
        assert!(problems.iter().any(|p| p.contains("entry_events = 0")));
        assert!(problems.iter().any(|p| p.contains("heartbeat_ms (500)")));
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(read_secret(&secret).unwrap_err().to_string().contains("holds 5 bytes"));
    }

    #[test]
    fn every_mode_is_accepted_and_unknown_fields_and_modes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = secret_file(dir.path(), "0123456789abcdef", 0o600);
        let base = config(&secret, dir.path());
        for (name, mode) in [
            ("strong", Consistency::Strong),
            ("session", Consistency::Session),
            ("causal", Consistency::Causal),
            ("eventual", Consistency::Eventual),
        ] {
            let parsed: ClusterConfig = toml::from_str(&format!("consistency = \"{name}\"\n{base}")).unwrap();
            assert_eq!(parsed.settings().unwrap().consistency, mode);
        }
        assert!(toml::from_str::<ClusterConfig>(&format!("consistency = \"linear\"\n{base}")).is_err());
        assert!(toml::from_str::<ClusterConfig>(&format!("leader = 1\n{base}")).is_err());
        let joining = format!(
            "node_id = 4\nlisten = \"127.0.0.1:7404\"\ndata_dir = {:?}\nsecret_file = {secret:?}\njoin = true\n",
            dir.path()
        );
        let parsed: ClusterConfig = toml::from_str(&joining).unwrap();
        let settings = parsed.settings().unwrap();
        assert!(settings.join && settings.members.is_empty(), "a joining member needs no peers");
        let parsed: ClusterConfig = toml::from_str(&joining.replace("join = true", "join = false")).unwrap();
        assert!(parsed.problems().iter().any(|p| p.to_string().contains("cluster.join = true")));
        let slow: ClusterConfig = toml::from_str(&format!("causal_delay_ms = 60000\n{base}")).unwrap();
        assert!(slow.problems().iter().any(|p| p.to_string().contains("causal_delay_ms = 60000")));
    }

    #[test]
    fn plain_tcp_off_loopback_is_refused_unless_allowed_and_tls_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let secret = secret_file(dir.path(), "0123456789abcdef", 0o600);
        let remote = config(&secret, dir.path()).replace("3 = \"127.0.0.1:7403\"", "3 = \"10.0.0.3:7403\"");
        let parsed: ClusterConfig = toml::from_str(&remote).unwrap();
        let problems: Vec<String> = parsed.problems().iter().map(ToString::to_string).collect();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("10.0.0.3:7403 is not loopback") && p.contains("[cluster.tls]")),
            "{problems:?}"
        );
        let allowed: ClusterConfig =
            toml::from_str(&format!("plaintext_off_loopback = true\n{remote}")).unwrap();
        assert!(allowed.settings().unwrap().tls.is_none());

        let ca = super::super::tls::testing::Ca::new("cluster CA");
        let files = ca.member(dir.path(), "n2", "127.0.0.1", None);
        let with_tls =
            format!("{remote}[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n", files.cert, files.key, files.ca);
        let parsed: ClusterConfig = toml::from_str(&with_tls).unwrap();
        assert!(parsed.settings().unwrap().tls.is_some(), "TLS off loopback needs no permission");
        std::fs::remove_file(&files.ca).unwrap();
        let problems: Vec<String> = parsed.problems().iter().map(ToString::to_string).collect();
        assert!(problems.iter().any(|p| p.starts_with("cluster.tls: cannot read")), "{problems:?}");
        let small: ClusterConfig = toml::from_str(&format!("min_free_bytes = 1000\n{remote}")).unwrap();
        assert!(small.problems().iter().any(|p| p.to_string().contains("min_free_bytes = 1000")));
    }
}
