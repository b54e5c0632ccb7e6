//! A merge of several inputs of one type. Data goes from each input straight to the next
//! operator; control events are aligned over the inputs.
//!
//! Barrier alignment holds data: once an input has delivered a barrier that the others have
//! not, what it sends next (data and control) waits here, in order, until the barrier is
//! forwarded. Without the hold, that input's data after the barrier reached the operators
//! after the merge (and their state, which the forwarded barrier then saved) ahead of the
//! barrier, and a restore from that checkpoint replayed it a second time.
//!
//! Each edge into a merge carries the merge's "some input is held" flag
//! ([`Downstream::held`](super::Downstream)): while it is clear (no checkpoint aligning here),
//! the edge calls the next operator directly; while it is set, the edge's data comes here
//! ([`Input::held_data`]) and waits if its input is the held one.
//!
//! A held input's queue raises that input's gauge at [`HOLD_LIMIT`] events, so the sources
//! upstream of that input (and only that input: the barrier awaited comes by another) stop
//! reading until the barrier is forwarded; without it, the queue grew with the input's rate
//! for as long as the slowest input's barrier took (up to the checkpoint's 30 s deadline).
//!
//! **Invariant:** an input's queue is empty unless the input is held.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use super::{Downstream, Input, Ports};
use crate::event::{Control, Event, Stamp};
use crate::runtime::shard::{Gauge, WaitList};

/// Events a held input's queue takes before that input's gauge rises.
pub(crate) const HOLD_LIMIT: usize = 4096;

pub(crate) struct Merge<T> {
    next: Downstream<T>,
    ports: Ports,
    /// What each held input sent after its barrier, in order.
    held: RefCell<Vec<VecDeque<Event<T>>>>,
    /// Each input's gauge: over while its queue holds [`HOLD_LIMIT`] events or more.
    gauges: Vec<Gauge>,
    /// The shard's waiters on fallen gauges.
    relief: Rc<WaitList>,
}

impl<T: 'static> Merge<T> {
    pub(crate) fn new(next: Downstream<T>, inputs: usize, relief: Rc<WaitList>) -> Self {
        let ports = Ports::new(inputs);
        let inputs = inputs.max(1);
        Merge {
            next,
            held: RefCell::new((0..inputs).map(|_| VecDeque::new()).collect()),
            gauges: (0..inputs).map(|_| Gauge::default()).collect(),
            relief,
            ports,
        }
    }

    fn queue(&self, port: usize, event: Event<T>) {
        if let Some(q) = self.held.borrow_mut().get_mut(port) {
            q.push_back(event);
            if q.len() >= HOLD_LIMIT {
                self.gauges[port].set(true);
            }
        }
    }

    /// Aligns `event` from input `port` and forwards what falls due.
    fn align(&self, port: usize, event: Control) {
        for e in self.ports.align(port, event) {
            self.next.control(e);
        }
    }

    /// Delivers what waited on every input that is no longer held, in order. A barrier among
    /// it can hold its input again (the next checkpoint's) or release the others, so this
    /// goes round until nothing moves.
    fn release(&self) {
        // The length first: a `for` keeps its iterator expression's temporaries (a borrow
        // here) alive for the whole loop.
        let inputs = self.held.borrow().len();
        loop {
            let mut moved = false;
            for port in 0..inputs {
                while !self.ports.is_held(port) {
                    let Some(event) = self.held.borrow_mut()[port].pop_front() else {
                        break;
                    };
                    moved = true;
                    match event {
                        Event::Data(m, s) => self.next.data(m, s),
                        Event::Control(c) => self.align(port, c),
                    }
                }
            }
            if !moved {
                self.relieve();
                return;
            }
        }
    }
}

impl<T> Merge<T> {
    /// Lowers the gauges of the queues back under the limit, and wakes the sources waiting.
    fn relieve(&self) {
        let held = self.held.borrow();
        let mut fell = false;
        for (q, gauge) in held.iter().zip(&self.gauges) {
            if gauge.is_over() && q.len() < HOLD_LIMIT {
                gauge.set(false);
                fell = true;
            }
        }
        drop(held);
        if fell {
            self.relief.wake_all();
        }
    }
}

