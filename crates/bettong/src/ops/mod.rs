//! Operators as they run on a shard: one per file, each an [`Input`] that the operator
//! upstream calls directly.
//!
//! Chained operators on a shard call each other with one indirect call per message (the
//! reason the local path is cheap). Control events take the same path, but every input of an
//! operator is a numbered *port*, so an operator with several inputs (a merge, a diamond, an
//! exchange that receives from every shard) can align them with [`Ports`]:
//! - a watermark is forwarded as the minimum over the ports that have not ended and are not
//!   idle; when every open port is idle, `Idle` is forwarded;
//! - a barrier is forwarded once every open port has delivered it (until then a port that has
//!   passed it is *held*: an exchange stops draining its ring);
//! - end of stream is forwarded once every port has ended.

pub(crate) mod flat_map;
pub(crate) mod map;
pub(crate) mod merge;
pub(crate) mod sink;
pub(crate) mod state;
pub(crate) mod target;
pub(crate) mod tee;
pub(crate) mod window;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::event::{Control, Stamp};
use crate::runtime::run::Run;
use crate::runtime::shard::{Gauge, WaitList};
use target::Target;

/// The receiving side of an operator on a shard.
pub(crate) trait Input<T> {
    /// One data event (the hot path).
    fn data(&self, msg: T, stamp: Stamp);
    /// Data events that share one stamp, in order; leaves `batch` empty. A source hands its
    /// messages over this way only to an operator whose [`batches`](Self::batches) is true;
    /// any other gets them one [`data`](Self::data) call at a time, as here.
    fn data_batch(&self, batch: &mut Vec<T>, stamp: Stamp) {
        for msg in batch.drain(..) {
            self.data(msg, stamp);
        }
    }
    /// Data events that share one stamp, in order, handed over where they lie: this shard's
    /// messages of a chunk that a `key_by` exchange split (`runtime::split`), or a stretch of
    /// a lane from another shard (`runtime::lane`). The default is a loop over
    /// [`data`](Self::data), which each operator's copy of this method calls statically,
    /// where the exchange would call `data` through the vtable per message; an operator that
    /// passes each message on by value does better taking it in place (`runtime::run`).
    fn data_run(&self, run: Run<'_, T>, stamp: Stamp) {
        for msg in run {
            self.data(msg, stamp);
        }
    }
    /// True for an operator that does better with a batch than with its messages one by one:
    /// an exchange, which sorts a batch by destination, and a state computation, which runs a
    /// batch in one loop with the computation inlined (`StateOp::data_batch` has the
    /// measurement). For the others a source keeps calling `data`: through a batch that the
    /// default `data_batch` hands to `data` one message at a time, Market Spread on 1 shard
    /// ran 20% slower (perf/peer `bettong-iter`, medians of 8 alternating runs, 43.5 -> 34.1
    /// M msgs/s), the messages written into the batch and read back out, and each still a
    /// call.
    fn batches(&self) -> bool {
        false
    }
    /// One control event, arriving on input `port`.
    fn control(&self, port: usize, event: Control);
    /// The operator's port alignment, if it aligns its inputs (an exchange's drain asks it
    /// whether a port is held).
    fn ports(&self) -> Option<&Ports> {
        None
    }
    /// Data for input `port` that arrives while the edge's `held` flag is set (only a merge's
    /// edges have such a flag): the merge queues it if that input is held.
    #[cold]
    fn held_data(&self, _port: usize, msg: T, stamp: Stamp) {
        self.data(msg, stamp)
    }
    /// True for an operator whose edges carry a `held` flag (a merge).
    fn holds_data(&self) -> bool {
        false
    }
    /// A gauge of input `port` alone (a merge's held queue), for the sources upstream of
    /// that input.
    fn input_gauge(&self, _port: usize) -> Option<crate::runtime::shard::Gauge> {
        None
    }
}

/// Where an operator sends its outputs: the next operator's input and the port it arrives
/// on, and the gauges of everything downstream (a source stops reading while one is over).
pub(crate) struct Downstream<T> {
    /// Receives data events (called through a [`Target`]: no `Rc` offset per message).
    pub(crate) data: Target<T>,
    /// Receives control events on `port` (usually the same operator as `data`; a merge passes
    /// data straight through and only aligns control).
    pub(crate) ctl: Rc<dyn Input<T>>,
    pub(crate) port: usize,
    pub(crate) gauges: Rc<[Gauge]>,
    /// Set while data on this edge must wait: an edge into a merge shares the merge's "some
    /// input is held" flag, and its data then goes to the merge (`held_data`), which queues
    /// it if this input is the held one. Never set on other edges. A flag on every edge
    /// rather than a hop through the merge for the data of its edges, because the hop copied
    /// each message once more. `bash perf/callgrind.sh`, instructions per message, without
    /// either / with the hop / with the flag: Market Spread over TCP 246.2 / 276.1 / 253.0;
    /// in-process `IterSource` (no merge) 215.0 / 215.0 / 218.0.
    pub(crate) held: Rc<Cell<bool>>,
}

