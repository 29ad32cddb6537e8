//! A stream request's query: which events the subscription selects (`VexFS`'s query parameters
//! `event_types`, `categories`, `path_pattern`, `required_flags`, and our `filter`), how many
//! messages its buffer holds (`buffer`), what happens when it is slow (`slow`), and where the
//! subscriber index files it.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    event::EventType,
    filter::{Filter, FilterChain, FilterError},
};

/// Messages a subscriber's buffer holds before it counts as slow, unless it asks otherwise.
const DEFAULT_BUFFER: usize = 4096;

/// Characters that make a `path_pattern` a glob rather than one exact path (`\` escapes).
const GLOB_CHARACTERS: [char; 7] = ['*', '?', '[', ']', '{', '}', '\\'];

/// Why a stream request's query is refused.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Filter(#[from] FilterError),
}

/// What a slow subscriber gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlowPolicy {
    /// Drop what does not fit and send a gap notice.
    Drop,
    /// Close the connection.
    Disconnect,
}

/// Which events the subscriber index offers a subscription.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Index {
    /// Events whose path starts with this literal prefix of its `path_pattern` (all of the
    /// pattern when it has no glob characters).
    Prefix(Vec<u8>),
    /// Events of these type codes (from `event_types` and `categories`).
    Types(BTreeSet<u16>),
    /// Every event.
    All,
}

/// A subscription, as its query describes it.
pub(super) struct Subscription {
    pub(super) filter: FilterChain,
    pub(super) policy: SlowPolicy,
    /// Messages its buffer holds.
    pub(super) buffer: usize,
    pub(super) index: Index,
}

impl Subscription {
    /// Reads a stream request's query.
    ///
    /// # Errors
    /// A filter (or a `VexFS` parameter turned into one) that does not parse or compile.
    pub(super) fn parse(query: &BTreeMap<String, String>) -> Result<Self, QueryError> {
        let filter = subscription_filter(query)?;
        let policy = if query.get("slow").is_some_and(|p| p == "disconnect") {
            SlowPolicy::Disconnect
        } else {
            SlowPolicy::Drop
        };
        let buffer = query.get("buffer").and_then(|b| b.parse().ok()).unwrap_or(DEFAULT_BUFFER).max(1);
        let index = match (path_prefix(query), type_codes(query)) {
            (Some(prefix), _) => Index::Prefix(prefix.as_bytes().to_vec()),
            (None, Some(types)) => Index::Types(types),
            (None, None) => Index::All,
        };
        Ok(Self { filter, policy, buffer, index })
    }
}

/// The type codes a subscription can select by its `event_types` and `categories` (both must
/// match); `None` when it names neither, or a name that is not known (the filter reports it).
fn type_codes(query: &BTreeMap<String, String>) -> Option<BTreeSet<u16>> {
    let names = |key: &str| {
        query
            .get(key)
            .map(|list| list.split(',').map(str::trim).filter(|n| !n.is_empty()).collect::<Vec<_>>())
    };
    let (types, categories) = (names("event_types"), names("categories"));
    if types.is_none() && categories.is_none() {
        return None;
    }
    let by_type: Option<BTreeSet<u16>> = match types {
        Some(types) => Some(
            types
                .iter()
                .map(|name| EventType::from_name(name).map(EventType::code))
                .collect::<Option<_>>()?,
        ),
        None => None,
    };
    Some(
        EventType::ALL
            .iter()
            .filter(|t| categories.as_ref().is_none_or(|c| c.contains(&t.category())))
            .map(|t| t.code())
            .filter(|code| by_type.as_ref().is_none_or(|codes| codes.contains(code)))
            .collect(),
    )
}

/// The literal start of a subscription's `path_pattern` (all of it when it has no glob
/// characters): every path the pattern matches starts with it.
fn path_prefix(query: &BTreeMap<String, String>) -> Option<&str> {
    let pattern = query.get("path_pattern")?;
    Some(pattern.find(GLOB_CHARACTERS).map_or(pattern.as_str(), |end| &pattern[..end]))
}

/// Builds a subscription's filter from `VexFS`'s query parameters (`event_types`, `categories`,
/// `path_pattern`, `required_flags`) and ours (`filter`).
fn subscription_filter(query: &BTreeMap<String, String>) -> Result<FilterChain, FilterError> {
    let list = |values: &str| {
        values.split(',').map(str::trim).filter(|v| !v.is_empty()).collect::<Vec<_>>().join(", ")
    };
    let mut expressions = Vec::new();
    if let Some(types) = query.get("event_types") {
        expressions.push(format!("type in [{}]", list(types)));
    }
    if let Some(categories) = query.get("categories") {
        expressions.push(format!("category in [{}]", list(categories)));
    }
    if let Some(pattern) = query.get("path_pattern") {
        if pattern.contains(GLOB_CHARACTERS) {
            expressions.push(format!("path glob {pattern:?}"));
        } else {
            // The same events as the glob, compared without a regex.
            expressions.push(format!("path == {pattern:?}"));
        }
    }
    if let Some(flags) = query.get("required_flags") {
        expressions.push(format!("flags has {flags}"));
    }
    if let Some(filter) = query.get("filter") {
        expressions.push(filter.clone());
    }
    let macros = BTreeMap::new();
    let filters = expressions
        .iter()
        .enumerate()
        .map(|(i, text)| Filter::new(&format!("query[{i}]"), text, &macros))
        .collect::<Result<_, _>>()?;
    Ok(FilterChain { filters, ..FilterChain::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &[(&str, &str)]) -> Result<Subscription, QueryError> {
        Subscription::parse(&query.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }

    #[test]
    fn paths_types_and_the_rest_are_indexed_apart() {
        assert_eq!(parse(&[("path_pattern", "/w/a")]).unwrap().index, Index::Prefix(b"/w/a".to_vec()));
        assert_eq!(parse(&[("path_pattern", "/w/[ab]")]).unwrap().index, Index::Prefix(b"/w/".to_vec()));
        let mkdir = EventType::FilesystemMkdir.code();
        assert_eq!(
            parse(&[("event_types", "FilesystemMkdir")]).unwrap().index,
            Index::Types(BTreeSet::from([mkdir]))
        );
        assert_eq!(parse(&[("filter", "pid == 1")]).unwrap().index, Index::All);
        let defaults = parse(&[]).unwrap();
        assert_eq!((defaults.buffer, defaults.policy), (DEFAULT_BUFFER, SlowPolicy::Drop));
        assert!(parse(&[("filter", "pid ==")]).is_err());
    }
}
