//! A merge of several inputs of one type. Data goes straight from each input to the next
//! operator (no extra call on the hot path); only control events pass through the merge,
//! which aligns them over its inputs.

use std::marker::PhantomData;

use super::{Downstream, Input, Ports};
use crate::event::{Control, Stamp};

pub(crate) struct Merge<T> {
    pub(crate) next: Downstream<T>,
    pub(crate) ports: Ports,
    pub(crate) _t: PhantomData<fn(T)>,
}

impl<T: 'static> Input<T> for Merge<T> {
    fn data(&self, msg: T, stamp: Stamp) {
        // Not on the usual path (inputs call `next` directly), but correct if used.
        self.next.data(msg, stamp)
    }

    fn control(&self, port: usize, event: Control) {
        for e in self.ports.align(port, event) {
            self.next.control(e);
        }
    }

    fn ports(&self) -> Option<&Ports> {
        Some(&self.ports)
    }
}