impl<T> Clone for Downstream<T> {
    fn clone(&self) -> Self {
        Downstream {
            data: self.data.clone(),
            ctl: self.ctl.clone(),
            port: self.port,
            gauges: self.gauges.clone(),
            held: self.held.clone(),
        }
    }
}

impl<T: 'static> Downstream<T> {
    /// A downstream that enters `input` on `port`.
    pub(crate) fn to(input: Rc<dyn Input<T>>, port: usize, gauges: Rc<[Gauge]>) -> Self {
        Downstream {
            data: Target::new(input.clone()),
            ctl: input,
            port,
            gauges,
            held: Rc::new(Cell::new(false)),
        }
    }

    #[inline]
    pub(crate) fn data(&self, msg: T, stamp: Stamp) {
        if self.held.get() {
            return self.ctl.held_data(self.port, msg, stamp);
        }
        self.data.data(msg, stamp)
    }

    /// Hands `batch` on (see [`Input::data_batch`]); leaves it empty.
    #[inline]
    pub(crate) fn data_batch(&self, batch: &mut Vec<T>, stamp: Stamp) {
        if self.held.get() {
            for msg in batch.drain(..) {
                self.ctl.held_data(self.port, msg, stamp);
            }
            return;
        }
        self.data.data_batch(batch, stamp)
    }

    /// Hands `run` on (see [`Input::data_run`]).
    #[inline]
    pub(crate) fn data_run(&self, run: Run<'_, T>, stamp: Stamp) {
        if self.held.get() {
            for msg in run {
                self.ctl.held_data(self.port, msg, stamp);
            }
            return;
        }
        self.data.data_run(run, stamp)
    }

    /// True when the operator downstream takes batches (see [`Input::batches`]).
    pub(crate) fn batches(&self) -> bool {
        self.data.batches()
    }

    pub(crate) fn control(&self, event: Control) {
        self.ctl.control(self.port, event)
    }
}

/// Control alignment over an operator's input ports (see the module docs).
///
/// Invariant: `forwarded_watermark` never decreases, and a barrier or end is forwarded at most
/// once per id.
pub(crate) struct Ports {
    state: RefCell<PortState>,
    /// Some port is held: a flag the exchange reads per message, so that the common case (no
    /// checkpoint aligning) costs one load instead of a borrow of the state. Shared (`Rc`) so
    /// that an exchange can read it without a call through its operator (`any_held_flag`).
    any_held: Rc<Cell<bool>>,
    /// Woken when held ports are released (a barrier was forwarded).
    released: WaitList,
}

struct PortState {
    watermark: Vec<u64>,
    ended: Vec<bool>,
    idle: Vec<bool>,
    forwarded_idle: bool,
    /// The barrier each port has delivered and is held on, if any.
    barrier: Vec<Option<u64>>,
    forwarded_watermark: u64,
    forwarded_end: bool,
}

impl Ports {
    pub(crate) fn new(ports: usize) -> Self {
        let ports = ports.max(1);
        Ports {
            state: RefCell::new(PortState {
                watermark: vec![0; ports],
                ended: vec![false; ports],
                idle: vec![false; ports],
                forwarded_idle: false,
                barrier: vec![None; ports],
                forwarded_watermark: 0,
                forwarded_end: false,
            }),
            released: WaitList::default(),
            any_held: Rc::new(Cell::new(false)),
        }
    }

