//! `VexFS` semantics of file operations on `VexFS` paths (design/vexfs.md): a write to `*.vec`
//! stores a vector (`VectorCreate`, dimensions from the data), a write to `*.search` or
//! `_vexfs/search` is a `VectorSearch` (`k` parsed; default 5, or 10 for `_vexfs/search`), a write
//! to `_vexfs/control` is `SystemOptimization`, a read of `_vexfs/stats` is `MetricCollected`; and
//! file operations derive Graph events (node create/update/delete, `Contains` edges from the
//! parent directory) that name the file event they derive from.

use std::collections::BTreeMap;

use vexevent_common::OpKind;

use crate::event::{
    EventType, GRAPH_PART, GraphContext, GraphEdge, PathBytes, SemanticEvent, VectorContext, is_under,
};

/// Default `k` of a `*.search` file and of `_vexfs/search`.
const SEARCH_K: u32 = 5;
const VEXFS_SEARCH_K: u32 = 10;

/// Where `VexFS` lives: mount points of `VexFS` file systems and configured directories.
#[derive(Clone, Debug, Default)]
pub struct VexfsRoots(pub Vec<Vec<u8>>);

impl VexfsRoots {
    #[must_use]
    pub fn contains(&self, path: &[u8]) -> bool {
        self.0.iter().any(|root| is_under(path, root))
    }
}

fn file_name(path: &[u8]) -> &[u8] {
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/",
        Some(i) => &path[..i],
        None => b".",
    }
}

/// Numbers in comma- or space-separated text.
fn count_values(text: &str) -> u32 {
    let count = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|token| !token.is_empty() && token.parse::<f32>().is_ok())
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// `vector: a,b,c` and `k: N` lines of a search request.
fn parse_search(text: &str, default_k: u32) -> VectorContext {
    let mut vector = VectorContext { k: Some(default_k), ..VectorContext::default() };
    for line in text.lines() {
        if let Some(values) = line.trim().strip_prefix("vector:") {
            vector.dimensions = Some(count_values(values));
        } else if let Some(k) = line.trim().strip_prefix("k:") {
            if let Ok(k) = k.trim().parse() {
                vector.k = Some(k);
            }
        }
    }
    vector
}

/// `key=value` lines.
fn parse_control(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// Gives a read or write (operation `op`) of a `VexFS` special file its `VexFS` meaning (in place).
pub fn reinterpret(event: &mut SemanticEvent, op: OpKind, payload: Option<&[u8]>) {
    let Some(path) = event.context.filesystem.as_ref().and_then(|fs| fs.path.clone()) else { return };
    let path = path.as_bytes();
    let name = file_name(path);
    let in_control_dir = file_name(parent(path)) == b"_vexfs";
    let text = payload.map(String::from_utf8_lossy);
    match event.event_type {
        EventType::FilesystemWrite => {
            let Some(text) = text else { return };
            if name.ends_with(b".vec") {
                event.event_type = EventType::VectorCreate;
                event.context.vector =
                    Some(VectorContext { dimensions: Some(count_values(&text)), ..VectorContext::default() });
            } else if name.ends_with(b".search") || (in_control_dir && name == b"search") {
                let default_k = if in_control_dir { VEXFS_SEARCH_K } else { SEARCH_K };
                event.event_type = EventType::VectorSearch;
                event.context.vector = Some(parse_search(&text, default_k));
            } else if in_control_dir && name == b"control" {
                event.event_type = EventType::SystemOptimization;
                event.context.parameters = parse_control(&text);
            } else {
                return;
            }
        }
        EventType::FilesystemRead if in_control_dir && name == b"stats" && op == OpKind::Read => {
            event.event_type = EventType::ObservabilityMetricCollected;
        }
        _ => return,
    }
    event.event_type_code = event.event_type.code();
}

/// The Graph events a successful file operation on `VexFS` derives, each linked to it.
#[must_use]
pub fn derive_graph(event: &SemanticEvent) -> Vec<SemanticEvent> {
    if !event.result.as_ref().is_some_and(|r| r.ok) {
        return Vec::new();
    }
    let Some(fs) = event.context.filesystem.as_ref() else { return Vec::new() };
    let Some(path) = fs.path.clone() else { return Vec::new() };
    let node_id = fs.inode_number;
    let contains = |dir: &[u8], entry: &PathBytes| GraphEdge {
        from: PathBytes::from(dir),
        to: entry.clone(),
        kind: "Contains".to_owned(),
    };
    let derived = |nth: u16, event_type: EventType, node: PathBytes, edge: Option<GraphEdge>| {
        let mut graph = event.derive(event_type, GRAPH_PART + nth);
        graph.context.graph =
            Some(GraphContext { node, node_id, edge, operation_type: event.event_subtype.clone() });
        graph.context.vector = None;
        graph.context.fuse = Vec::new();
        graph.timeline = None;
        graph
    };
    match event.event_type {
        EventType::FilesystemCreate | EventType::FilesystemMkdir | EventType::FilesystemSymlink => {
            let edge = contains(parent(path.as_bytes()), &path);
            vec![
                derived(0, EventType::GraphNodeCreate, path.clone(), None),
                derived(1, EventType::GraphEdgeCreate, path, Some(edge)),
            ]
        }
        EventType::FilesystemHardlink => {
            let edge = contains(parent(path.as_bytes()), &path);
            vec![derived(0, EventType::GraphEdgeCreate, path, Some(edge))]
        }
        EventType::FilesystemWrite
        | EventType::VectorCreate
        | EventType::FilesystemChmod
        | EventType::FilesystemChown
        | EventType::FilesystemTruncate => vec![derived(0, EventType::GraphNodeUpdate, path, None)],
        EventType::FilesystemDelete | EventType::FilesystemRmdir => {
            vec![derived(0, EventType::GraphNodeDelete, path, None)]
        }
        EventType::FilesystemRename => {
            let Some(target) = fs.target_path.clone() else { return Vec::new() };
            let old_edge = contains(parent(path.as_bytes()), &path);
            let new_edge = contains(parent(target.as_bytes()), &target);
            vec![
                derived(0, EventType::GraphEdgeDelete, path, Some(old_edge)),
                derived(1, EventType::GraphEdgeCreate, target, Some(new_edge)),
            ]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vectors_searches_and_control_lines() {
        assert_eq!(count_values("0.1,0.2, 0.3\n"), 3);
        let search = parse_search("vector: 1,2,3,4\nk: 7\n", SEARCH_K);
        assert_eq!((search.dimensions, search.k), (Some(4), Some(7)));
        assert_eq!(parse_search("vector: 1,2", VEXFS_SEARCH_K).k, Some(10));
        let control = parse_control("ef_search=64\nmetric = cosine\n");
        assert_eq!(control["ef_search"], "64");
        assert_eq!(control["metric"], "cosine");
        assert_eq!(parent(b"/m/_vexfs/search"), b"/m/_vexfs");
        assert_eq!(file_name(b"/m/a.vec"), b"a.vec");
    }
}
