//! Barrier checkpoints while the engine runs, and what a shard restores at start.
//!
//! A coordinator thread starts checkpoint `id` every `--time-between-checkpoints`: it opens the
//! checkpoint in the store and hands every shard a part writer and the request. The shard injects
//! `Barrier(id)` into each of its sources (a file source records its offset first); the barrier
//! flows with the data, is aligned at every operator with several inputs, and every state operator
//! writes its entities by key group when it passes. Each sink pre-commits when the barrier reaches
//! it (a file sink once its bytes up to the barrier are written and synced). When every sink of
//! the shard has, the shard writes its part off the shard (glommio's blocking pool) and reports;
//! when every shard has, the coordinator commits the manifest, last and atomically. Only one
//! checkpoint is in flight: the next starts after the last one committed or was given up.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::doorbell::Waiter;
use super::StopHandle;
use crate::checkpoint::format::{Entries, Record};
use crate::checkpoint::{CheckpointStore, Manifest, PartInfo, PartWriter};
use crate::metrics::LiveCounters;

/// A shard's report on checkpoint `id`: its part, or why it could not write it.
pub(crate) type PartReport = (usize, u64, Result<PartInfo, String>);

/// What the coordinator hands a shard: a new checkpoint to take, or the outcome of earlier
/// ones.
pub(crate) enum Handed {
    /// Take checkpoint `id`, writing the shard's part with the writer.
    Request(u64, PartWriter),
    /// These checkpoints committed (`true`) or were given up, oldest first.
    Outcomes(Vec<(u64, bool)>),
}

#[derive(Default)]
struct Slot {
    request: Option<(u64, PartWriter)>,
    outcomes: Vec<(u64, bool)>,
}

/// The checkpoint requests and outcomes of every shard (set by the coordinator, taken by the
/// shard).
pub(crate) struct Requests {
    slots: Vec<Mutex<Slot>>,
    pub(crate) waiters: Vec<Arc<Waiter>>,
}

impl Requests {
    pub(crate) fn new(waiters: Vec<Arc<Waiter>>) -> Self {
        Requests {
            slots: waiters.iter().map(|_| Mutex::default()).collect(),
            waiters,
        }
    }

    fn slot(&self, shard: usize) -> std::sync::MutexGuard<'_, Slot> {
        self.slots[shard].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands checkpoint `id` to `shard`. It may replace a request the shard has not taken:
    /// that one was resolved (given up) before this one was begun, and its outcome, which
    /// the shard takes first, says so.
    fn put(&self, shard: usize, id: u64, part: PartWriter) {
        self.slot(shard).request = Some((id, part));
        self.waiters[shard].wake_if_parked();
    }

    /// Tells every shard how checkpoint `id` ended.
    fn resolve(&self, id: u64, committed: bool) {
        for shard in 0..self.slots.len() {
            self.slot(shard).outcomes.push((id, committed));
            self.waiters[shard].wake_if_parked();
        }
    }

    /// Waits on the shard until the coordinator hands it something (outcomes first: a
    /// checkpoint's outcome always reaches a shard before the next request does).
    pub(crate) async fn next(&self, shard: usize) -> Handed {
        let take = || {
            let mut slot = self.slot(shard);
            if !slot.outcomes.is_empty() {
                return Some(Handed::Outcomes(std::mem::take(&mut slot.outcomes)));
            }
            slot.request.take().map(|(id, p)| Handed::Request(id, p))
        };
        std::future::poll_fn(|cx| {
            if let Some(r) = take() {
                return std::task::Poll::Ready(r);
            }
            self.waiters[shard].park(cx);
            match take() {
                Some(r) => {
                    self.waiters[shard].unpark();
                    std::task::Poll::Ready(r)
                }
                None => std::task::Poll::Pending,
            }
        })
        .await
    }
}

