//! Where an event comes from ([`Origin`]): the node that captured it, the run of vexevent there,
//! and the kernel record it was translated from. Together they name the event uniquely across a
//! cluster and across restarts, and the name stays the same however often the event is delivered
//! again, so a receiver (`JetStream`'s duplicate window, a replicated log) can drop repeats.

use std::{
    fmt,
    hash::{BuildHasher, Hasher},
    sync::Arc,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::SerializeStruct};

/// Longest node id, in bytes.
pub const NODE_ID_MAX: usize = 64;

/// The node id used when the host name cannot be one.
pub const FALLBACK_NODE_ID: &str = "localhost";

/// `part` of an error companion (`ObservabilityErrorReported` derived from a failed operation).
pub const COMPANION_PART: u16 = 1;

/// The CPU in the origin of events vexevent makes itself (no CPU has this number).
pub const OWN_CPU: u32 = u32::MAX;

/// `part` of the first Graph event derived from a `VexFS` file operation (the next ones follow).
pub const GRAPH_PART: u16 = 2;

/// Why a node id is refused.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("node.id {id:?} must be 1 to {NODE_ID_MAX} letters, digits, '.', '_' or '-'")]
    InvalidNodeId { id: String },
}

/// `[node]`: this instance's identity in a cluster.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Stamped on every event's `origin`; absent: the host name.
    pub id: Option<String>,
}

impl NodeConfig {
    /// The configured node id, or the host name.
    ///
    /// # Errors
    /// A configured id that is empty, too long, or holds other characters than letters, digits,
    /// '.', '_' and '-'.
    pub fn node_id(&self) -> Result<NodeId, OriginError> {
        match &self.id {
            Some(id) => NodeId::new(id),
            None => Ok(NodeId::host()),
        }
    }
}

