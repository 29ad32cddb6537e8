//! The rules an event can match, found without evaluating the others: each rule is filed under
//! the event types and path prefixes its conditions need ([`Needs`]); an event looks up its type
//! among the rules without a prefix and, for each distinct prefix length, its path's prefix of
//! that length (a few hash lookups however many rules there are).

use std::collections::{HashMap, HashSet};

use foldhash::fast::FixedState;

use crate::{event::EventType, expr::Needs};

/// Rules by the event types they need; `any` can match every type.
#[derive(Default)]
struct Slots {
    typed: HashMap<EventType, Vec<u32>, FixedState>,
    any: Vec<u32>,
}

impl Slots {
    fn add(&mut self, types: Option<&HashSet<EventType>>, rule: u32) {
        match types {
            Some(types) => types.iter().for_each(|t| self.typed.entry(*t).or_default().push(rule)),
            None => self.any.push(rule),
        }
    }

    fn collect(&self, event_type: EventType, out: &mut Vec<u32>) {
        if let Some(rules) = self.typed.get(&event_type) {
            out.extend_from_slice(rules);
        }
        out.extend_from_slice(&self.any);
    }
}

/// Rules by what they need of an event.
pub struct RuleIndex {
    /// Rules that need the path to start with a prefix, by prefix.
    by_prefix: HashMap<Box<[u8]>, Slots, FixedState>,
    /// The distinct lengths of those prefixes, shortest first.
    prefix_lengths: Vec<usize>,
    /// Rules that need no prefix, by event type (`EventType as usize`; those of any type in
    /// each), in rule order.
    unprefixed: Vec<Vec<u32>>,
}

impl Default for RuleIndex {
    fn default() -> Self {
        Self {
            by_prefix: HashMap::default(),
            prefix_lengths: Vec::new(),
            unprefixed: vec![Vec::new(); EventType::ALL.len()],
        }
    }
}

impl RuleIndex {
    /// Files `rule` under what it needs.
    pub fn add(&mut self, rule: u32, needs: &Needs) {
        let types = needs.types.as_ref();
        match &needs.path_prefixes {
            None => {
                for event_type in EventType::ALL {
                    if types.is_none_or(|types| types.contains(event_type)) {
                        self.unprefixed[*event_type as usize].push(rule);
                    }
                }
            }
            Some(prefixes) => {
                for prefix in prefixes {
                    self.by_prefix.entry(prefix.as_slice().into()).or_default().add(types, rule);
                    if let Err(at) = self.prefix_lengths.binary_search(&prefix.len()) {
                        self.prefix_lengths.insert(at, prefix.len());
                    }
                }
            }
        }
    }

    /// The rules an event of `event_type` at `path` can match, in rule order, into `out`; the
    /// path is read only when some rule needs a prefix.
    pub fn candidates<'a>(
        &self,
        event_type: EventType,
        path: impl FnOnce() -> Option<&'a [u8]>,
        out: &mut Vec<u32>,
    ) {
        out.clear();
        out.extend_from_slice(&self.unprefixed[event_type as usize]);
        let path = if self.prefix_lengths.is_empty() { None } else { path() };
        if let Some(path) = path {
            for &length in self.prefix_lengths.iter().take_while(|&&length| length <= path.len()) {
                if let Some(slots) = self.by_prefix.get(&path[..length]) {
                    slots.collect(event_type, out);
                }
            }
        }
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::expr::{needs, parse};

    fn index(conditions: &[&str]) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (rule, text) in conditions.iter().enumerate() {
            let needs = needs(&parse(text).unwrap(), &BTreeMap::new(), &[]);
            index.add(u32::try_from(rule).unwrap(), &needs);
        }
        index
    }

    fn candidates(index: &RuleIndex, event_type: EventType, path: Option<&str>) -> Vec<u32> {
        let mut out = vec![99];
        index.candidates(event_type, || path.map(str::as_bytes), &mut out);
        out
    }

    #[test]
    fn an_event_gets_the_rules_of_its_type_and_path_prefixes_in_rule_order() {
        use EventType::{FilesystemDelete as Delete, FilesystemRename as Rename, FilesystemWrite as Write};
        let index = index(&[
            r#"type == FilesystemWrite and path prefix "/srv/a/""#,
            r#"type == FilesystemWrite and path prefix "/srv/""#,
            r#"type in [FilesystemWrite, FilesystemDelete] and path glob "/srv/a/*.tmp""#,
            r#"path == "/etc/passwd" or path in ["/etc/shadow"]"#,
            r#"comm == "cp""#,
            r#"type == FilesystemRename and (path prefix "/srv/a" or comm == "x")"#,
            r#"not path prefix "/srv/a/""#,
            "false",
        ]);
        assert_eq!(candidates(&index, Write, Some("/srv/a/x.tmp")), [0, 1, 2, 4, 6]);
        assert_eq!(candidates(&index, Write, Some("/srv/b/x")), [1, 4, 6]);
        assert_eq!(candidates(&index, Delete, Some("/srv/a/x.tmp")), [2, 4, 6]);
        assert_eq!(candidates(&index, Delete, Some("/etc/shadow")), [3, 4, 6]);
        assert_eq!(
            candidates(&index, Rename, Some("/srv/a")),
            [4, 5, 6],
            "an `or` without a prefix everywhere"
        );
        assert_eq!(candidates(&index, Write, None), [4, 6], "no path: only rules that need none");
    }

    #[test]
    fn a_step_comparing_its_path_with_an_earlier_steps_inherits_that_steps_prefixes() {
        let macros = BTreeMap::new();
        let first =
            needs(&parse(r#"type == FilesystemCreate and path prefix "/srv/""#).unwrap(), &macros, &[]);
        let then = parse("type == FilesystemRename and path == create.path").unwrap();
        let second = needs(&then, &macros, &[("create", &first)]);
        assert_eq!(second.path_prefixes, Some(vec![b"/srv/".to_vec()]));
        assert_eq!(second.types, Some(HashSet::from([EventType::FilesystemRename])));
        let target = needs(&parse("target == create.path").unwrap(), &macros, &[("create", &first)]);
        assert_eq!(target, Needs::default(), "the rename's target says nothing of its path");
        let both = first.or(second);
        assert_eq!(
            both.types,
            Some(HashSet::from([EventType::FilesystemCreate, EventType::FilesystemRename]))
        );
    }

    #[test]
    fn macros_are_followed() {
        let mut macros = BTreeMap::new();
        macros.insert("secrets".to_owned(), parse(r#"path prefix "/etc/""#).unwrap());
        let needs = needs(&parse("type == FilesystemWrite and @secrets").unwrap(), &macros, &[]);
        assert_eq!(needs.path_prefixes, Some(vec![b"/etc/".to_vec()]));
    }
}
