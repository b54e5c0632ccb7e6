//! A split: one stream to several operators (a pipeline cloned into branches, `to_sinks`).
//! Every branch but the last gets a clone of the message.

use super::{Downstream, Input};
use crate::event::{Control, Stamp};

pub(crate) struct Tee<T> {
    pub(crate) outs: Vec<Downstream<T>>,
}

impl<T: Clone + 'static> Input<T> for Tee<T> {
    #[inline]
    fn data(&self, msg: T, stamp: Stamp) {
        if let Some((last, rest)) = self.outs.split_last() {
            for o in rest {
                o.data(msg.clone(), stamp);
            }
            last.data(msg, stamp);
        }
    }

    fn control(&self, _port: usize, event: Control) {
        // A tee has one input; every branch gets every control event.
        for o in &self.outs {
            o.control(event);
        }
    }
}
