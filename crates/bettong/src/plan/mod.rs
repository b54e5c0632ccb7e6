//! The plan: an application lowered once into a graph of operators with stable ids and names,
//! and edges that are either *forward* (same shard, a direct call) or *exchange* (by key,
//! through the rings). Routing is a property of the edge.
//!
//! The typed builder ([`crate::Pipeline`]) grows a [`Graph`] as a value: cloning a pipeline
//! (a split) shares the nodes built so far, and merging or combining pipelines takes the union
//! of their graphs, so diamonds (split, then merge) and several pipelines over one source are
//! ordinary graphs. [`Graph::plan`] numbers the nodes in creation order (the ids are stable for
//! a given program), names the unnamed ones, and checks the names.
//!
//! Every shard instantiates the plan ([`instantiate`](fn@instantiate)) from the sinks upstream, so each
//! operator is built knowing its downstream and calls it directly.

pub(crate) mod instantiate;

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::Error;
use crate::runtime::shard::Gauge;
pub(crate) use instantiate::{instantiate, ShardBuild};

/// A type-erased value: a `Downstream<T>` or an `Rc<dyn Input<T>>` whose `T` only the node's
/// own (typed) builder knows.
pub(crate) type AnyBox = Box<dyn Any>;

/// What a node's builder made on a shard: its input (for control events and for the exchange
/// drain), where data sent to it goes (the same operator, except for a merge, which passes
/// data straight to the next operator), and the gauges of everything downstream.
pub(crate) struct Built {
    pub(crate) input: AnyBox,
    pub(crate) data: AnyBox,
    pub(crate) gauges: Rc<[Gauge]>,
    /// Makes a `Downstream<In>` into this node on a port (typed where the node was built).
    pub(crate) forward: fn(&Built, usize) -> AnyBox,
}

/// A node as the shard sees it while building.
pub(crate) struct NodeCtx<'a> {
    pub(crate) id: usize,
    pub(crate) name: &'a str,
    /// Position in the topological order (stop order).
    pub(crate) rank: usize,
    pub(crate) ports: usize,
}

/// How a node is built on a shard (implemented by typed builders in `pipeline` and
/// `connect`).
pub(crate) trait NodeBuild: Send + Sync {
    /// Builds the node given its downstream (`Downstream<Out>`, `None` for a sink). Returns
    /// `None` for a source (nothing feeds it).
    fn build(
        &self,
        sb: &mut ShardBuild,
        node: &NodeCtx<'_>,
        out: Option<AnyBox>,
    ) -> Result<Option<Built>, Error>;
}

/// An exchange edge's builder: routes `Downstream<T>` by key (typed in `pipeline`).
pub(crate) trait ExchangeBuild: Send + Sync {
    /// Builds this shard's entry into the exchange and its drain task, delivering into the
    /// node `built` on ports `base..base + shards`.
    fn build(
        &self,
        sb: &mut ShardBuild,
        edge: usize,
        built: &Built,
        base: usize,
        rank: usize,
    ) -> AnyBox;
}

/// Combines several `Downstream<T>` into one (a split), for a `T: Clone`.
pub(crate) type TeeFn = fn(Vec<AnyBox>) -> AnyBox;

/// A source's or a sink's endpoint, opened once before the shards start.
pub(crate) trait Endpoint: Send + Sync {
    fn takes_address(&self) -> bool;
    /// One part per shard, and what to print in the ready line.
    #[allow(clippy::type_complexity)]
    fn open(
        &self,
        name: &str,
        address: Option<&str>,
        shards: usize,
    ) -> Result<(Vec<Box<dyn Any + Send>>, Option<String>), Error>;
}

/// What a node is, for the plan's description and its rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Where messages enter.
    Source,
    /// A computation (stateless or state), a merge or a split.
    Operator,
    /// Where outputs leave.
    Sink,
}

#[derive(Clone)]
pub(crate) struct NodeSpec {
    pub(crate) kind: &'static str,
    pub(crate) name: Option<String>,
    pub(crate) role: Role,
    pub(crate) build: Arc<dyn NodeBuild>,
    pub(crate) endpoint: Option<Arc<dyn Endpoint>>,
    pub(crate) tee: Option<TeeFn>,
}

#[derive(Clone)]
pub(crate) struct EdgeSpec {
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) exchange: Option<Arc<dyn ExchangeBuild>>,
}

/// Creation sequence numbers: nodes and edges of every graph in the process are numbered in
/// the order the program built them, which is what makes plan ids stable for a program.
static SEQ: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_seq() -> u64 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// The graph a pipeline has grown so far (a value: see the module docs).
#[derive(Clone, Default)]
pub(crate) struct Graph {
    pub(crate) nodes: BTreeMap<u64, NodeSpec>,
    pub(crate) edges: BTreeMap<u64, EdgeSpec>,
    /// Mistakes found while building, reported when the plan is made.
    pub(crate) errors: Vec<String>,
}

