//! The runner and the asynchronous adapter on synthetic events: order through the stages, held
//! events released on ticks and at the end, reconfiguration between batches, and the
//! asynchronous stage's channel policies (every event delivered, or counted as dropped).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::*;
use crate::{
    event::{EventType, SemanticEvent},
    telemetry::Counters,
};

fn event(id: u64) -> SemanticEvent {
    let mut event = SemanticEvent::sample(EventType::FilesystemWrite, "/p", 1, "t", true);
    event.event_id = id;
    event
}

/// Batches of event ids, then the end.
struct Batches(VecDeque<Vec<u64>>);

impl Source for Batches {
    fn name(&self) -> &'static str {
        "batches"
    }

    fn next(&mut self, _: Duration, batch: &mut EventBatch) -> Poll {
        match self.0.pop_front() {
            Some(ids) => {
                batch.events.extend(ids.into_iter().map(event));
                Poll::Ready
            }
            None => Poll::Ended,
        }
    }
}

/// Holds back events with odd ids until a tick or the end; a reload sends the next parity to
/// hold (`u64`).
struct HoldOdd {
    held: Vec<SemanticEvent>,
    parity: u64,
}

impl Stage for HoldOdd {
    fn name(&self) -> &'static str {
        "hold"
    }

    fn process(&mut self, batch: &mut EventBatch) {
        let (held, passed): (Vec<_>, Vec<_>) =
            batch.events.drain(..).partition(|e| e.event_id % 2 == self.parity);
        self.held.extend(held);
        batch.events = passed;
    }

    fn tick(&mut self, _: u64, batch: &mut EventBatch) {
        batch.events.append(&mut self.held);
    }

    fn flush(&mut self, batch: &mut EventBatch) {
        batch.events.append(&mut self.held);
    }

    fn reconfigure(&mut self, update: Update) {
        if let Some(parity) = settings_for::<u64>("hold", update) {
            self.parity = parity;
        }
    }
}

/// Keeps the ids reaching it.
struct Collect(Arc<Mutex<Vec<u64>>>);

impl Stage for Collect {
    fn name(&self) -> &'static str {
        "collect"
    }

    fn process(&mut self, batch: &mut EventBatch) {
        self.0.lock().unwrap().extend(batch.events.iter().map(|e| e.event_id));
    }
}

#[test]
fn held_events_flow_through_the_later_stages_at_the_end_and_everything_is_counted() {
    let counters = Arc::new(Counters::default());
    let out = Arc::new(Mutex::new(Vec::new()));
    let source = Batches(VecDeque::from([vec![1, 2, 3], vec![4, 5]]));
    let pipeline = Pipeline::new(Box::new(source), Arc::clone(&counters))
        .then(Box::new(HoldOdd { held: Vec::new(), parity: 1 }))
        .then(Box::new(Sequencer::default()))
        .then(Box::new(Collect(Arc::clone(&out))));
    assert_eq!(pipeline.graph(), ["batches", "hold", "sequence", "collect"]);
    pipeline.run(&crossbeam_channel::never());
    assert_eq!(*out.lock().unwrap(), [2, 4, 1, 3, 5], "held events come out at the end");
    let stages = counters.stages.summaries();
    assert_eq!((stages["hold"].events_in, stages["hold"].events_out), (5, 5));
    assert_eq!((stages["collect"].events_in, stages["batches"].events_out), (5, 5));
}

#[test]
fn a_reconfiguration_applies_between_two_batches_and_is_answered() {
    let counters = Arc::new(Counters::default());
    let out = Arc::new(Mutex::new(Vec::new()));
    let source = Batches(VecDeque::from([vec![1, 2], vec![3, 4]]));
    let pipeline = Pipeline::new(Box::new(source), Arc::clone(&counters))
        .then(Box::new(HoldOdd { held: Vec::new(), parity: 1 }))
        .then(Box::new(Collect(Arc::clone(&out))));
    let (reconfigure, changes) = crossbeam_channel::bounded(1);
    let (switched, mut has_switched) = tokio::sync::oneshot::channel();
    // Applied before the first batch: hold even ids instead.
    reconfigure.send(Reconfigure { updates: vec![("hold", Box::new(0u64))], switched }).unwrap();
    pipeline.run(&changes);
    has_switched.try_recv().expect("the pipeline says it switched");
    assert_eq!(*out.lock().unwrap(), [1, 3, 2, 4]);
}

#[test]
fn an_asynchronous_stage_gets_every_event_with_backpressure() {
    let counters = Arc::new(Counters::default());
    let got = Arc::new(Mutex::new(Vec::new()));
    let consumer = {
        let got = Arc::clone(&got);
        move |events: Vec<SemanticEvent>| {
            let got = Arc::clone(&got);
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                got.lock().unwrap().extend(events.iter().map(|e| e.event_id));
            }
        }
    };
    let offload = Offload::spawn("remote", 1, WhenFull::Block, &counters, consumer).unwrap();
    let source = Batches((0..20).map(|i| vec![2 * i, 2 * i + 1]).collect());
    Pipeline::new(Box::new(source), Arc::clone(&counters))
        .then(Box::new(offload))
        .run(&crossbeam_channel::never());
    assert_eq!(*got.lock().unwrap(), (0..40).collect::<Vec<_>>(), "all, in order, after finish");
    assert_eq!(counters.stages.summaries()["remote"].dropped, 0);
}

#[test]
fn an_asynchronous_stage_that_falls_behind_drops_and_counts_with_drop_newest() {
    let counters = Arc::new(Counters::default());
    let got = Arc::new(Mutex::new(0u64));
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    let consumer = {
        let got = Arc::clone(&got);
        move |events: Vec<SemanticEvent>| {
            let got = Arc::clone(&got);
            let released = Arc::clone(&released);
            async move {
                // The first batch waits until the pipeline has offered everything.
                let _ = released.lock().unwrap().recv();
                *got.lock().unwrap() += events.len() as u64;
            }
        }
    };
    let offload = Offload::spawn("remote", 2, WhenFull::DropNewest, &counters, consumer).unwrap();
    let source = Batches((0..10).map(|i| vec![i]).collect());
    let pipeline = Pipeline::new(Box::new(source), Arc::clone(&counters)).then(Box::new(Stop(Some(release))));
    pipeline.then(Box::new(offload)).run(&crossbeam_channel::never());
    let dropped = counters.stages.summaries()["remote"].dropped;
    assert!(dropped > 0, "a stalled consumer with room for 2 batches must drop some of 10");
    assert_eq!(*got.lock().unwrap() + dropped, 10, "every event delivered or counted");
    assert!(matches!(
        Offload::spawn("x", 1, WhenFull::DropOldest, &counters, |_| async {}),
        Err(OffloadError::DropOldest { .. })
    ));
}

/// Lets the stalled consumer go once the source has ended (dropping the sender at flush).
struct Stop(Option<std::sync::mpsc::Sender<()>>);

impl Stage for Stop {
    fn name(&self) -> &'static str {
        "stop"
    }

    fn process(&mut self, _: &mut EventBatch) {}

    fn flush(&mut self, _: &mut EventBatch) {
        self.0.take();
    }
}
