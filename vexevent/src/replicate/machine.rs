//! The state machine every member applies committed entries to: which batches of which run of
//! which node are applied (the dedup table), and the delivery of each applied batch's events to
//! this node's pipeline. A snapshot holds the table, not the events; it is kept on disk so a
//! restart does not replay what the log no longer holds.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Cursor,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, storage::RaftStateMachine,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};

use super::{
    Outcome, Proposal, RaftId, TypeConfig,
    codec::{CodecError, Decoder},
};
use crate::{
    event::{NodeId, SemanticEvent, flags},
    telemetry::{Counters, add},
};

const SNAPSHOT_MAGIC: &[u8; 8] = b"VXRAFTSN";
/// Version of the snapshot file and of its data; another version is refused.
const SNAPSHOT_VERSION: u32 = 1;
const SNAPSHOT_FILE: &str = "snapshot.bin";
const DELIVERED_FILE: &str = "delivered";

/// Events of one applied entry on their way to this node's pipeline.
pub struct Delivery {
    /// The entry's log index.
    pub index: u64,
    pub events: Vec<SemanticEvent>,
}

/// One run's place in the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// The last batch applied (batches are applied in order, from 1).
    pub batch: u64,
    /// Events applied.
    pub events: u64,
}

/// The dedup table: every run (node, run id) that proposed, with its last batch applied, and
/// the index of the entries not applied (repeats and refused batches: `vexevent log` skips them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub runs: BTreeMap<(String, u64), RunState>,
    /// Batches dropped as repeats.
    pub repeats: u64,
    pub dropped_entries: BTreeSet<u64>,
}

/// The log indexes of entries not applied, shared with the readers of the log.
pub type NotApplied = Arc<std::sync::Mutex<BTreeSet<u64>>>;

impl Applied {
    /// Applies `proposal` if it is its run's next batch.
    fn apply(&mut self, proposal: &Proposal) -> Outcome {
        let run = self.runs.entry((proposal.node.clone(), proposal.run)).or_default();
        if proposal.batch <= run.batch {
            self.repeats += 1;
            Outcome::Repeat
        } else if proposal.batch == run.batch + 1 {
            run.batch = proposal.batch;
            run.events += u64::from(proposal.count);
            Outcome::Applied
        } else {
            Outcome::Skips { expected: run.batch + 1 }
        }
    }
}

/// The persisted snapshot.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<RaftId, BasicNode>,
    data: Vec<u8>,
}

struct State {
    last_applied: Option<LogId<RaftId>>,
    membership: StoredMembership<RaftId, BasicNode>,
    applied: Applied,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

/// The state machine (clones share it).
#[derive(Clone)]
pub struct StateMachine {
    state: Arc<Mutex<State>>,
    dir: PathBuf,
    /// Entries up to this index were delivered before a restart: applied again silently.
    delivered_before: u64,
    deliver: mpsc::Sender<Delivery>,
    /// This node: events of other nodes are marked replicated.
    node: NodeId,
    /// Bytes of events applied since the last snapshot (the snapshot trigger reads it).
    pub since_snapshot: Arc<AtomicU64>,
    /// A copy of `Applied::dropped_entries` that readers take without waiting for an apply.
    pub not_applied: NotApplied,
    counters: Arc<Counters>,
}

/// Why the state machine cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("snapshot {path}: {message}; move it away to rejoin from the leader's")]
    Snapshot { path: PathBuf, message: String },
}

impl StateMachine {
    /// Opens the state machine in `dir`: from its snapshot, if there is one.
    ///
    /// # Errors
    /// A snapshot file that is damaged or of another version.
    pub fn open(
        dir: &Path,
        node: NodeId,
        deliver: mpsc::Sender<Delivery>,
        counters: Arc<Counters>,
    ) -> Result<Self, MachineError> {
        let path = dir.join(SNAPSHOT_FILE);
        let snapshot =
            read_snapshot(&path).map_err(|message| MachineError::Snapshot { path: path.clone(), message })?;
        let (last_applied, membership, applied) = match &snapshot {
            Some(stored) => (
                stored.meta.last_log_id,
                stored.meta.last_membership.clone(),
                decode_applied(&stored.data).map_err(|message| MachineError::Snapshot { path, message })?,
            ),
            None => (None, StoredMembership::default(), Applied::default()),
        };
        let not_applied = Arc::new(std::sync::Mutex::new(applied.dropped_entries.clone()));
        Ok(Self {
            not_applied,
            state: Arc::new(Mutex::new(State {
                last_applied,
                membership,
                applied,
                snapshot,
                snapshots_built: 0,
            })),
            dir: dir.to_owned(),
            delivered_before: read_delivered(dir),
            deliver,
            node,
            since_snapshot: Arc::new(AtomicU64::new(0)),
            counters,
        })
    }