    /// Takes a control event on `port` and returns the events to forward downstream (at most
    /// two: a watermark and a barrier or an end can fall due together).
    pub(crate) fn align(&self, port: usize, event: Control) -> Vec<Control> {
        let mut s = self.state.borrow_mut();
        let n = s.watermark.len();
        if port >= n {
            return Vec::new();
        }
        let mut out = Vec::new();
        match event {
            Control::Watermark(t) => {
                let w = &mut s.watermark[port];
                *w = (*w).max(t);
                s.idle[port] = false;
            }
            Control::Idle => s.idle[port] = true,
            Control::Barrier(id) => s.barrier[port] = Some(id),
            Control::End => s.ended[port] = true,
        }
        // Watermark: the minimum over open ports that are not idle (an ended or idle port no
        // longer holds it back).
        let min = (0..n)
            .filter(|&p| !s.ended[p] && !s.idle[p])
            .map(|p| s.watermark[p])
            .min();
        match min {
            Some(min) => {
                s.forwarded_idle = false;
                if min > s.forwarded_watermark {
                    s.forwarded_watermark = min;
                    out.push(Control::Watermark(min));
                }
            }
            None if (0..n).any(|p| !s.ended[p]) && !s.forwarded_idle => {
                s.forwarded_idle = true;
                out.push(Control::Idle);
            }
            None => {}
        }
        // Barrier: forwarded when every open port holds one (they carry the same id: a
        // coordinator has at most one checkpoint in flight).
        let open: Vec<usize> = (0..n).filter(|&p| !s.ended[p]).collect();
        if let Some(id) = s.barrier.iter().flatten().copied().max() {
            if open.iter().all(|&p| s.barrier[p].is_some()) {
                s.barrier.iter_mut().for_each(|b| *b = None);
                out.push(Control::Barrier(id));
            }
        }
        if open.is_empty() && !s.forwarded_end {
            s.forwarded_end = true;
            out.push(Control::End);
        }
        self.any_held.set(s.barrier.iter().any(Option::is_some));
        drop(s);
        // Whoever waits on a port (a held ring, a held local input) looks again.
        self.released.wake_all();
        out
    }

    /// The "some port is held" flag, for an input that checks it per message.
    pub(crate) fn any_held_flag(&self) -> Rc<Cell<bool>> {
        self.any_held.clone()
    }

    /// True while `port` has delivered a barrier that the other ports have not: its input
    /// must not deliver more data until the barrier is forwarded.
    #[inline]
    pub(crate) fn is_held(&self, port: usize) -> bool {
        self.any_held.get()
            && self
                .state
                .borrow()
                .barrier
                .get(port)
                .is_some_and(Option::is_some)
    }

    /// True once `port` has delivered end of stream.
    pub(crate) fn is_ended(&self, port: usize) -> bool {
        self.state.borrow().ended.get(port).copied().unwrap_or(true)
    }

    /// Registers a task to wake when held ports are released.
    pub(crate) fn on_release(&self, waker: &std::task::Waker) {
        self.released.register(waker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_is_the_minimum_of_open_ports() {
        let p = Ports::new(2);
        assert_eq!(p.align(0, Control::Watermark(10)), vec![]);
        assert_eq!(
            p.align(1, Control::Watermark(5)),
            vec![Control::Watermark(5)]
        );
        assert_eq!(
            p.align(1, Control::Watermark(20)),
            vec![Control::Watermark(10)]
        );
        // An older watermark on a port never moves it back.
        assert_eq!(p.align(0, Control::Watermark(3)), vec![]);
        // Port 1 ends: port 0 alone decides.
        assert_eq!(p.align(1, Control::End), vec![]);
        assert_eq!(
            p.align(0, Control::Watermark(30)),
            vec![Control::Watermark(30)]
        );
        assert_eq!(p.align(0, Control::End), vec![Control::End]);
        assert_eq!(p.align(0, Control::End), vec![]);
    }

    #[test]
    fn idle_ports_do_not_hold_the_watermark_back() {
        let p = Ports::new(3);
        assert_eq!(p.align(0, Control::Watermark(10)), vec![]);
        assert_eq!(p.align(1, Control::Idle), vec![]);
        assert_eq!(
            p.align(2, Control::Watermark(20)),
            vec![Control::Watermark(10)]
        );
        assert_eq!(p.align(0, Control::Idle), vec![Control::Watermark(20)]);
        assert_eq!(p.align(2, Control::Idle), vec![Control::Idle]);
        assert_eq!(p.align(1, Control::Idle), vec![], "idle is forwarded once");
        // An idle port that speaks again counts again (its watermark may be behind).
        assert_eq!(p.align(1, Control::Watermark(5)), vec![]);
        assert_eq!(
            p.align(1, Control::Watermark(25)),
            vec![Control::Watermark(25)]
        );
    }

    #[test]
    fn barrier_waits_for_every_open_port_and_holds_the_early_ones() {
        let p = Ports::new(3);
        assert_eq!(p.align(0, Control::Barrier(1)), vec![]);
        assert!(p.is_held(0) && !p.is_held(1));
        assert_eq!(p.align(2, Control::Barrier(1)), vec![]);
        assert_eq!(p.align(1, Control::Barrier(1)), vec![Control::Barrier(1)]);
        assert!(!p.is_held(0) && !p.is_held(2));
        // A port that ends counts as aligned.
        assert_eq!(p.align(0, Control::Barrier(2)), vec![]);
        assert_eq!(p.align(1, Control::End), vec![]);
        assert_eq!(p.align(2, Control::Barrier(2)), vec![Control::Barrier(2)]);
    }
}
