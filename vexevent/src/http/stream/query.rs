//! A stream request's query: which events the subscription selects (`VexFS`'s query parameters
//! `event_types`, `categories`, `path_pattern`, `required_flags`, and our `filter`), how many
//! messages its buffer holds (`buffer`), what happens when it is slow (`slow`), and where the
//! subscriber index files it.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    event::EventType,
    expr::{Filter, FilterChain, FilterError},
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
    #[error("buffer={value} is not a number of messages")]
    BufferNotANumber { value: String },
    #[error("buffer={value} is over the limit of {limit} messages; ask for at most {limit}")]
    BufferOverLimit { value: usize, limit: usize },
    #[error("slow={value}: expected drop or disconnect")]
    Slow { value: String },
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
    /// Reads a stream request's query; a subscription's buffer holds at most `max_buffer`
    /// messages.
    ///
    /// # Errors
    /// A filter (or a `VexFS` parameter turned into one) that does not parse or compile (or is
    /// over the language's limits), a `buffer` that is not a number or over `max_buffer`, a
    /// `slow` that is neither `drop` nor `disconnect`.
    pub(super) fn parse(query: &BTreeMap<String, String>, max_buffer: usize) -> Result<Self, QueryError> {
        let policy = match query.get("slow").map(String::as_str) {
            None | Some("drop") => SlowPolicy::Drop,
            Some("disconnect") => SlowPolicy::Disconnect,
            Some(other) => return Err(QueryError::Slow { value: other.to_owned() }),
        };
        let buffer = match query.get("buffer") {
            None => DEFAULT_BUFFER.min(max_buffer),
            Some(text) => {
                let value: usize =
                    text.parse().map_err(|_| QueryError::BufferNotANumber { value: text.clone() })?;
                if value > max_buffer {
                    return Err(QueryError::BufferOverLimit { value, limit: max_buffer });
                }
                value.max(1)
            }
        };
        let filter = subscription_filter(query)?;
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
        Subscription::parse(&query.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(), 1000)
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
        let defaults = Subscription::parse(&BTreeMap::new(), 1 << 20).unwrap();
        assert_eq!((defaults.buffer, defaults.policy), (DEFAULT_BUFFER, SlowPolicy::Drop));
        assert!(parse(&[("filter", "pid ==")]).is_err());
    }

    #[test]
    fn buffers_and_policies_are_bounded_and_checked() {
        assert_eq!(parse(&[("buffer", "1000")]).unwrap().buffer, 1000);
        assert_eq!(parse(&[("buffer", "0")]).unwrap().buffer, 1);
        assert_eq!(parse(&[("slow", "disconnect")]).unwrap().policy, SlowPolicy::Disconnect);
        // What panicked the stream thread (issue 11): tokio's channel cannot hold that many.
        let error = parse(&[("buffer", "18446744073709551615")]).err().unwrap();
        assert!(error.to_string().contains("over the limit of 1000 messages"), "{error}");
        let error = parse(&[("buffer", "184467440737095516150")]).err().unwrap();
        assert!(error.to_string().contains("not a number"), "{error}");
        assert!(parse(&[("slow", "later")]).err().unwrap().to_string().contains("drop or disconnect"));
        let deep = format!("{}true{}", "(".repeat(3000), ")".repeat(3000));
        let error = parse(&[("filter", &deep)]).err().unwrap();
        let cause = std::error::Error::source(&error).unwrap().to_string();
        assert!(cause.contains("at most 64 levels"), "{cause}");
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// Any query: a subscription within the limits, or an error; never a panic. A subscription
        /// is then offered events like any other.
        #[test]
        fn fuzz_stream_query(
            pairs in proptest::collection::vec(
                (
                    proptest::sample::select(&["event_types", "categories", "path_pattern", "required_flags", "filter", "buffer", "slow", "token", "other"][..]),
                    proptest::prop_oneof![
                        crate::fuzz::text_of(crate::fuzz::FILTER_TOKENS, 24),
                        crate::fuzz::text_of(&["FilesystemWrite", "FilesystemMkdir", "filesystem", "vector", ",", " ", "Nope", "/w/", "a", "*", "[", "{", "\\", "0", "1", "65536", "18446744073709551615", "-1", "drop", "disconnect"], 8),
                    ],
                ),
                0..6,
            )
        ) {
            let query: BTreeMap<String, String> = pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            if let Ok(subscription) = Subscription::parse(&query, 1000) {
                proptest::prop_assert!((1..=1000).contains(&subscription.buffer));
                let broadcaster = super::super::Broadcaster::default();
                let _receiver = broadcaster.subscribe(subscription);
                let counters = crate::telemetry::Counters::default();
                let events = vec![crate::event::SemanticEvent::sample(EventType::FilesystemWrite, "/w/a", 1, "c", true)];
                broadcaster.publish(&events, &crate::pipeline::to_json_lines(&events, &counters), &counters);
            }
        }
    }
}
