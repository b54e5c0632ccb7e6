//! `to_state`: a state computation over keyed state entities. The operator owns its
//! [`KeyedState`]; the exchange in front of it has already brought each message to the shard
//! that owns its key's group.

use std::rc::Rc;
use std::sync::Arc;

use super::flat_map::emit_each;
use super::{Downstream, Input, Ports};
use crate::event::{Control, Stamp};
use crate::metrics::{ComputationTimer, ShardMetrics};
use crate::runtime::run::{InPlace, Run};
use crate::state::{EntityMap, KeyedState};
use crate::Key;

pub(crate) type KeyFn<T, K> = Arc<dyn Fn(&T) -> &K + Send + Sync>;

pub(crate) struct StateOp<K: Key + ?Sized, S, U, F, KF> {
    pub(crate) f: Arc<F>,
    /// The key function's own type, so that the lookup calls it inline.
    pub(crate) key: Arc<KF>,
    pub(crate) states: Rc<KeyedState<K, S>>,
    pub(crate) next: Downstream<U>,
    pub(crate) ports: Ports,
    pub(crate) timer: ComputationTimer,
    pub(crate) metrics: Rc<ShardMetrics>,
    /// Writes the entities into checkpoint `id` (when its barrier passes).
    pub(crate) on_barrier: Rc<dyn Fn(u64)>,
}

impl<T, K, S, U, I, F, KF> Input<T> for StateOp<K, S, U, F, KF>
where
    K: Key + ?Sized,
    S: Default,
    U: 'static,
    I: IntoIterator<Item = U>,
    F: Fn(T, &mut S) -> I,
    KF: Fn(&T) -> &K,
{
    #[inline]
    fn data(&self, msg: T, stamp: Stamp) {
        if !self.one(msg, stamp) {
            self.metrics.filtered(stamp.ingest_ns);
        }
    }

    /// A source's batch (on 1 shard, where no exchange stands between them), each message
    /// straight into the computation's call in this loop, and the messages without output
    /// counted once at the end (as in `data_run`). Message by message, each was a call
    /// through the source's `Downstream` with this operator's prologue and epilogue around
    /// it, and a latency record. Market Spread on 1 shard (perf/peer `bettong-iter`):
    /// 176.1 -> 153.3 instructions per message (callgrind, with `ComputationTimer::time`'s
    /// timed path out of line, which this loop needed to inline it); 10 alternating rounds
    /// 1.31× (9 of 10), CPU per message 10.1 -> 7.2 ns; over TCP (`bettong-tcp`, the TCP
    /// source then hands its frames over in batches too) 1.15× (7 of 10).
    fn data_batch(&self, batch: &mut Vec<T>, stamp: Stamp) {
        let mut filtered = 0;
        for msg in batch.drain(..) {
            filtered += usize::from(!self.one(msg, stamp));
        }
        if filtered > 0 {
            self.metrics.filtered_n(stamp.ingest_ns, filtered);
        }
    }

    fn batches(&self) -> bool {
        true
    }

    /// Each message read out of where it lies once, straight into the computation's call
    /// (`runtime::run` has the measurement). The messages without output, nearly all of a
    /// filter's, are counted finished once, at the end of the run (they share its stamp):
    /// counted one by one, the latency bookkeeping was 12 of the 90 instructions per message
    /// that Market Spread's state operator spent. `perf/callgrind.sh`: `IterSource` on 2
    /// shards 203.4 -> 192.4 instructions per message, 198.3 -> 181.8 with nothing crossing,
    /// the pushers 183.5 -> 171.5 (1 shard unchanged at 176.1: its `IterSource` handed over
    /// no runs then, and hands over batches now, `data_batch`); 10 alternating rounds on 2
    /// shards 1.05× (6 of 10), CPU per message 0.97×.
    fn data_run(&self, mut run: Run<'_, T>, stamp: Stamp) {
        let mut filtered = 0;
        while let Some(msg) = run.next_in_place() {
            filtered += usize::from(!self.one_in_place(msg, stamp));
        }
        if filtered > 0 {
            self.metrics.filtered_n(stamp.ingest_ns, filtered);
        }
    }

    fn control(&self, port: usize, event: Control) {
        for e in self.ports.align(port, event) {
            if let Control::Barrier(id) = e {
                (self.on_barrier)(id);
            }
            self.next.control(e);
        }
    }

    fn ports(&self) -> Option<&Ports> {
        Some(&self.ports)
    }
}

impl<K: Key + ?Sized, S: Default, U, F, KF> StateOp<K, S, U, F, KF> {
    /// `data`'s body; returns whether the message had an output.
    #[inline(always)]
    fn one<T, I>(&self, msg: T, stamp: Stamp) -> bool
    where
        I: IntoIterator<Item = U>,
        F: Fn(T, &mut S) -> I,
        KF: Fn(&T) -> &K,
        U: 'static,
    {
        let outputs = {
            let mut map = self.states.map.borrow_mut();
            let k = (self.key)(&msg);
            match map.get_mut(k) {
                Some(state) => self.timer.time(|| (self.f)(msg, state)),
                None => self.first(&mut map, msg),
            }
        };
        emit_each(outputs, &self.next, stamp)
    }

    /// `data`'s body for a message in place. Two bodies rather than `data` going through this
    /// one (with the message put in a `ManuallyDrop` to be taken in place): that way LLVM
    /// inlined neither well, 1 shard went from 187.1 to 201.1 instructions per message and 2
    /// shards with nothing crossing from 207.9 to 223.9 (perf/peer `bettong-iter` under
    /// callgrind). Inlined into the run's loop: out of line, the run cost 228.8 there.
    /// Returns whether the message had an output.
    #[inline(always)]
    fn one_in_place<T, I>(&self, msg: InPlace<'_, T>, stamp: Stamp) -> bool
    where
        I: IntoIterator<Item = U>,
        F: Fn(T, &mut S) -> I,
        KF: Fn(&T) -> &K,
        U: 'static,
    {
        let outputs = {
            let mut map = self.states.map.borrow_mut();
            let k = (self.key)(msg.get());
            match map.get_mut(k) {
                Some(state) => self.timer.time(|| (self.f)(msg.take(), state)),
                None => self.first(&mut map, msg.take()),
            }
        };
        emit_each(outputs, &self.next, stamp)
    }

    /// The first message of a key on this shard: creates its entity, then runs the
    /// computation. Out of line and cold, so that `data`'s common case (the entity exists)
    /// keeps a small frame: inlined, the insert path's registers and stack were saved and
    /// restored on every message (Market Spread, 1 shard, perf/peer bettong-iter under
    /// callgrind: 216.9 -> 215.1 instructions per message).
    #[cold]
    #[inline(never)]
    fn first<T, I>(&self, map: &mut EntityMap<K, S>, msg: T) -> I
    where
        I: IntoIterator<Item = U>,
        F: Fn(T, &mut S) -> I,
        KF: Fn(&T) -> &K,
    {
        let state = map.entry((self.key)(&msg).to_owned()).or_default();
        self.timer.time(|| (self.f)(msg, state))
    }
}