impl Graph {
    /// Adds a node fed by `inputs` (edges from those nodes); returns its sequence number.
    pub(crate) fn add(
        &mut self,
        spec: NodeSpec,
        inputs: &[(u64, Option<Arc<dyn ExchangeBuild>>)],
    ) -> u64 {
        let seq = next_seq();
        self.nodes.insert(seq, spec);
        for (from, exchange) in inputs {
            self.edges.insert(
                next_seq(),
                EdgeSpec {
                    from: *from,
                    to: seq,
                    exchange: exchange.clone(),
                },
            );
        }
        seq
    }

    /// The union of two graphs that may share nodes (both grew from one clone).
    pub(crate) fn union(mut self, other: Graph) -> Graph {
        for (seq, spec) in other.nodes {
            match self.nodes.get_mut(&seq) {
                Some(mine) => {
                    // One side may have named the node or split it after the clone.
                    if mine.name.is_none() {
                        mine.name = spec.name;
                    }
                    if mine.tee.is_none() {
                        mine.tee = spec.tee;
                    }
                }
                None => {
                    self.nodes.insert(seq, spec);
                }
            }
        }
        self.edges.extend(other.edges);
        for e in other.errors {
            if !self.errors.contains(&e) {
                self.errors.push(e);
            }
        }
        self
    }

    /// Lowers the graph into a plan: ids in creation order, default names, checks.
    pub(crate) fn plan(&self) -> Result<Plan, Error> {
        if let Some(e) = self.errors.first() {
            return Err(Error::Plan(e.clone()));
        }
        let index: BTreeMap<u64, usize> = self
            .nodes
            .keys()
            .enumerate()
            .map(|(i, s)| (*s, i))
            .collect();
        let mut nodes = Vec::with_capacity(self.nodes.len());
        let mut computations = 0;
        for spec in self.nodes.values() {
            let name = match &spec.name {
                Some(n) => n.clone(),
                None => {
                    computations += 1;
                    format!("{} #{computations}", spec.kind)
                }
            };
            nodes.push(PlanNode {
                name,
                kind: spec.kind,
                role: spec.role,
                spec: spec.clone(),
            });
        }
        let mut seen = BTreeSet::new();
        for n in &nodes {
            if !seen.insert(n.name.as_str()) {
                return Err(Error::Plan(format!(
                    "the application has two {} named `{}`: names must be unique",
                    match n.role {
                        Role::Source => "sources (or operators)",
                        Role::Sink => "sinks (or operators)",
                        Role::Operator => "operators",
                    },
                    n.name
                )));
            }
        }
        let edges: Vec<PlanEdge> = self
            .edges
            .values()
            .map(|e| PlanEdge {
                from: index[&e.from],
                to: index[&e.to],
                exchange: e.exchange.clone(),
            })
            .collect();
        for (id, n) in nodes.iter().enumerate() {
            let outs = edges.iter().filter(|e| e.from == id).count();
            if outs > 1 && n.spec.tee.is_none() {
                return Err(Error::Plan(format!(
                    "`{}` feeds {outs} operators but its messages cannot be cloned",
                    n.name
                )));
            }
        }
        // Kahn's algorithm, smallest id first: a deterministic topological order.
        let mut indegree = vec![0usize; nodes.len()];
        for e in &edges {
            indegree[e.to] += 1;
        }
        let mut ready: BTreeSet<usize> = (0..nodes.len()).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(nodes.len());
        while let Some(n) = ready.pop_first() {
            order.push(n);
            for e in edges.iter().filter(|e| e.from == n) {
                indegree[e.to] -= 1;
                if indegree[e.to] == 0 {
                    ready.insert(e.to);
                }
            }
        }
        if order.len() != nodes.len() {
            return Err(Error::Plan(
                "the application's graph has a cycle".to_string(),
            ));
        }
        Ok(Plan {
            nodes,
            edges,
            order,
        })
    }
}

pub(crate) struct PlanNode {
    pub(crate) name: String,
    pub(crate) kind: &'static str,
    pub(crate) role: Role,
    pub(crate) spec: NodeSpec,
}

pub(crate) struct PlanEdge {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) exchange: Option<Arc<dyn ExchangeBuild>>,
}

/// An application's dataflow graph: operators with stable ids and names, and their edges.
pub(crate) struct Plan {
    pub(crate) nodes: Vec<PlanNode>,
    pub(crate) edges: Vec<PlanEdge>,
    /// Node ids in topological order (sources first).
    pub(crate) order: Vec<usize>,
}

impl Plan {
    /// Node ids of the given role, in id order.
    pub(crate) fn of_role(&self, role: Role) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(move |&i| self.nodes[i].role == role)
    }
}

impl fmt::Display for Plan {
    /// One line per node in topological order: `id name (kind) -> id, id~` (`~` marks an
    /// exchange edge).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &id in &self.order {
            let n = &self.nodes[id];
            write!(f, "{id} {} ({})", n.name, n.kind)?;
            let outs: Vec<String> = self
                .edges
                .iter()
                .filter(|e| e.from == id)
                .map(|e| format!("{}{}", e.to, if e.exchange.is_some() { "~" } else { "" }))
                .collect();
            if !outs.is_empty() {
                write!(f, " -> {}", outs.join(", "))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
