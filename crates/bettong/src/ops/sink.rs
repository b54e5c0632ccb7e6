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
        }
    }

    fn ports(&self) -> Option<&Ports> {
        Some(&self.ports)
    }
}
