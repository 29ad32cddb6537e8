//! The subscriber index and fan-out: [`Broadcaster::publish`] offers each event only to the
//! subscriptions that can select it (by the literal prefix of their `path_pattern`, by their set
//! of event types, or every event for the rest), numbers what each receives, and never blocks: a
//! subscriber whose bounded buffer is full misses events and is told how many in a gap notice
//! (or, with `slow=disconnect`, is disconnected).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::mpsc;

use super::query::{Index, SlowPolicy, Subscription};
use crate::{
    event::SemanticEvent,
    expr::FilterChain,
    telemetry::{Counters, add},
};

struct Subscriber {
    filter: FilterChain,
    sender: mpsc::Sender<String>,
    policy: SlowPolicy,
    /// Next subscription sequence number.
    next: u64,
    /// Events dropped since the last gap notice.
    dropped: u64,
}

impl Subscriber {
    /// Offers events (in output order) to this subscriber; false when it is to be removed
    /// (closed, or slow with `slow=disconnect`).
    fn offer<'a>(
        &mut self,
        events: impl Iterator<Item = (&'a SemanticEvent, &'a Arc<str>)>,
        counters: &Counters,
    ) -> bool {
        for (event, json) in events {
            if self.filter.check(event).is_none() {
                continue;
            }
            self.send_gap_notice();
            let message = format!(r#"{{"subscription_sequence":{},"event":{json}}}"#, self.next);
            match self.sender.try_send(message) {
                Ok(()) => self.next += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    add(&counters.stream_dropped, 1);
                    if self.policy == SlowPolicy::Disconnect {
                        add(&counters.stream_disconnected, 1);
                        return false;
                    }
                    self.dropped += 1;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    }

    /// Tells the subscriber how many events it missed since the last notice, if any and if
    /// there is room.
    fn send_gap_notice(&mut self) {
        if self.dropped > 0
            && self.sender.try_send(format!(r#"{{"gap":{{"dropped":{}}}}}"#, self.dropped)).is_ok()
        {
            self.dropped = 0;
        }
    }
}

/// The subscriptions, indexed so that an event is offered only to those that can select it.
#[derive(Default)]
struct Subscribers {
    /// Subscriptions with a `path_pattern`, by the pattern's literal prefix (up to its first
    /// glob character; the whole path for an exact one): no event whose path does not start
    /// with it can pass them (their other conditions are `and`ed to the pattern).
    by_prefix: HashMap<Vec<u8>, Vec<Subscriber>>,
    /// The distinct lengths of those prefixes: an event's path is looked up at these only.
    prefix_lengths: BTreeSet<usize>,
    /// Subscriptions with `event_types` or `categories` (and no `path_pattern`), by the set of
    /// type codes they can select: each group is offered only the events of its types.
    by_types: HashMap<BTreeSet<u16>, Vec<Subscriber>>,
    /// Every other subscription is offered every event.
    others: Vec<Subscriber>,
}

impl Subscribers {
    fn forget_empty_prefixes(&mut self) {
        self.by_prefix.retain(|_, subscribers| !subscribers.is_empty());
        self.prefix_lengths = self.by_prefix.keys().map(Vec::len).collect();
    }
}

/// The path the prefix index looks up.
fn event_path(event: &SemanticEvent) -> Option<&[u8]> {
    event.context.filesystem.as_ref()?.path.as_ref().map(crate::event::PathBytes::as_bytes)
}

/// Hands events to every subscriber; shared by the pipeline and the server.
#[derive(Default)]
pub struct Broadcaster {
    subscribers: Mutex<Subscribers>,
}

impl Broadcaster {
    /// Offers events (in output order, with their JSON from `to_json_lines`) to every
    /// subscriber; never blocks.
    pub fn publish(&self, events: &[SemanticEvent], lines: &[Arc<str>], counters: &Counters) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(PoisonError::into_inner);
        let Subscribers { by_prefix, prefix_lengths, by_types, others } = &mut *subscribers;
        others.retain_mut(|subscriber| subscriber.offer(events.iter().zip(lines), counters));
        by_types.retain(|types, subscribers| {
            let group = events.iter().zip(lines).filter(|(event, _)| types.contains(&event.event_type_code));
            subscribers.retain_mut(|subscriber| subscriber.offer(group.clone(), counters));
            !subscribers.is_empty()
        });
        if by_prefix.is_empty() {
            return;
        }
        // The batch's events grouped by the indexed prefixes their paths start with (in order),
        // each group offered to that prefix's subscriptions only.
        let mut batch: HashMap<&[u8], Vec<usize>> = HashMap::new();
        for (i, event) in events.iter().enumerate() {
            let Some(path) = event_path(event) else { continue };
            for &length in prefix_lengths.range(..=path.len()) {
                let prefix = &path[..length];
                if by_prefix.contains_key(prefix) {
                    batch.entry(prefix).or_default().push(i);
                }
            }
        }
        let mut emptied = false;
        for (prefix, indices) in batch {
            let Some(subscribers) = by_prefix.get_mut(prefix) else { continue };
            let group = indices.iter().map(|&i| (&events[i], &lines[i]));
            subscribers.retain_mut(|subscriber| subscriber.offer(group.clone(), counters));
            emptied |= subscribers.is_empty();
        }
        if emptied {
            subscribers.forget_empty_prefixes();
        }
    }

    /// Sends the gap notices still owed (a subscriber that missed events and has room again
    /// learns how many even when no further event comes), and forgets subscribers that have
    /// gone (whether or not an event for them came since).
    pub(super) fn flush_gap_notices(&self) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(PoisonError::into_inner);
        let keep = |subscriber: &mut Subscriber| {
            subscriber.send_gap_notice();
            !subscriber.sender.is_closed()
        };
        subscribers.others.retain_mut(keep);
        subscribers.by_types.retain(|_, subscribers| {
            subscribers.retain_mut(keep);
            !subscribers.is_empty()
        });
        let before = subscribers.by_prefix.len();
        subscribers.by_prefix.retain(|_, subscribers| {
            subscribers.retain_mut(keep);
            !subscribers.is_empty()
        });
        if subscribers.by_prefix.len() != before {
            subscribers.forget_empty_prefixes();
        }
    }

    /// Adds a subscription; its messages come out of the returned receiver.
    pub(super) fn subscribe(&self, subscription: Subscription) -> mpsc::Receiver<String> {
        let Subscription { filter, policy, buffer, index } = subscription;
        let (sender, receiver) = mpsc::channel(buffer);
        let subscriber = Subscriber { filter, sender, policy, next: 0, dropped: 0 };
        let mut subscribers = self.subscribers.lock().unwrap_or_else(PoisonError::into_inner);
        match index {
            Index::Prefix(prefix) => {
                subscribers.prefix_lengths.insert(prefix.len());
                subscribers.by_prefix.entry(prefix).or_default().push(subscriber);
            }
            Index::Types(types) => subscribers.by_types.entry(types).or_default().push(subscriber),
            Index::All => subscribers.others.push(subscriber),
        }
        receiver
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::EventType, pipeline::to_json_lines};

    fn subscribe(broadcaster: &Broadcaster, query: &[(&str, &str)]) -> mpsc::Receiver<String> {
        let query = query.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        broadcaster.subscribe(Subscription::parse(&query, 4096).unwrap())
    }

    fn publish(broadcaster: &Broadcaster, events: &[(EventType, &str)], counters: &Counters) {
        let events: Vec<SemanticEvent> =
            events.iter().map(|(kind, path)| SemanticEvent::sample(*kind, path, 1, "test", true)).collect();
        broadcaster.publish(&events, &to_json_lines(&events, counters), counters);
    }

    /// (`subscription_sequence`, event path) of every message waiting.
    fn received(receiver: &mut mpsc::Receiver<String>) -> Vec<(u64, String)> {
        std::iter::from_fn(|| receiver.try_recv().ok())
            .map(|text| {
                let message: serde_json::Value = serde_json::from_str(&text).unwrap();
                let path = message["event"]["context"]["filesystem"]["path"].as_str().unwrap().to_owned();
                (message["subscription_sequence"].as_u64().unwrap(), path)
            })
            .collect()
    }

    fn count(broadcaster: &Broadcaster) -> usize {
        let subscribers = broadcaster.subscribers.lock().unwrap();
        subscribers.others.len()
            + subscribers.by_prefix.values().map(Vec::len).sum::<usize>()
            + subscribers.by_types.values().map(Vec::len).sum::<usize>()
    }
    #[test]
    fn exact_paths_globs_and_types_each_get_their_events_in_order() {
        let broadcaster = Broadcaster::default();
        let counters = Counters::default();
        let mut exact = subscribe(&broadcaster, &[("path_pattern", "/w/a")]);
        let mut exact_write =
            subscribe(&broadcaster, &[("path_pattern", "/w/a"), ("event_types", "FilesystemWrite")]);
        let mut glob = subscribe(&broadcaster, &[("path_pattern", "/w/[ab]")]);
        let mut mkdirs = subscribe(&broadcaster, &[("event_types", "FilesystemMkdir")]);
        let mut creates_and_writes =
            subscribe(&broadcaster, &[("event_types", "FilesystemWrite, FilesystemCreate")]);
        let mut filesystem = subscribe(&broadcaster, &[("categories", "filesystem")]);
        let mut vector = subscribe(&broadcaster, &[("categories", "vector")]);
        let mut mkdirs_by_both =
            subscribe(&broadcaster, &[("categories", "filesystem"), ("event_types", "FilesystemMkdir")]);
        let mut far = subscribe(&broadcaster, &[("path_pattern", "/elsewhere/**")]);
        {
            let subscribers = broadcaster.subscribers.lock().unwrap();
            assert_eq!(subscribers.by_prefix.len(), 3, "exact path and globs are indexed by literal prefix");
            assert_eq!(subscribers.by_types.len(), 4, "types and categories are indexed by type set");
            assert!(subscribers.others.is_empty());
        }
        for _ in 0..2 {
            publish(
                &broadcaster,
                &[
                    (EventType::FilesystemCreate, "/w/a"),
                    (EventType::FilesystemWrite, "/w/b"),
                    (EventType::FilesystemWrite, "/w/a"),
                    (EventType::FilesystemMkdir, "/w/d"),
                    (EventType::FilesystemWrite, "/w/ab"),
                ],
                &counters,
            );
        }
        let numbered = |paths: &[&str]| -> Vec<(u64, String)> {
            paths.iter().enumerate().map(|(i, p)| (i as u64, (*p).to_owned())).collect()
        };
        assert_eq!(received(&mut exact), numbered(&["/w/a"; 4]));
        assert_eq!(received(&mut exact_write), numbered(&["/w/a"; 2]));
        assert_eq!(received(&mut glob), numbered(&["/w/a", "/w/b", "/w/a", "/w/a", "/w/b", "/w/a"]));
        assert_eq!(received(&mut mkdirs), numbered(&["/w/d"; 2]));
        assert_eq!(
            received(&mut creates_and_writes),
            numbered(&["/w/a", "/w/b", "/w/a", "/w/ab", "/w/a", "/w/b", "/w/a", "/w/ab"]),
            "in output order across its types"
        );
        assert_eq!(received(&mut filesystem).len(), 10);
        assert!(received(&mut vector).is_empty());
        assert_eq!(received(&mut mkdirs_by_both), numbered(&["/w/d"; 2]));
        assert!(received(&mut far).is_empty());
    }

    #[test]
    fn a_subscriber_that_has_gone_is_forgotten_without_an_event_for_it() {
        let broadcaster = Broadcaster::default();
        let exact = subscribe(&broadcaster, &[("path_pattern", "/w/a")]);
        let other = subscribe(&broadcaster, &[("event_types", "FilesystemMkdir")]);
        let _stays = subscribe(&broadcaster, &[("path_pattern", "/w/b")]);
        drop((exact, other));
        broadcaster.flush_gap_notices();
        assert_eq!(count(&broadcaster), 1);
    }
}