/// The name of a node: 1 to [`NODE_ID_MAX`] ASCII letters, digits, '.', '_' or '-' (so it is a
/// valid header value and never holds the ':' that separates the parts of an [`Origin`] id).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeId(Arc<str>);

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl NodeId {
    /// # Errors
    /// An id that is empty, too long or holds other characters.
    pub fn new(id: &str) -> Result<Self, OriginError> {
        let valid = (1..=NODE_ID_MAX).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid { Ok(Self(id.into())) } else { Err(OriginError::InvalidNodeId { id: id.to_owned() }) }
    }

    /// The host name, or [`FALLBACK_NODE_ID`] when it cannot be read or is not a valid id.
    #[must_use]
    pub fn host() -> Self {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .and_then(|name| Self::new(name.trim_end()).ok())
            .unwrap_or_else(|| Self(FALLBACK_NODE_ID.into()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One run of vexevent on a node: kernel sequence numbers start again with each run, so the run
/// is part of every event's identity. Its id is 64 random bits, new at each start. Cloned into
/// every event's origin (one reference count).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run(Arc<RunName>);

#[derive(Debug, PartialEq, Eq)]
struct RunName {
    node: NodeId,
    id: u64,
    /// `node:id`, the id in 16 hex digits: how every origin id of the run starts.
    prefix: Box<str>,
}

impl Run {
    /// A new run of `node`, with a fresh random id.
    #[must_use]
    pub fn new(node: NodeId) -> Self {
        // The standard library seeds each `RandomState` from the operating system's random source.
        let mut hasher = std::hash::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u64(crate::telemetry::monotonic_ns());
        Self::with_id(node, hasher.finish())
    }

    /// The run `id` of `node` (an event read back names its run).
    fn with_id(node: NodeId, id: u64) -> Self {
        let prefix = format!("{node}:{id:016x}").into_boxed_str();
        Self(Arc::new(RunName { node, id, prefix }))
    }

    #[must_use]
    pub fn node(&self) -> &NodeId {
        &self.0.node
    }

    /// The run's random id.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The id in 16 hex digits.
    fn hex(&self) -> &str {
        &self.0.prefix[self.0.node.as_str().len() + 1..]
    }

    /// The origin of the event a kernel record (or a gap report) of `cpu` with sequence number
    /// `sequence` becomes.
    #[must_use]
    pub fn origin(&self, cpu: u32, sequence: u64) -> Origin {
        Origin { run: self.clone(), cpu, sequence, part: 0 }
    }

    /// The origin of an event vexevent makes itself (a window, an anomaly, a health alert), from
    /// no kernel record: the pseudo-CPU [`OWN_CPU`] and the event's id, unique in the run.
    #[must_use]
    pub fn own(&self, event_id: u64) -> Origin {
        Origin { run: self.clone(), cpu: OWN_CPU, sequence: event_id, part: 0 }
    }
}

/// Where one event comes from. Serialized as `{"node", "run", "part", "id"}` (the CPU and
/// sequence are the event's `timestamp.cpu` and `local_sequence`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The node and the run that captured it.
    pub run: Run,
    /// The kernel record's CPU (shard) and sequence number there; on a gap report, the first
    /// sequence number lost.
    pub cpu: u32,
    pub sequence: u64,
    /// Which of the events of one record: 0 the record's own event (or the gap report),
    /// [`COMPANION_PART`] its error companion, [`GRAPH_PART`] and up its Graph events.
    pub part: u16,
}

/// Longest origin id: node, run, CPU, sequence and part with their separators.
const ID_MAX: usize = NODE_ID_MAX + 1 + 16 + 1 + 10 + 1 + 20 + 1 + 5;

/// An origin id, built on the stack (serialized with every event: no allocation, no formatter).
struct IdBuf {
    bytes: [u8; ID_MAX],
    len: usize,
}

impl IdBuf {
    fn push(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn push_number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[start..]);
    }

    fn as_str(&self) -> &str {
        // Only ASCII was pushed: a node id, hex digits, decimal digits and ':'.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl Origin {
    /// `node:run:cpu:sequence:part` (the run in 16 hex digits): unique per event, the same for
    /// every delivery of it.
    #[must_use]
    pub fn id(&self) -> String {
        self.id_buf().as_str().to_owned()
    }

    fn id_buf(&self) -> IdBuf {
        let mut id = IdBuf { bytes: [0; ID_MAX], len: 0 };
        id.push(self.run.0.prefix.as_bytes());
        id.push(b":");
        id.push_number(u64::from(self.cpu));
        id.push(b":");
        id.push_number(self.sequence);
        id.push(b":");
        id.push_number(u64::from(self.part));
        id
    }
}

impl Origin {
    /// The node, the run in hex and the id's `node:run` prefix: the texts of its serialized
    /// form (plain ASCII: letters, digits, `.`, `_`, `-`, `:`; nothing to escape in JSON).
    #[must_use]
    pub fn texts(&self) -> (&str, &str, &str) {
        (self.run.node().as_str(), self.run.hex(), &self.run.0.prefix)
    }

    /// Reads an origin back from its id, `node:run:cpu:sequence:part`.
    fn parse(id: &str) -> Option<Self> {
        let mut fields = id.split(':');
        let mut next = || fields.next();
        let (node, run, cpu, sequence, part) = (next()?, next()?, next()?, next()?, next()?);
        if next().is_some() || run.len() != 16 {
            return None;
        }
        let run = Run::with_id(NodeId::new(node).ok()?, u64::from_str_radix(run, 16).ok()?);
        Some(Self { run, cpu: cpu.parse().ok()?, sequence: sequence.parse().ok()?, part: part.parse().ok()? })
    }
}

impl<'de> Deserialize<'de> for Origin {
    /// From its `id`, which holds every part (`node`, `run` and `part` repeat parts of it).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            id: String,
        }
        let Fields { id } = Fields::deserialize(deserializer)?;
        Self::parse(&id).ok_or_else(|| {
            serde::de::Error::custom(format!("origin id {id:?} is not node:run:cpu:sequence:part"))
        })
    }
}

impl Serialize for Origin {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut origin = serializer.serialize_struct("Origin", 4)?;
        origin.serialize_field("node", self.run.node())?;
        origin.serialize_field("run", self.run.hex())?;
        origin.serialize_field("part", &self.part)?;
        origin.serialize_field("id", self.id_buf().as_str())?;
        origin.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked() {
        assert_eq!(NodeId::new("edge-01.dc_2").unwrap().as_str(), "edge-01.dc_2");
        for bad in ["", "a:b", "a b", "é", &"x".repeat(NODE_ID_MAX + 1)] {
            assert!(NodeId::new(bad).is_err(), "{bad:?} accepted");
        }
        let host = NodeId::host();
        assert!(NodeId::new(host.as_str()).is_ok());
        assert_eq!(NodeConfig::default().node_id().unwrap(), host);
        assert!(NodeConfig { id: Some("a/b".into()) }.node_id().is_err());
    }

    #[test]
    fn runs_differ_and_the_id_names_every_part() {
        let node = NodeId::new("n1").unwrap();
        let (a, b) = (Run::new(node.clone()), Run::new(node));
        assert_ne!(a.id(), b.id(), "two runs share an id");
        let mut origin = a.origin(3, 1042);
        origin.part = COMPANION_PART;
        assert_eq!(origin.id(), format!("n1:{:016x}:3:1042:1", a.id()));
        let json: serde_json::Value = serde_json::to_value(&origin).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"node": "n1", "run": format!("{:016x}", a.id()), "part": 1, "id": origin.id()})
        );
        let longest = Run::new(NodeId::new(&"x".repeat(NODE_ID_MAX)).unwrap());
        let mut origin = longest.origin(u32::MAX, u64::MAX);
        origin.part = u16::MAX;
        assert_eq!(origin.id().len(), ID_MAX);
        assert_eq!(Run::new(NodeId::new("n").unwrap()).origin(0, 0).id().split(':').nth(2), Some("0"));
    }
}
