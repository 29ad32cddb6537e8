//! `VexFS`'s semantic event types with their numeric codes (`category << 8 | n`), flags and
//! priorities, kept identical to `VexFS` so its consumers can read our events unchanged.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! event_types {
    ($($variant:ident = $code:literal,)*) => {
        /// A `VexFS` semantic event type. Serialized as its variant name (e.g. `FilesystemCreate`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum EventType {
            $($variant,)*
        }

        impl EventType {
            /// Every type, in code order.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant,)*];

            /// `VexFS`'s numeric code.
            #[must_use]
            pub const fn code(self) -> u16 {
                match self {
                    $(EventType::$variant => $code,)*
                }
            }

            /// The variant name, as serialized.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $(EventType::$variant => stringify!($variant),)*
                }
            }
        }
    };
}

event_types! {
    FilesystemCreate = 0x0101,
    FilesystemDelete = 0x0102,
    FilesystemRead = 0x0103,
    FilesystemWrite = 0x0104,
    FilesystemRename = 0x0105,
    FilesystemChmod = 0x0106,
    FilesystemChown = 0x0107,
    FilesystemTruncate = 0x0108,
    FilesystemMkdir = 0x0109,
    FilesystemRmdir = 0x010A,
    FilesystemSymlink = 0x010B,
    FilesystemHardlink = 0x010C,
    GraphNodeCreate = 0x0201,
    GraphNodeDelete = 0x0202,
    GraphNodeUpdate = 0x0203,
    GraphEdgeCreate = 0x0204,
    GraphEdgeDelete = 0x0205,
    GraphEdgeUpdate = 0x0206,
    GraphPropertySet = 0x0207,
    GraphPropertyDelete = 0x0208,
    GraphTraverse = 0x0209,
    GraphQuery = 0x020A,
    VectorCreate = 0x0301,
    VectorDelete = 0x0302,
    VectorUpdate = 0x0303,
    VectorSearch = 0x0304,
    VectorIndex = 0x0305,
    VectorSimilarity = 0x0306,
    VectorCluster = 0x0307,
    VectorEmbed = 0x0308,
    SystemMount = 0x0501,
    SystemUnmount = 0x0502,
    SystemSync = 0x0503,
    SystemCheckpoint = 0x0504,
    SystemRecovery = 0x0505,
    SystemOptimization = 0x0506,
    ObservabilityMetricCollected = 0x0801,
    ObservabilityAlertTriggered = 0x0805,
    ObservabilityErrorReported = 0x0808,
    ObservabilityAuditEvent = 0x0809,
}

impl EventType {
    /// Looks a type up by its variant name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.name() == name)
    }

    /// Looks a type up by its numeric code.
    #[must_use]
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.code() == code)
    }

    /// `VexFS`'s category name (the code's high byte).
    #[must_use]
    pub const fn category(self) -> &'static str {
        match self.code() >> 8 {
            0x01 => "filesystem",
            0x02 => "graph",
            0x03 => "vector",
            0x04 => "agent",
            0x05 => "system",
            0x06 => "semantic",
            0x08 => "observability",
            _ => "other",
        }
    }
}

/// `VexFS` event flag bits.
pub mod flags {
    pub const ATOMIC: u32 = 0x01;
    pub const TRANSACTIONAL: u32 = 0x02;
    pub const CAUSAL: u32 = 0x04;
    pub const AGENT_VISIBLE: u32 = 0x08;
    pub const DETERMINISTIC: u32 = 0x10;
    pub const COMPRESSED: u32 = 0x20;
    pub const INDEXED: u32 = 0x40;
    pub const REPLICATED: u32 = 0x80;
    /// `VexFS`'s default: causal | agent-visible | deterministic | indexed.
    pub const DEFAULT: u32 = 0x5C;
}

/// `VexFS` event priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Critical = 1,
    High = 2,
    Normal = 3,
    Low = 4,
    Background = 5,
}

impl Serialize for Priority {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(*self as u8)
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match u8::deserialize(deserializer)? {
            1 => Priority::Critical,
            2 => Priority::High,
            3 => Priority::Normal,
            4 => Priority::Low,
            5 => Priority::Background,
            other => {
                return Err(serde::de::Error::custom(format!(
                    "priority {other} is not 1 (critical) to 5 (background)"
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_vexfs_taxonomy() {
        assert_eq!(EventType::FilesystemCreate.code(), 0x0101);
        assert_eq!(EventType::FilesystemHardlink.code(), 0x010C);
        assert_eq!(EventType::VectorSearch.code(), 0x0304);
        assert_eq!(EventType::SystemOptimization.code(), 0x0506);
        assert_eq!(EventType::ObservabilityErrorReported.code(), 0x0808);
        assert_eq!(
            flags::DEFAULT,
            flags::CAUSAL | flags::AGENT_VISIBLE | flags::DETERMINISTIC | flags::INDEXED
        );
    }

    #[test]
    fn names_and_codes_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::from_name(t.name()), Some(*t));
            assert_eq!(EventType::from_code(t.code()), Some(*t));
            assert_eq!(serde_json::to_string(t).unwrap(), format!("\"{}\"", t.name()));
        }
    }
}