    /// Decodes a batch's events; what does not decode is counted (and the rest of the batch with
    /// it: its encoding reads only in order).
    fn decode(&self, proposal: &Proposal) -> Vec<SemanticEvent> {
        let replicated = proposal.node != self.node.as_str();
        let (mut events, error) = decode_events(proposal);
        if let Some(error) = error {
            let lost = u64::from(proposal.count).saturating_sub(events.len() as u64).max(1);
            add(&self.counters.cluster_decode_errors, lost);
            tracing::warn!(%error, node = proposal.node, events = lost, "committed events do not decode; skipped");
        }
        if replicated {
            for event in &mut events {
                event.flags |= flags::REPLICATED;
            }
        }
        events
    }
}

/// The events of a batch, and why the rest did not decode (if it did not).
pub fn decode_events(proposal: &Proposal) -> (Vec<SemanticEvent>, Option<CodecError>) {
    let mut events = Vec::with_capacity(proposal.count as usize);
    let mut decoder = Decoder::new(&proposal.events);
    loop {
        match decoder.next_event() {
            Ok(Some(event)) => events.push(event),
            Ok(None) => return (events, None),
            Err(error) => return (events, Some(error)),
        }
    }
}

impl StateMachine {
    /// At start: the entries a snapshot covers that this node's pipeline had not been handed
    /// (the snapshot was built after the delivered mark was written), read from the log, to be
    /// delivered before anything newer. Entries the log no longer holds are counted
    /// (`cluster_snapshot_skipped`, as entries: their events are unknown).
    pub async fn behind_snapshot(&self, log: &super::LogStore) -> Vec<Delivery> {
        let Some(snapshot) = self.state.lock().await.last_applied.map(|l| l.index) else { return Vec::new() };
        if snapshot <= self.delivered_before {
            return Vec::new();
        }
        let from = self.delivered_before + 1;
        let entries = match log.read(from, snapshot) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(%error, from, snapshot, "cluster: entries behind the snapshot are not in the log; not delivered here");
                add(&self.counters.cluster_snapshot_skipped, snapshot - self.delivered_before);
                return Vec::new();
            }
        };
        let not_applied = lock(&self.not_applied).clone();
        entries
            .into_iter()
            .filter(|entry| !not_applied.contains(&entry.log_id.index))
            .filter_map(|entry| match entry.payload {
                EntryPayload::Normal(proposal) => {
                    Some(Delivery { index: entry.log_id.index, events: self.decode(&proposal) })
                }
                EntryPayload::Blank | EntryPayload::Membership(_) => None,
            })
            .collect()
    }
}

/// The delivered mark: the last log index this node's pipeline was handed (read at start).
#[must_use]
pub fn read_delivered(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(DELIVERED_FILE))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Writes the delivered mark (replaced whole: a crash leaves the old or the new one).
///
/// # Errors
/// When the file cannot be written.
pub fn write_delivered(dir: &Path, index: u64) -> std::io::Result<()> {
    let temporary = dir.join(format!("{DELIVERED_FILE}.tmp"));
    std::fs::write(&temporary, format!("{index}\n"))?;
    std::fs::rename(temporary, dir.join(DELIVERED_FILE))
}

fn decode_applied(data: &[u8]) -> Result<Applied, String> {
    postcard::from_bytes(data).map_err(|error| format!("its data does not decode ({error})"))
}