/// The coordinator: one checkpoint every `interval` until the engine stops.
pub(crate) fn spawn_coordinator(
    store: CheckpointStore,
    requests: Arc<Requests>,
    reports: mpsc::Receiver<PartReport>,
    stop: StopHandle,
    interval: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("bettong-checkpoints".to_string())
        .spawn(move || {
            let shards = requests.slots.len();
            let sleep = |d: Duration| {
                let until = Instant::now() + d;
                while Instant::now() < until && !stop.is_stopping() {
                    std::thread::sleep(Duration::from_millis(5).min(d));
                }
            };
            loop {
                sleep(interval);
                if stop.is_stopping() {
                    return;
                }
                let id = match store.next_id() {
                    Ok(id) => id,
                    Err(e) => {
                        tracing::error!("checkpoints: {e}");
                        continue;
                    }
                };
                let started = Instant::now();
                let writer = match store.begin(id) {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::error!("checkpoint {id}: {e}");
                        continue;
                    }
                };
                let mut handed = true;
                for shard in 0..shards {
                    match writer.part(shard as u32) {
                        Ok(part) => requests.put(shard, id, part),
                        Err(e) => {
                            tracing::error!("checkpoint {id}: {e}");
                            handed = false;
                        }
                    }
                }
                let mut parts = Vec::with_capacity(shards);
                let deadline = Instant::now() + Duration::from_secs(30).max(interval * 10);
                // A stop gives up the checkpoint in flight at once (its outcome lets a
                // two-phase-commit sink send what it holds back for it).
                while handed && parts.len() < shards && !stop.is_stopping() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match reports.recv_timeout(left.min(Duration::from_millis(20))) {
                        Ok((_, rid, Ok(info))) if rid == id => parts.push(info),
                        Ok((shard, rid, Err(e))) if rid == id => {
                            tracing::error!("checkpoint {id}: shard {shard}: {e}");
                            break;
                        }
                        Ok(_) => {} // a report of an earlier, given-up checkpoint
                        Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                        Err(_) => break,
                    }
                }
                let committed = if parts.len() == shards {
                    let bytes: u64 = parts.iter().map(|p| p.bytes).sum();
                    match store.commit(id, Manifest::new(id, shards as u32, parts)) {
                        Ok(()) => {
                            tracing::debug!(
                                "checkpoint {id}: {bytes} bytes in {:?}",
                                started.elapsed()
                            );
                            true
                        }
                        Err(e) => {
                            tracing::error!("checkpoint {id}: {e}");
                            false
                        }
                    }
                } else {
                    if !stop.is_stopping() {
                        tracing::warn!("checkpoint {id}: not every shard finished; given up");
                    }
                    let _ = store.abort(id);
                    false
                };
                requests.resolve(id, committed);
            }
        })
}

/// What a shard restores at start, from the last complete checkpoint.
#[derive(Default)]
pub(crate) struct Restored {
    /// Entities by state operator name.
    pub(crate) states: HashMap<String, Vec<Entries>>,
    /// Offsets of this shard's sources, by source name.
    pub(crate) offsets: HashMap<String, u64>,
    /// Positions of this shard's sinks, by sink name.
    pub(crate) positions: HashMap<String, u64>,
    /// The points of reference of connector sources' streams, by source name (every shard
    /// gets them all: a stream can come back on any shard's connection).
    pub(crate) streams: HashMap<String, HashMap<u64, u64>>,
    /// The id of the checkpoint restored.
    pub(crate) checkpoint: Option<u64>,
    /// The committed length of every file of each file sink, by sink name and path (every
    /// shard gets them all).
    pub(crate) files: HashMap<String, HashMap<String, u64>>,
}

/// One shard's side of the checkpoint in flight. Its records can come before the shard has
/// the coordinator's request (a barrier from another shard can overtake it), so it is made by
/// whichever comes first and written once it has both its part writer and every sink's
/// pre-commit.
pub(crate) struct InFlight {
    pub(crate) id: u64,
    part: Option<PartWriter>,
    records: Vec<Record>,
    sinks_left: usize,
    /// When the shard got the request (ns, `metrics::now_ns`).
    requested: Option<u64>,
}

/// A shard's checkpoint state: the one in flight, where reports go, what was restored.
#[derive(Default)]
pub(crate) struct ShardCheckpoints {
    pub(crate) in_flight: RefCell<Option<InFlight>>,
    pub(crate) reports: Option<mpsc::Sender<PartReport>>,
    pub(crate) sinks: Cell<usize>,
    /// Sinks on this shard whose input has ended: no barrier will reach them again, so no
    /// later checkpoint waits for them.
    ended_sinks: Cell<usize>,
    pub(crate) restored: RefCell<Restored>,
    /// The outcomes of recent checkpoints, oldest first (the last [`OUTCOMES_KEPT`]), and the
    /// connector tasks waiting for the next one.
    pub(crate) outcomes: RefCell<std::collections::VecDeque<(u64, bool)>>,
    pub(crate) outcome_waiters: super::shard::WaitList,
}

/// Outcomes a shard keeps for connectors that have not looked yet. Only one checkpoint is in
/// flight at a time and a connector looks at each outcome as it comes, so a few are plenty.
const OUTCOMES_KEPT: usize = 64;

impl ShardCheckpoints {
    /// Applies `f` to checkpoint `id` in flight, starting it if it is newer than the one in
    /// flight (an older one was given up); does nothing for an older id. Returns the
    /// checkpoint when it is ready to be written.
    fn with(&self, id: u64, f: impl FnOnce(&mut InFlight)) -> Option<InFlight> {
        let mut slot = self.in_flight.borrow_mut();
        if slot.as_ref().is_none_or(|c| c.id < id) {
            *slot = Some(InFlight {
                id,
                part: None,
                records: Vec::new(),
                sinks_left: self.sinks.get().saturating_sub(self.ended_sinks.get()),
                requested: None,
            });
        }
        let c = slot.as_mut().filter(|c| c.id == id)?;
        f(c);
        if c.part.is_some() && c.sinks_left == 0 {
            slot.take()
        } else {
            None
        }
    }

