//! The router: which outputs each event reaches, with every balance mode, failover and the
//! unmatched output.

use std::collections::BTreeMap;

use super::*;
use crate::event::EventType;

fn spec(name: &str, expr: &str, targets: &[usize], balance: Balance, failover: bool) -> RouteSpec {
    RouteSpec {
        name: name.into(),
        match_expr: expr.into(),
        targets: targets.to_vec(),
        balance,
        key: BalanceKey::Path,
        failover,
    }
}

fn event(event_type: EventType, path: &str) -> SemanticEvent {
    SemanticEvent::sample(event_type, path, 1, "t", true)
}

fn route(router: &mut Router, event: &SemanticEvent, up: &dyn Fn(usize) -> bool) -> Vec<usize> {
    let mut out = Vec::new();
    router.route(event, up, &mut out);
    out
}

const ALL_UP: &dyn Fn(usize) -> bool = &|_| true;

#[test]
fn every_matching_route_contributes_each_target_once() {
    let table = [
        spec("writes", "type == FilesystemWrite", &[0, 1], Balance::All, false),
        spec("data", r#"path prefix "/data""#, &[1, 2], Balance::All, false),
    ];
    let mut router = Router::new(&table, vec![3], 4, &BTreeMap::new()).unwrap();
    assert_eq!(route(&mut router, &event(EventType::FilesystemWrite, "/data/a"), ALL_UP), [0, 1, 2]);
    assert_eq!(route(&mut router, &event(EventType::FilesystemRead, "/data/a"), ALL_UP), [1, 2]);
    assert_eq!(route(&mut router, &event(EventType::FilesystemRead, "/etc/x"), ALL_UP), [3]);
    assert_eq!(router.take_matched(), [("writes", 1), ("data", 2)]);
    assert_eq!(router.take_unrouted(), 0);
}

#[test]
fn without_an_unmatched_output_unrouted_events_are_counted() {
    let table = [spec("writes", "type == FilesystemWrite", &[0], Balance::All, false)];
    let mut router = Router::new(&table, Vec::new(), 1, &BTreeMap::new()).unwrap();
    assert!(route(&mut router, &event(EventType::FilesystemRead, "/a"), ALL_UP).is_empty());
    assert_eq!(router.take_unrouted(), 1);
    assert_eq!(router.take_unrouted(), 0);
}

#[test]
fn round_robin_takes_turns_and_fails_over_past_targets_that_are_down() {
    let table = [spec("rr", "true", &[0, 1, 2], Balance::RoundRobin, true)];
    let mut router = Router::new(&table, Vec::new(), 3, &BTreeMap::new()).unwrap();
    let e = event(EventType::FilesystemWrite, "/a");
    let picks: Vec<usize> = (0..6).flat_map(|_| route(&mut router, &e, ALL_UP)).collect();
    assert_eq!(picks, [1, 2, 0, 1, 2, 0]);
    let one_down = |t: usize| t != 1;
    let picks: Vec<usize> = (0..3).flat_map(|_| route(&mut router, &e, &one_down)).collect();
    assert_eq!(picks, [2, 2, 0], "the turn of output 1 goes to the next one");
}

#[test]
fn by_key_the_same_path_always_reaches_the_same_target() {
    let table = [spec("k", "true", &[0, 1, 2, 3], Balance::Key, false)];
    let mut router = Router::new(&table, Vec::new(), 4, &BTreeMap::new()).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..64 {
        let e = event(EventType::FilesystemWrite, &format!("/data/{i}"));
        let first = route(&mut router, &e, ALL_UP);
        assert_eq!(route(&mut router, &e, ALL_UP), first);
        seen.insert(first[0]);
    }
    assert_eq!(seen.len(), 4, "64 paths spread over every target");
}

#[test]
fn all_with_failover_is_primary_and_standby() {
    let table = [spec("p", "true", &[0, 1], Balance::All, true)];
    let mut router = Router::new(&table, Vec::new(), 2, &BTreeMap::new()).unwrap();
    let e = event(EventType::FilesystemWrite, "/a");
    assert_eq!(route(&mut router, &e, ALL_UP), [0]);
    assert_eq!(route(&mut router, &e, &|t| t != 0), [1]);
    assert_eq!(route(&mut router, &e, &|_| false), [0], "all down: the primary keeps it queued");
}

#[test]
fn a_bad_route_expression_names_the_route() {
    let table = [spec("broken", "type ==", &[0], Balance::All, false)];
    let error = Router::new(&table, Vec::new(), 1, &BTreeMap::new()).err().unwrap();
    assert!(error.to_string().contains("routes.broken"), "{error}");
}
