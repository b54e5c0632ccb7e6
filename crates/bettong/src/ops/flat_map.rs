//! `to_many`: a stateless computation with any number of outputs per message.

use std::rc::Rc;
use std::sync::Arc;

use super::{Downstream, Input, Ports};
use crate::event::{Control, Stamp};
use crate::metrics::{ComputationTimer, ShardMetrics};

pub(crate) struct FlatMap<T, U, F> {
    pub(crate) f: Arc<F>,
    pub(crate) next: Downstream<U>,
    pub(crate) ports: Ports,
    pub(crate) timer: ComputationTimer,
    pub(crate) metrics: Rc<ShardMetrics>,
    pub(crate) _in: std::marker::PhantomData<fn(T)>,
}

impl<T, U: 'static, I: IntoIterator<Item = U>, F: Fn(T) -> I> Input<T> for FlatMap<T, U, F> {
    #[inline]
    fn data(&self, msg: T, stamp: Stamp) {
        emit_all(
            self.timer.time(|| (self.f)(msg)),
            &self.next,
            &self.metrics,
            stamp,
        );
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

/// Sends every output on, or counts the message as filtered when there is none.
#[inline]
pub(crate) fn emit_all<U: 'static>(
    outputs: impl IntoIterator<Item = U>,
    next: &Downstream<U>,
    metrics: &ShardMetrics,
    stamp: Stamp,
) {
    if !emit_each(outputs, next, stamp) {
        metrics.filtered(stamp.ingest_ns);
    }
}

/// Sends every output on; whether there was one (the caller counts a message without).
#[inline(always)]
pub(crate) fn emit_each<U: 'static>(
    outputs: impl IntoIterator<Item = U>,
    next: &Downstream<U>,
    stamp: Stamp,
) -> bool {
    let mut any = false;
    for out in outputs {
        any = true;
        next.data(out, stamp);
    }
    any
}
