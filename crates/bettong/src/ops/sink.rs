//! The last operator of a pipeline: hands each output to the sink connector's shard instance
//! and counts it (start-to-end latency is recorded here, Wallaroo's definition).

use std::rc::Rc;

use super::{Input, Ports};
use crate::connect::SinkInput;
use crate::event::{Control, Stamp};
use crate::metrics::ShardMetrics;

pub(crate) struct SinkOp<T> {
    pub(crate) sink: Rc<dyn SinkInput<T>>,
    pub(crate) ports: Ports,
    pub(crate) metrics: Rc<ShardMetrics>,
    pub(crate) core: Rc<crate::runtime::shard::ShardCore>,
    /// The sink pre-commits checkpoints itself; otherwise the barrier's arrival does.
    pub(crate) precommits: bool,
}

impl<T> Input<T> for SinkOp<T> {
    #[inline]
    fn data(&self, msg: T, stamp: Stamp) {
        self.sink.write(msg, stamp);
        self.metrics.output(stamp.ingest_ns);
    }

    fn control(&self, port: usize, event: Control) {
        for e in self.ports.align(port, event) {
            self.sink.control(e);
            if let (Control::Barrier(id), false) = (e, self.precommits) {
                crate::connect::precommitted(&self.core, id);
            }
        }
    }

    fn ports(&self) -> Option<&Ports> {
        Some(&self.ports)
    }
}
