//! The filter stage on synthetic events.

use std::collections::BTreeMap;

use super::*;
use crate::event::{EventType, SemanticEvent};

fn event(event_type: EventType, path: &str, pid: u32, comm: &str, ok: bool) -> SemanticEvent {
    SemanticEvent::sample(event_type, path, pid, comm, ok)
}

fn filter(text: &str) -> Filter {
    Filter::new("test", text, &BTreeMap::new()).unwrap()
}

#[test]
fn chains_combine_all_any_and_first_match() {
    let e = event(EventType::FilesystemCreate, "/srv/a", 7, "c", true);
    let chain = |mode, texts: &[&str]| FilterChain {
        mode,
        filters: texts
            .iter()
            .enumerate()
            .map(|(i, t)| Filter::new(&format!("f{i}"), t, &BTreeMap::new()).unwrap())
            .collect(),
    };
    assert_eq!(chain(ChainMode::All, &["pid == 7", "comm == c"]).check(&e), Some(""));
    assert_eq!(chain(ChainMode::All, &["pid == 7", "comm == x"]).check(&e), None);
    assert_eq!(chain(ChainMode::Any, &["pid == 8", "comm == c"]).check(&e), Some(""));
    assert_eq!(chain(ChainMode::FirstMatch, &["pid == 8", "comm == c", "true"]).check(&e), Some("f1"));
    assert_eq!(FilterChain::default().check(&e), Some(""));
}

#[test]
fn pushes_certain_conditions_down_to_the_kernel() {
    let chain = FilterChain {
        mode: ChainMode::All,
        filters: vec![filter(
            r#"pid in [1, 2] and comm == "mkdir" and type in [FilesystemMkdir, FilesystemDelete] and path glob "/tmp/*""#,
        )],
    };
    let part = pushdown(&chain);
    assert_eq!(part.pids, Some(vec![1, 2]));
    assert_eq!(part.comm.as_deref(), Some("mkdir"));
    let ops = part.ops.unwrap();
    assert!(ops.contains(&vexevent_common::OpKind::Mkdir) && ops.contains(&vexevent_common::OpKind::Unlink));
    assert_eq!(part.dirs, Some(vec![std::path::PathBuf::from("/tmp/")]));
    // An `or` at the top, or a graph type, cannot be pushed down.
    let loose = FilterChain {
        mode: ChainMode::All,
        filters: vec![filter("pid == 1 or comm == x"), filter("type == GraphNodeCreate")],
    };
    assert_eq!(pushdown(&loose), KernelPart::default());
}
