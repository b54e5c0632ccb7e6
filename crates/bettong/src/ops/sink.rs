//! The last operator of a pipeline: hands each output to the sink connector's shard instance
//! and counts it (start-to-end latency is recorded here, Wallaroo's definition).

use std::cell::Cell;
use std::marker::PhantomData;
use std::rc::Rc;

use super::{Input, Ports};
use crate::connect::SinkInput;
use crate::event::{Control, Stamp};
use crate::metrics::ShardMetrics;
use crate::runtime::shard::ShardCore;

/// What the shard gives a sink's operator when it wires it in.
pub(crate) struct SinkWiring {
    pub(crate) ports: Ports,
    pub(crate) metrics: Rc<ShardMetrics>,
    pub(crate) core: Rc<ShardCore>,
    /// The sink pre-commits checkpoints itself; otherwise the barrier's arrival does.
    pub(crate) precommits: bool,
}

/// The operator over one sink instance. It is generic over the instance's type, so that the
/// instance's `write` is inlined into `data`: the graph makes one dynamic call into the sink,
/// not two, and the message is not copied again for the second. Through `Rc<dyn SinkInput>`,
/// `bench passthrough --shards 1` spent 12 instructions per message more on that second call
/// (its prologue and epilogue, and the 80-byte frame copied again): 229.9 -> 217.7
/// (callgrind, the shard's tasks).
pub(crate) struct SinkOp<T, S> {
    sink: S,
    wiring: SinkWiring,
    /// The last barrier forwarded to the sink.
    last_barrier: Cell<Option<u64>>,
    _msg: PhantomData<fn(T)>,
}

impl<T: 'static, S: SinkInput<T> + 'static> SinkOp<T, S> {
    /// The operator over `sink`, as the graph's input.
    pub(crate) fn wired(sink: S, wiring: SinkWiring) -> Rc<dyn Input<T>> {
        Rc::new(SinkOp {
            sink,
            wiring,
            last_barrier: Cell::new(None),
            _msg: PhantomData,
        })
    }
}

impl<T, S: SinkInput<T>> Input<T> for SinkOp<T, S> {
    #[inline]
    fn data(&self, msg: T, stamp: Stamp) {
        self.sink.write(msg, stamp);
        self.wiring.metrics.output(stamp.ingest_ns);
    }

    fn control(&self, port: usize, event: Control) {
        let w = &self.wiring;
        for e in w.ports.align(port, event) {
            self.sink.control(e);
            match e {
                Control::Barrier(id) => {
                    self.last_barrier.set(Some(id));
                    if !w.precommits {
                        crate::connect::precommitted(&w.core, id);
                    }
                }
                // No barrier comes after the end: later checkpoints must not wait for this
                // sink (its shard's part would never be written, and every checkpoint would
                // be given up while other shards still run).
                Control::End => crate::connect::sink_ended(&w.core, self.last_barrier.get()),
                _ => {}
            }
        }
    }

    fn ports(&self) -> Option<&Ports> {
        Some(&self.wiring.ports)
    }
}
