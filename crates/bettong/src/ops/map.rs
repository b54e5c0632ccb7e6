//! `to`: a stateless computation with zero or one output per message.

use std::sync::Arc;

use super::{Downstream, Input, Ports};
use crate::event::{Control, Stamp};
use crate::metrics::{ComputationTimer, ShardMetrics};

pub(crate) struct Map<T, U, F> {
    pub(crate) f: Arc<F>,
    pub(crate) next: Downstream<U>,
    pub(crate) ports: Ports,
    pub(crate) timer: ComputationTimer,
    pub(crate) metrics: std::rc::Rc<ShardMetrics>,
    pub(crate) _in: std::marker::PhantomData<fn(T)>,
}

impl<T, U: 'static, F: Fn(T) -> Option<U>> Input<T> for Map<T, U, F> {
    #[inline]
    fn data(&self, msg: T, stamp: Stamp) {
        match self.timer.time(|| (self.f)(msg)) {
            Some(out) => self.next.data(out, stamp),
            None => self.metrics.filtered(stamp.ingest_ns),
        }
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