    /// The coordinator's request for checkpoint `id` (with the shard's part writer).
    pub(crate) fn begin(&self, id: u64, part: PartWriter) -> Option<InFlight> {
        self.with(id, |c| {
            c.part = Some(part);
            c.requested = Some(crate::metrics::now_ns());
        })
    }

    /// The records of checkpoint `id` while it is in flight.
    #[cfg(test)]
    pub(crate) fn records_of(&self, id: u64) -> Vec<Record> {
        self.in_flight
            .borrow()
            .as_ref()
            .filter(|c| c.id == id)
            .map(|c| c.records.clone())
            .unwrap_or_default()
    }

    /// Adds a record to checkpoint `id`.
    pub(crate) fn record(&self, id: u64, r: Record) {
        let ready = self.with(id, |c| c.records.push(r));
        debug_assert!(ready.is_none(), "a record never completes a checkpoint");
    }

    /// A sink has pre-committed checkpoint `id`; returns the checkpoint once it is complete.
    pub(crate) fn sink_done(&self, id: u64) -> Option<InFlight> {
        self.with(id, |c| c.sinks_left = c.sinks_left.saturating_sub(1))
    }

    /// A sink's input has ended after it passed barrier `last_barrier` (`None`: it passed
    /// none). The checkpoint in flight, if newer, no longer waits for it, and neither does
    /// any later one. Returns the checkpoint in flight if that completed it.
    pub(crate) fn sink_ended(&self, last_barrier: Option<u64>) -> Option<InFlight> {
        self.ended_sinks.set(self.ended_sinks.get() + 1);
        let mut slot = self.in_flight.borrow_mut();
        let c = slot.as_mut()?;
        if last_barrier.is_some_and(|b| b >= c.id) {
            // It passed this one's barrier: it pre-commits (or has) as any sink does.
            return None;
        }
        c.sinks_left = c.sinks_left.saturating_sub(1);
        if c.part.is_some() && c.sinks_left == 0 {
            slot.take()
        } else {
            None
        }
    }

    /// Records how checkpoints ended and wakes the connectors waiting to hear.
    pub(crate) fn resolved(&self, outcomes: Vec<(u64, bool)>, live: &LiveCounters) {
        for &(id, committed) in &outcomes {
            if committed {
                live.checkpoints_committed.inc();
                live.checkpoint_last_committed.set(id);
            } else {
                live.checkpoints_aborted.inc();
            }
        }
        {
            let mut kept = self.outcomes.borrow_mut();
            kept.extend(outcomes);
            while kept.len() > OUTCOMES_KEPT {
                kept.pop_front();
            }
        }
        self.outcome_waiters.wake_all();
    }

    /// The first outcome of a checkpoint newer than `after`, if one has come.
    pub(crate) fn outcome_after(&self, after: u64) -> Option<(u64, bool)> {
        self.outcomes
            .borrow()
            .iter()
            .find(|(id, _)| *id > after)
            .copied()
    }

    /// A sink refuses checkpoint `id` (a two-phase-commit sink voted no): the shard reports
    /// it failed, and the coordinator gives it up.
    pub(crate) fn refuse(&self, shard: usize, id: u64, why: String) {
        {
            let mut slot = self.in_flight.borrow_mut();
            if slot.as_ref().is_some_and(|c| c.id == id) {
                *slot = None;
            }
        }
        if let Some(tx) = &self.reports {
            let _ = tx.send((shard, id, Err(why)));
        }
    }

    /// Writes a finished shard checkpoint off the shard and reports it to the coordinator.
    pub(crate) async fn write(&self, shard: usize, done: InFlight, live: &LiveCounters) {
        let InFlight {
            id,
            part,
            records,
            requested,
            ..
        } = done;
        let Some(mut part) = part else { return };
        let result = glommio::executor()
            .spawn_blocking(move || {
                for r in records {
                    part.write(r).map_err(|e| e.to_string())?;
                }
                part.finish().map_err(|e| e.to_string())
            })
            .await;
        if let Ok(info) = &result {
            live.checkpoint_parts.inc();
            live.checkpoint_bytes.add(info.bytes);
            if let Some(at) = requested {
                live.checkpoint_last_ns
                    .set(crate::metrics::now_ns().saturating_sub(at));
            }
        }
        if let Some(tx) = &self.reports {
            let _ = tx.send((shard, id, result));
        }
    }
}
