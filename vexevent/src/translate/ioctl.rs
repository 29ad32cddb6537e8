//! `VexFS` vector ioctls (magic 'V'): which semantic event each one is and the fields of its user
//! struct (byte offsets from design/vexfs.md). Decoded on (type, nr) rather than the full command:
//! kernel and userspace struct sizes differ for nr 22-26.

use vexevent_common::VEXFS_IOCTL_TYPE;

use crate::event::{EventType, VectorContext};

/// A decoded `VexFS` ioctl.
#[derive(Debug, PartialEq)]
pub struct VexfsIoctl {
    pub name: &'static str,
    pub event_type: EventType,
    pub vector: VectorContext,
}

fn u32_at(arg: &[u8], offset: usize) -> Option<u32> {
    arg.get(offset..offset + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(arg: &[u8], offset: usize) -> Option<u64> {
    arg.get(offset..offset + 8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes)
}

/// Decodes a `VexFS` vector ioctl. `arg` is the captured start of its argument struct (None when
/// it could not be read); output fields are only reported when the call succeeded.
#[must_use]
pub fn decode_vexfs_ioctl(cmd: u64, arg: Option<&[u8]>, succeeded: bool) -> Option<VexfsIoctl> {
    if (cmd >> 8) & 0xff != u64::from(VEXFS_IOCTL_TYPE) {
        return None;
    }
    let nr = cmd & 0xff;
    let (name, event_type) = match nr {
        1 => ("SET_VECTOR_META", EventType::VectorUpdate),
        2 => ("GET_VECTOR_META", EventType::ObservabilityMetricCollected),
        3 => ("VECTOR_SEARCH", EventType::VectorSearch),
        4 => ("BATCH_INSERT", EventType::VectorCreate),
        10 => ("KNN_SEARCH", EventType::VectorSearch),
        11 => ("RANGE_SEARCH", EventType::VectorSearch),
        12 => ("BATCH_SEARCH", EventType::VectorSearch),
        13 => ("SEARCH_STATS", EventType::ObservabilityMetricCollected),
        14 => ("SEARCH_CONFIG", EventType::SystemOptimization),
        15 => ("REBUILD_INDEX", EventType::VectorIndex),
        20 => ("SET_MODEL_META", EventType::VectorEmbed),
        21 => ("GET_MODEL_META", EventType::ObservabilityMetricCollected),
        22 => ("BUILD_INDEX", EventType::VectorIndex),
        23 => ("GET_INDEX_INFO", EventType::ObservabilityMetricCollected),
        24 => ("MULTI_VECTOR_SEARCH", EventType::VectorSearch),
        25 => ("FILTERED_SEARCH", EventType::VectorSearch),
        26 => ("HYBRID_SEARCH", EventType::VectorSearch),
        _ => return None,
    };
    let mut vector = VectorContext { ioctl_cmd: Some(format!("{cmd:#x}")), ..VectorContext::default() };
    if let Some(arg) = arg {
        let out = |value: Option<u32>| if succeeded { value } else { None };
        match nr {
            1 => {
                vector.dimensions = u32_at(arg, 0);
                vector.element_type = u32_at(arg, 4);
                vector.vector_count = u32_at(arg, 8);
            }
            3 => {
                vector.dimensions = u32_at(arg, 8);
                vector.k = u32_at(arg, 12);
                vector.search_type = u32_at(arg, 16);
                vector.results_found = out(u32_at(arg, 40));
            }
            4 => {
                vector.vector_count = u32_at(arg, 8);
                vector.dimensions = u32_at(arg, 12);
                vector.batch_flags = u32_at(arg, 24);
            }
            10 => {
                vector.dimensions = u32_at(arg, 8);
                vector.k = u32_at(arg, 12);
                vector.metric = u32_at(arg, 16);
                vector.results_found = out(u32_at(arg, 32));
                vector.search_time_ns = if succeeded { u64_at(arg, 40) } else { None };
            }
            11 => {
                vector.dimensions = u32_at(arg, 8);
                vector.max_distance = u32_at(arg, 12).map(f32::from_bits);
                vector.metric = u32_at(arg, 16);
                vector.max_results = u32_at(arg, 20);
                vector.results_found = out(u32_at(arg, 40));
            }
            _ => {}
        }
    }
    Some(VexfsIoctl { name, event_type, vector })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg_with(fields: &[(usize, u32)]) -> Vec<u8> {
        let mut arg = vec![0u8; 64];
        for &(offset, value) in fields {
            arg[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        }
        arg
    }

    #[test]
    fn decodes_knn_search_inputs_and_outputs() {
        let arg = arg_with(&[(8, 128), (12, 10), (16, 1), (32, 7)]);
        let ok = decode_vexfs_ioctl(0xC038_560A, Some(&arg), true).unwrap();
        assert_eq!(ok.name, "KNN_SEARCH");
        assert_eq!(ok.event_type, EventType::VectorSearch);
        assert_eq!((ok.vector.dimensions, ok.vector.k, ok.vector.metric), (Some(128), Some(10), Some(1)));
        assert_eq!(ok.vector.results_found, Some(7));
        let failed = decode_vexfs_ioctl(0xC038_560A, Some(&arg), false).unwrap();
        assert_eq!(failed.vector.results_found, None);
    }

    #[test]
    fn decodes_on_type_and_nr_only() {
        // BUILD_INDEX with a different struct size in the command still decodes.
        assert_eq!(decode_vexfs_ioctl(0x4099_5616, None, true).unwrap().name, "BUILD_INDEX");
        let batch = arg_with(&[(8, 1000), (12, 64), (24, 2)]);
        let insert = decode_vexfs_ioctl(0x4020_5604, Some(&batch), true).unwrap();
        assert_eq!(insert.event_type, EventType::VectorCreate);
        assert_eq!((insert.vector.vector_count, insert.vector.dimensions), (Some(1000), Some(64)));
        assert!(decode_vexfs_ioctl(0x5401, None, true).is_none(), "TCGETS is not VexFS");
        assert!(decode_vexfs_ioctl(0x5663, None, true).is_none(), "unknown nr");
    }
}