impl<T: 'static> Input<T> for Merge<T> {
    /// Data that names no input (an exchange's drain into a merge): aligned per ring by the
    /// drain itself, so it goes straight on.
    fn data(&self, msg: T, stamp: Stamp) {
        self.next.data(msg, stamp)
    }

    fn control(&self, port: usize, event: Control) {
        if self.ports.is_held(port) {
            self.queue(port, Event::Control(event));
            return;
        }
        self.align(port, event);
        self.release();
    }

    /// A message from input `port` while some input is held.
    #[cold]
    #[inline(never)]
    fn held_data(&self, port: usize, msg: T, stamp: Stamp) {
        if self.ports.is_held(port) {
            self.queue(port, Event::Data(msg, stamp));
        } else {
            self.next.data(msg, stamp);
        }
    }

    fn holds_data(&self) -> bool {
        true
    }

    fn input_gauge(&self, port: usize) -> Option<Gauge> {
        self.gauges.get(port).cloned()
    }

    fn ports(&self) -> Option<&Ports> {
        Some(&self.ports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logs what reaches it.
    struct Log(RefCell<Vec<String>>);

    impl Input<u64> for Log {
        fn data(&self, msg: u64, _: Stamp) {
            self.0.borrow_mut().push(format!("data {msg}"));
        }
        fn control(&self, _: usize, event: Control) {
            self.0.borrow_mut().push(format!("{event:?}"));
        }
    }

    /// Input 1 passes barrier 1 first: its data and its next barrier wait until input 0
    /// passes barrier 1, then follow the forwarded barrier in order; input 0's data never
    /// waits. The second barrier holds input 1 again while being released.
    #[test]
    fn a_held_input_waits_behind_its_barrier_in_order() {
        let log = Rc::new(Log(RefCell::new(Vec::new())));
        let next: Rc<dyn Input<u64>> = log.clone();
        let merge = Rc::new(Merge::new(
            Downstream::to(next.clone(), 0, Rc::from([])),
            2,
            Rc::default(),
        ));
        // The edges as the plan builds them: data straight to the next operator, the merge's
        // flag, control into the merge.
        let edge = |port| {
            let mut edge = Downstream::to(merge.clone() as Rc<dyn Input<u64>>, port, Rc::from([]));
            edge.data = crate::ops::target::Target::new(next.clone());
            edge.held = merge.ports.any_held_flag();
            edge
        };
        let (a, b) = (edge(0), edge(1));
        b.data(1, Stamp::default());
        b.control(Control::Barrier(1));
        b.data(2, Stamp::default());
        b.control(Control::Barrier(2));
        b.data(3, Stamp::default());
        a.data(10, Stamp::default());
        assert_eq!(*log.0.borrow(), ["data 1", "data 10"]);
        a.control(Control::Barrier(1));
        assert_eq!(
            *log.0.borrow(),
            ["data 1", "data 10", "Barrier(1)", "data 2"],
            "input 1 is held again by barrier 2"
        );
        a.data(11, Stamp::default());
        a.control(Control::Barrier(2));
        a.control(Control::End);
        b.control(Control::End);
        assert_eq!(
            *log.0.borrow(),
            [
                "data 1",
                "data 10",
                "Barrier(1)",
                "data 2",
                "data 11",
                "Barrier(2)",
                "data 3",
                "End"
            ]
        );
        assert!(merge.held.borrow().iter().all(VecDeque::is_empty));
    }

    /// A held input's gauge rises once its queue reaches the limit (the other input's stays
    /// down) and falls when the barrier is forwarded and the queue delivered.
    #[test]
    fn a_full_hold_raises_that_inputs_gauge_until_release() {
        let log = Rc::new(Log(RefCell::new(Vec::new())));
        let next: Rc<dyn Input<u64>> = log.clone();
        let merge = Rc::new(Merge::new(
            Downstream::to(next, 0, Rc::from([])),
            2,
            Rc::default(),
        ));
        let (g0, g1) = (merge.input_gauge(0).unwrap(), merge.input_gauge(1).unwrap());
        merge.control(1, Control::Barrier(1));
        for v in 0..HOLD_LIMIT as u64 - 1 {
            merge.held_data(1, v, Stamp::default());
        }
        assert!(!g1.is_over());
        merge.held_data(1, 0, Stamp::default());
        assert!(g1.is_over() && !g0.is_over());
        merge.control(0, Control::Barrier(1));
        assert!(!g1.is_over());
        assert_eq!(log.0.borrow().len(), 1 + HOLD_LIMIT);
    }
}