/// The snapshot file: magic, version, CRC-32 of the rest, then the postcard [`StoredSnapshot`].
fn read_snapshot(path: &Path) -> Result<Option<StoredSnapshot>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.to_string()),
    };
    if bytes.len() < 16 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err("not a vexevent snapshot".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if version != SNAPSHOT_VERSION {
        return Err(format!("version {version}, this vexevent reads {SNAPSHOT_VERSION}"));
    }
    if u32::from_le_bytes(bytes[12..16].try_into().unwrap_or_default()) != crc32fast::hash(&bytes[16..]) {
        return Err("checksum mismatch".into());
    }
    postcard::from_bytes(&bytes[16..]).map(Some).map_err(|error| format!("does not decode ({error})"))
}

/// Writes the snapshot file durably (a temporary file, fsync, rename, fsync of the directory).
fn write_snapshot(dir: &Path, snapshot: &StoredSnapshot) -> std::io::Result<()> {
    let body = postcard::to_allocvec(snapshot).map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(16 + body.len());
    bytes.extend_from_slice(SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    let temporary = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let file = std::fs::File::create(&temporary)?;
    std::io::Write::write_all(&mut &file, &bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(SNAPSHOT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

fn snapshot_error(error: &(impl std::error::Error + 'static)) -> StorageError<RaftId> {
    StorageIOError::write_snapshot(None, error).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<RaftId>> {
        let mut state = self.state.lock().await;
        let data = postcard::to_allocvec(&state.applied).map_err(|e| snapshot_error(&e))?;
        state.snapshots_built += 1;
        let snapshot_id = match state.last_applied {
            Some(last) => format!("{}-{}-{}", last.leader_id.term, last.index, state.snapshots_built),
            None => format!("--{}", state.snapshots_built),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        write_snapshot(&self.dir, &stored).map_err(|e| snapshot_error(&e))?;
        state.snapshot = Some(stored);
        self.since_snapshot.store(0, Ordering::Relaxed);
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<RaftId>>, StoredMembership<RaftId, BasicNode>), StorageError<RaftId>> {
        let state = self.state.lock().await;
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<RaftId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut state = self.state.lock().await;
        let mut outcomes = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Outcome::Other,
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Outcome::Other
                }
                EntryPayload::Normal(proposal) => {
                    let outcome = state.applied.apply(&proposal);
                    if matches!(outcome, Outcome::Repeat | Outcome::Skips { .. }) {
                        state.applied.dropped_entries.insert(entry.log_id.index);
                        lock(&self.not_applied).insert(entry.log_id.index);
                    }
                    match outcome {
                        Outcome::Applied => {
                            add(&self.counters.cluster_events_committed, u64::from(proposal.count));
                            self.since_snapshot.fetch_add(proposal.events.len() as u64, Ordering::Relaxed);
                            if entry.log_id.index > self.delivered_before {
                                let events = self.decode(&proposal);
                                // The pipeline is gone only at shutdown: nothing more to deliver.
                                let _ =
                                    self.deliver.send(Delivery { index: entry.log_id.index, events }).await;
                            }
                        }
                        Outcome::Repeat => add(&self.counters.cluster_repeats_dropped, 1),
                        Outcome::Skips { .. } | Outcome::Other => {}
                    }
                    outcome
                }
            };
            add_max(&self.counters.cluster_applied_index, entry.log_id.index);
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<RaftId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<RaftId>> {
        let data = snapshot.into_inner();
        let applied = decode_applied(&data).map_err(|message| {
            StorageIOError::read_snapshot(Some(meta.signature()), &std::io::Error::other(message))
        })?;
        let mut state = self.state.lock().await;
        // The events between what this node applied and the snapshot never reach its pipeline:
        // the log that held them is compacted on the leader. Counted, per the table.
        let skipped: u64 = applied
            .runs
            .iter()
            .map(|(key, run)| run.events.saturating_sub(state.applied.runs.get(key).map_or(0, |r| r.events)))
            .sum();
        add(&self.counters.cluster_snapshot_skipped, skipped);
        let stored = StoredSnapshot { meta: meta.clone(), data };
        write_snapshot(&self.dir, &stored).map_err(|e| snapshot_error(&e))?;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        lock(&self.not_applied).clone_from(&applied.dropped_entries);
        state.applied = applied;
        state.snapshot = Some(stored);
        self.since_snapshot.store(0, Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<RaftId>> {
        let state = self.state.lock().await;
        Ok(state.snapshot.as_ref().map(|stored| Snapshot {
            meta: stored.meta.clone(),
            snapshot: Box::new(Cursor::new(stored.data.clone())),
        }))
    }
}

fn lock(set: &NotApplied) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
    set.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Raises a gauge to `value` (never lowers it).
fn add_max(gauge: &AtomicU64, value: u64) {
    gauge.fetch_max(value, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal(batch: u64) -> Proposal {
        Proposal { node: "n1".into(), run: 9, batch, count: 2, events: bytes::Bytes::new() }
    }

    #[test]
    fn batches_apply_once_and_in_order() {
        let mut applied = Applied::default();
        assert_eq!(applied.apply(&proposal(1)), Outcome::Applied);
        assert_eq!(applied.apply(&proposal(3)), Outcome::Skips { expected: 2 }, "a skipped batch is refused");
        assert_eq!(applied.apply(&proposal(2)), Outcome::Applied);
        assert_eq!(applied.apply(&proposal(2)), Outcome::Repeat, "a retry of a committed batch is a repeat");
        assert_eq!(applied.apply(&proposal(3)), Outcome::Applied);
        let other_run = Proposal { run: 10, ..proposal(1) };
        assert_eq!(applied.apply(&other_run), Outcome::Applied, "each run counts its own batches");
        assert_eq!(applied.runs[&("n1".to_owned(), 9)], RunState { batch: 3, events: 6 });
        assert_eq!(applied.repeats, 1);
    }

    #[tokio::test]
    async fn entries_a_snapshot_covers_past_the_delivered_mark_are_delivered_from_the_log() {
        use openraft::CommittedLeaderId;
        let dir = tempfile::tempdir().unwrap();
        let run = crate::event::Run::new(NodeId::new("n1").unwrap());
        let log = super::super::LogStore::open(&dir.path().join("log")).unwrap();
        let entries: Vec<Entry<TypeConfig>> = (1..=5)
            .map(|index| {
                let mut encoder = super::super::codec::Encoder::default();
                let mut event =
                    SemanticEvent::own(&run, crate::event::EventType::FilesystemWrite, "write".into(), 0, 0);
                event.origin = run.origin(0, index);
                encoder.push(&event).unwrap();
                Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                    payload: EntryPayload::Normal(Proposal {
                        events: encoder.finish().into(),
                        count: 1,
                        ..proposal(index)
                    }),
                }
            })
            .collect();
        log.append_synced(&entries);
        let mut applied = Applied::default();
        for index in 1..=4 {
            applied.apply(&proposal(index));
        }
        let meta = SnapshotMeta {
            last_log_id: Some(entries[3].log_id),
            last_membership: StoredMembership::default(),
            snapshot_id: "1-4-1".into(),
        };
        write_snapshot(dir.path(), &StoredSnapshot { meta, data: postcard::to_allocvec(&applied).unwrap() })
            .unwrap();
        write_delivered(dir.path(), 2).unwrap();
        let (deliver, _deliveries) = mpsc::channel(4);
        let machine = StateMachine::open(
            dir.path(),
            NodeId::new("n1").unwrap(),
            deliver,
            Arc::new(Counters::default()),
        )
        .unwrap();
        let backlog = machine.behind_snapshot(&log).await;
        let delivered: Vec<(u64, u64)> =
            backlog.iter().map(|d| (d.index, d.events[0].origin.sequence)).collect();
        assert_eq!(delivered, vec![(3, 3), (4, 4)], "3 and 4 were in the snapshot but never handed on");
    }

    #[test]
    fn the_snapshot_file_round_trips_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut applied = Applied::default();
        applied.apply(&proposal(1));
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(2, 1), 40)),
                last_membership: StoredMembership::default(),
                snapshot_id: "2-40-1".into(),
            },
            data: postcard::to_allocvec(&applied).unwrap(),
        };
        write_snapshot(dir.path(), &stored).unwrap();
        let back = read_snapshot(&dir.path().join(SNAPSHOT_FILE)).unwrap().unwrap();
        assert_eq!(back.meta, stored.meta);
        assert_eq!(decode_applied(&back.data).unwrap(), applied);
        let path = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(read_snapshot(&path).err().as_deref(), Some("checksum mismatch"));
        write_delivered(dir.path(), 77).unwrap();
        assert_eq!(read_delivered(dir.path()), 77);
    }
}
