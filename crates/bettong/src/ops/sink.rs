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
    /// The last barrier forwarded to the sink.
    pub(crate) last_barrier: std::cell::Cell<Option<u64>>,
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
            match e {
                Control::Barrier(id) => {
                    self.last_barrier.set(Some(id));
                    if !self.precommits {
                        crate::connect::precommitted(&self.core, id);
                    }
                }
                // No barrier comes after the end: later checkpoints must not wait for this
                // sink (its shard's part would never be written, and every checkpoint would
                // be given up while other shards still run).
                Control::End => crate::connect::sink_ended(&self.core, self.last_barrier.get()),
                _ => {}
            }
        }
    }

    fn ports(&self) -> Option<&Ports> {
        Some(&self.ports)
    }
}
