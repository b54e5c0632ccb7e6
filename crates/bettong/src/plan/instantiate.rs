//! Building one shard's operators from the plan, from the sinks upstream.

use std::any::Any;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::{AnyBox, Built, NodeCtx, Plan};
use crate::error::Error;
use crate::runtime::exchange::ExchangeRuntime;
use crate::runtime::shard::{Latch, LocalFuture, RingRegistry, ShardCore};
use crate::state::StateView;

/// One shard's operators and tasks, as the plan is instantiated on it.
pub(crate) struct ShardBuild {
    pub(crate) core: Rc<ShardCore>,
    pub(crate) rings: Arc<RingRegistry>,
    /// What each source's and sink's `open` prepared for this shard, by node id.
    pub(crate) parts: HashMap<usize, Box<dyn Any + Send>>,
    /// Source tasks (run, then end of stream), by rank.
    pub(crate) sources: Vec<(usize, LocalFuture)>,
    pub(crate) exchanges: Vec<ExchangeRuntime>,
    /// Operators' own tasks (a window's firing), by rank: each ends after end of stream.
    pub(crate) tasks: Vec<(usize, LocalFuture)>,
    /// Sinks: rank, the latch that tells them to finish, their task.
    pub(crate) sinks: Vec<(usize, Rc<Latch>, Option<LocalFuture>)>,
    /// Keyed state by operator name.
    pub(crate) states: Vec<(String, Rc<dyn StateView>)>,
    /// How to inject a checkpoint barrier into each source on this shard.
    pub(crate) injectors: Vec<Box<dyn Fn(u64)>>,
}

impl ShardBuild {
    pub(crate) fn new(
        core: Rc<ShardCore>,
        rings: Arc<RingRegistry>,
        parts: HashMap<usize, Box<dyn Any + Send>>,
    ) -> Self {
        ShardBuild {
            core,
            rings,
            parts,
            sources: Vec::new(),
            exchanges: Vec::new(),
            tasks: Vec::new(),
            sinks: Vec::new(),
            states: Vec::new(),
            injectors: Vec::new(),
        }
    }

    /// Takes the part `open` prepared for node `id` on this shard.
    pub(crate) fn take_part<P: 'static>(&mut self, id: usize, name: &str) -> Result<P, Error> {
        match self
            .parts
            .remove(&id)
            .map(|p| (p as Box<dyn Any>).downcast::<P>())
        {
            Some(Ok(p)) => Ok(*p),
            _ => Err(Error::Shard(format!(
                "{name}: no part was opened for shard {}",
                self.core.index
            ))),
        }
    }
}

/// Instantiates `plan` on one shard.
pub(crate) fn instantiate(plan: &Plan, sb: &mut ShardBuild) -> Result<(), Error> {
    let shards = sb.core.shards;
    let n = plan.nodes.len();
    let mut rank = vec![0; n];
    for (r, &id) in plan.order.iter().enumerate() {
        rank[id] = r;
    }
    // Input ports: each in-edge takes one port, an exchange one per shard (its local port
    // first, then one per ring from another shard).
    let mut ports = vec![0usize; n];
    let mut base = vec![0usize; plan.edges.len()];
    for (i, e) in plan.edges.iter().enumerate() {
        base[i] = ports[e.to];
        ports[e.to] += if e.exchange.is_some() { shards } else { 1 };
    }
    let mut downs: HashMap<usize, AnyBox> = HashMap::new();
    for &id in plan.order.iter().rev() {
        let node = &plan.nodes[id];
        let mut outs: Vec<AnyBox> = plan
            .edges
            .iter()
            .enumerate()
            .filter(|(_, e)| e.from == id)
            .filter_map(|(i, _)| downs.remove(&i))
            .collect();
        let out = match outs.len() {
            0 => None,
            1 => outs.pop(),
            _ => match node.spec.tee {
                Some(tee) => Some(tee(outs)),
                None => {
                    return Err(Error::Plan(format!(
                        "`{}` feeds several operators but its messages cannot be cloned",
                        node.name
                    )))
                }
            },
        };
        let ctx = NodeCtx {
            id,
            name: &node.name,
            rank: rank[id],
            ports: ports[id],
        };
        let Some(built) = node.spec.build.build(sb, &ctx, out)? else {
            continue;
        };
        for (i, e) in plan.edges.iter().enumerate().filter(|(_, e)| e.to == id) {
            let down = match &e.exchange {
                Some(x) if shards > 1 => x.build(sb, i, &built, base[i], rank[id]),
                _ => (built.forward)(&built, base[i]),
            };
            downs.insert(i, down);
        }
    }
    Ok(())
}

/// Built for a node whose input is `input` (an `Rc<dyn Input<T>>`) for data and control.
pub(crate) fn built<T: 'static>(
    input: Rc<dyn crate::ops::Input<T>>,
    gauges: Rc<[crate::runtime::shard::Gauge]>,
) -> Built {
    Built {
        input: Box::new(input.clone()),
        data: Box::new(input),
        gauges,
        forward: forward::<T>,
    }
}

/// The typed forward edge into `built` on `port`.
pub(crate) fn forward<T: 'static>(built: &Built, port: usize) -> AnyBox {
    let (Some(input), Some(data)) = (
        built.input.downcast_ref::<Rc<dyn crate::ops::Input<T>>>(),
        built.data.downcast_ref::<Rc<dyn crate::ops::Input<T>>>(),
    ) else {
        unreachable!("a node's builder and its edges agree on its input type");
    };
    let mut down = crate::ops::Downstream::to(input.clone(), port, built.gauges.clone());
    down.data = crate::ops::target::Target::new(data.clone());
    Box::new(down)
}

/// The typed downstream an operator's builder receives.
pub(crate) fn downstream<T: 'static>(out: Option<AnyBox>) -> crate::ops::Downstream<T> {
    match out.map(|o| o.downcast::<crate::ops::Downstream<T>>()) {
        Some(Ok(d)) => *d,
        _ => unreachable!("an operator's downstream has its output type"),
    }
}
