//! The typed pipeline builder, in Wallaroo's vocabulary: a [`Pipeline`] starts at a source,
//! goes through computations (`to`, `to_many`), is split by key (`key_by`) into state
//! computations (`to_state`), may be merged with another pipeline of the same type (`merge`)
//! or split into branches (`clone`), and ends at one sink (`to_sink`) or several
//! (`to_sinks`). One or more complete pipelines make an [`Application`].
//!
//! Each stage's types must match the next one's, so a mistake is a compile error:
//!
//! ```compile_fail
//! use bettong::{Pipeline, TcpSource, DecodeError};
//! let p = Pipeline::source("Numbers", TcpSource::new(|b: &[u8]| -> Result<u64, DecodeError> { Ok(b.len() as u64) }))
//!     .to(|s: String| Some(s.len())); // expects String, the source gives u64
//! ```
//!
//! A pipeline is a recipe: it lowers into a plan (see [`Application::describe`]) that every
//! shard instantiates, so functions must be `Send + Sync`. On a shard, each operator calls the
//! next directly; only a message whose key another shard owns leaves the shard, through a
//! ring.

use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use crate::connect::{Sink, Source};
use crate::connect::{SinkContext, SourceContext};
use crate::error::Error;
use crate::event::Event;
use crate::metrics::ComputationTimer;
use crate::ops::{self, Downstream, Input, Ports};
use crate::plan::instantiate::{built, downstream, forward};
use crate::plan::{
    AnyBox, Built, Endpoint, ExchangeBuild, Graph, NodeBuild, NodeCtx, NodeSpec, Role, ShardBuild,
};
use crate::runtime::exchange::{self, Exchange, ExchangeRuntime, Outbox};
use crate::runtime::route_cache::RouteCache;
use crate::runtime::shard::{Gauge, Latch, Notify, Spill};
use crate::state::{shard_for, KeyedState};
use crate::window::panes::Shape;
use crate::window::{Aggregation, LatePolicy};
use crate::Key;

/// A partial pipeline whose messages, at this point, are of type `T`.
///
/// ```
/// use bettong::{Application, DecodeError, Pipeline, TcpSink, TcpSource};
///
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// struct Total(u64);
///
/// let decode = |b: &[u8]| -> Result<u64, DecodeError> {
///     std::str::from_utf8(b).ok().and_then(|s| s.trim().parse().ok())
///         .ok_or(DecodeError::new("not a number"))
/// };
/// let pipeline = Pipeline::source("Numbers", TcpSource::new(decode))
///     .to(|n: u64| (n % 2 == 0).then_some(n)).name("evens")
///     .key_by(|n: &u64| n)
///     .to_state(|n: u64, total: &mut Total| {
///         total.0 += n;
///         Some(total.0)
///     })
///     .to_sink("Totals", TcpSink::new(|t: &u64, out: &mut Vec<u8>| {
///         out.extend_from_slice(format!("{t}\n").as_bytes())
///     }));
/// let app = Application::new("sum of evens", pipeline);
/// assert_eq!(app.source_names(), ["Numbers"]);
/// ```
pub struct Pipeline<T> {
    graph: Graph,
    tail: u64,
    _t: PhantomData<fn() -> T>,
}

/// Splits a pipeline: both copies continue from the same operator, which hands each message to
/// every branch (a clone per extra branch).
///
/// ```
/// use bettong::{Application, CallbackSink, InProcessSource, Pipeline};
/// let src = Pipeline::source("N", InProcessSource::new(|n: &u64| n));
/// let diamond = src.clone().to(|n: u64| Some(n * 10)).merge(src.to(|n: u64| Some(n + 1)));
/// let app = Application::new("diamond", diamond.to_sink("Out", CallbackSink::new(|_: &u64| {})));
/// assert!(app.describe().unwrap().contains("merge"));
/// ```
impl<T: Clone + Send + 'static> Clone for Pipeline<T> {
    fn clone(&self) -> Self {
        let mut graph = self.graph.clone();
        if let Some(node) = graph.nodes.get_mut(&self.tail) {
            node.tee = Some(tee::<T>);
        }
        Pipeline {
            graph,
            tail: self.tail,
            _t: PhantomData,
        }
    }
}

fn tee<T: Clone + 'static>(outs: Vec<AnyBox>) -> AnyBox {
    let outs: Vec<Downstream<T>> = outs.into_iter().map(|o| downstream::<T>(Some(o))).collect();
    let gauges: Rc<[Gauge]> = outs
        .iter()
        .flat_map(|o| o.gauges.iter().cloned())
        .collect::<Vec<_>>()
        .into();
    let input: Rc<dyn Input<T>> = Rc::new(ops::tee::Tee { outs });
    Box::new(Downstream::to(input, 0, gauges))
}

impl<T: Send + 'static> Pipeline<T> {
    /// Starts a pipeline at a named source.
    ///
    /// ```
    /// use bettong::{DecodeError, Pipeline, TcpSource};
    /// let p = Pipeline::source("Bytes", TcpSource::new(|b: &[u8]| -> Result<usize, DecodeError> { Ok(b.len()) }));
    /// # let _ = p;
    /// ```
    pub fn source<S: Source<Out = T>>(name: &str, source: S) -> Pipeline<T> {
        let node = Arc::new(SourceNode(Arc::new(source)));
        let mut graph = Graph::default();
        let tail = graph.add(
            NodeSpec {
                kind: "source",
                name: Some(name.to_string()),
                role: Role::Source,
                build: node.clone(),
                endpoint: Some(node),
                tee: None,
            },
            &[],
        );
        Pipeline {
            graph,
            tail,
            _t: PhantomData,
        }
    }

    fn then<U>(
        mut self,
        kind: &'static str,
        build: Arc<dyn NodeBuild>,
        exchange: Option<Arc<dyn ExchangeBuild>>,
    ) -> Pipeline<U> {
        let tail = self.graph.add(
            NodeSpec {
                kind,
                name: None,
                role: Role::Operator,
                build,
                endpoint: None,
                tee: None,
            },
            &[(self.tail, exchange)],
        );
        Pipeline {
            graph: self.graph,
            tail,
            _t: PhantomData,
        }
    }

    /// Names the computation just added (for metrics and the plan); unnamed computations are
    /// called by their kind and number (`to_state #2`). Names are unique in an application.
    ///
    /// ```
    /// # use bettong::{DecodeError, Pipeline, TcpSource};
    /// # let p = Pipeline::source("N", TcpSource::new(|b: &[u8]| -> Result<u64, DecodeError> { Ok(b.len() as u64) }));
    /// let halves = p.to(|n: u64| Some(n / 2)).name("halve");
    /// # let _ = halves;
    /// ```
    pub fn name(mut self, name: &str) -> Pipeline<T> {
        match self.graph.nodes.get_mut(&self.tail) {
            Some(node) if node.role == Role::Operator => node.name = Some(name.to_string()),
            _ => self.graph.errors.push(format!(
                "name(\"{name}\") must follow a computation (sources are named by Pipeline::source)"
            )),
        }
        self
    }

    /// A stateless computation with zero or one output per message (`None` filters it out).
    ///
    /// ```
    /// # use bettong::{DecodeError, Pipeline, TcpSource};
    /// # let p = Pipeline::source("N", TcpSource::new(|b: &[u8]| -> Result<u64, DecodeError> { Ok(b.len() as u64) }));
    /// let doubled_odds = p.to(|n: u64| (n % 2 == 1).then_some(n * 2));
    /// # let _ = doubled_odds;
    /// ```
    pub fn to<U, F>(self, f: F) -> Pipeline<U>
    where
        U: Send + 'static,
        F: Fn(T) -> Option<U> + Send + Sync + 'static,
    {
        self.then(
            "to",
            Arc::new(MapNode::<T, U, F>(Arc::new(f), PhantomData)),
            None,
        )
    }

    /// A stateless computation with any number of outputs per message.
    ///
    /// ```
    /// # use bettong::{DecodeError, Pipeline, TcpSource};
    /// # let p = Pipeline::source("Text", TcpSource::new(|b: &[u8]| -> Result<String, DecodeError> { Ok(String::from_utf8_lossy(b).into_owned()) }));
    /// let words = p.to_many(|line: String| {
    ///     line.split(' ').map(str::to_string).collect::<Vec<_>>()
    /// });
    /// # let _ = words;
    /// ```
    pub fn to_many<U, I, F>(self, f: F) -> Pipeline<U>
    where
        U: Send + 'static,
        I: IntoIterator<Item = U>,
        F: Fn(T) -> I + Send + Sync + 'static,
    {
        self.then(
            "to_many",
            Arc::new(FlatMapNode::<T, U, F>(Arc::new(f), PhantomData)),
            None,
        )
    }

    /// Splits the stream by key: the key picks the shard (through its key group) and the state
    /// entity of the state computation that follows.
    ///
    /// ```
    /// # use bettong::{DecodeError, Pipeline, TcpSource};
    /// # let p = Pipeline::source("Text", TcpSource::new(|b: &[u8]| -> Result<String, DecodeError> { Ok(String::from_utf8_lossy(b).into_owned()) }));
    /// let by_word = p.key_by(|w: &String| w.as_str());
    /// # let _ = by_word;
    /// ```
    pub fn key_by<K, F>(self, key: F) -> KeyedPipeline<T, K, F>
    where
        K: Key + ?Sized + 'static,
        F: Fn(&T) -> &K + Send + Sync + 'static,
    {
        KeyedPipeline {
            pipeline: self,
            key: Arc::new(key),
            _k: PhantomData,
        }
    }

    /// A state computation with a single state entity (no `key_by`): every message goes to one
    /// shard.
    ///
    /// ```
    /// # use bettong::{DecodeError, Pipeline, TcpSource};
    /// # let p = Pipeline::source("N", TcpSource::new(|b: &[u8]| -> Result<u64, DecodeError> { Ok(b.len() as u64) }));
    /// let running_max = p.to_state(|n: u64, max: &mut u64| {
    ///     (n > *max).then(|| { *max = n; n })
    /// });
    /// # let _ = running_max;
    /// ```
    pub fn to_state<S, U, F>(self, f: F) -> Pipeline<U>
    where
        S: crate::state::StateEntity,
        U: Send + 'static,
        F: Fn(T, &mut S) -> Option<U> + Send + Sync + 'static,
    {
        self.key_by(|_: &T| "").to_state(f)
    }

    /// Merges another pipeline of the same message type into this one. The two may share a
    /// source (a diamond): the graph is the union of both.
    ///
    /// ```
    /// # use bettong::{DecodeError, Pipeline, TcpSource};
    /// let len = |b: &[u8]| -> Result<usize, DecodeError> { Ok(b.len()) };
    /// let both = Pipeline::source("A", TcpSource::new(len))
    ///     .merge(Pipeline::source("B", TcpSource::new(len)));
    /// # let _ = both;
    /// ```
    pub fn merge(self, other: Pipeline<T>) -> Pipeline<T> {
        let (a, b) = (self.tail, other.tail);
        let mut graph = self.graph.union(other.graph);
        let tail = graph.add(
            NodeSpec {
                kind: "merge",
                name: None,
                role: Role::Operator,
                build: Arc::new(MergeNode::<T>(PhantomData)),
                endpoint: None,
                tee: None,
            },
            &[(a, None), (b, None)],
        );
        Pipeline {
            graph,
            tail,
            _t: PhantomData,
        }
    }

    /// Ends the pipeline at a named sink: a TCP sink (its address comes from
    /// `--out NAME@HOST:PORT`), an in-process sink, or any [`Sink`].
    ///
    /// ```
    /// # use bettong::{DecodeError, Pipeline, TcpSource, TcpSink};
    /// # let p = Pipeline::source("N", TcpSource::new(|b: &[u8]| -> Result<u64, DecodeError> { Ok(b.len() as u64) }));
    /// let done = p.to_sink("Sizes", TcpSink::new(|n: &u64, out: &mut Vec<u8>| out.extend_from_slice(&n.to_be_bytes())));
    /// # let _ = done;
    /// ```
    pub fn to_sink<S: Sink<T>>(self, name: &str, sink: S) -> Complete {
        let mut graph = self.graph;
        graph.add(sink_spec(name, sink), &[(self.tail, None)]);
        Complete { graph }
    }

    /// Ends the pipeline at several sinks: every output goes to each of them, each with its
    /// own encoder (Wallaroo's `to_sinks`).
    ///
    /// ```
    /// # use bettong::{DecodeError, Pipeline, TcpSource, TcpSink, Sinks};
    /// # let p = Pipeline::source("N", TcpSource::new(|b: &[u8]| -> Result<u64, DecodeError> { Ok(b.len() as u64) }));
    /// let done = p.to_sinks(
    ///     Sinks::new()
    ///         .sink("Text", TcpSink::new(|n: &u64, out: &mut Vec<u8>| out.extend_from_slice(format!("{n}\n").as_bytes())))
    ///         .sink("Binary", TcpSink::new(|n: &u64, out: &mut Vec<u8>| out.extend_from_slice(&n.to_be_bytes()))),
    /// );
    /// # let _ = done;
    /// ```
    pub fn to_sinks(self, sinks: Sinks<T>) -> Complete
    where
        T: Clone,
    {
        let mut graph = self.graph;
        if sinks.specs.is_empty() {
            graph.errors.push("to_sinks was given no sink".to_string());
        }
        if let Some(node) = graph.nodes.get_mut(&self.tail) {
            node.tee = Some(tee::<T>);
        }
        for spec in sinks.specs {
            graph.add(spec, &[(self.tail, None)]);
        }
        Complete { graph }
    }
}

/// The sinks of [`Pipeline::to_sinks`], each with its name.
pub struct Sinks<T> {
    specs: Vec<NodeSpec>,
    _t: PhantomData<fn(T)>,
}

impl<T: Send + 'static> Default for Sinks<T> {
    fn default() -> Self {
        Sinks::new()
    }
}

impl<T: Send + 'static> Sinks<T> {
    /// No sinks yet.
    pub fn new() -> Self {
        Sinks {
            specs: Vec::new(),
            _t: PhantomData,
        }
    }

    /// Adds a named sink.
    pub fn sink<S: Sink<T>>(mut self, name: &str, sink: S) -> Self {
        self.specs.push(sink_spec(name, sink));
        self
    }
}

fn sink_spec<T: Send + 'static, S: Sink<T>>(name: &str, sink: S) -> NodeSpec {
    let node = Arc::new(SinkNode::<T, S>(Arc::new(sink), PhantomData));
    NodeSpec {
        kind: "sink",
        name: Some(name.to_string()),
        role: Role::Sink,
        build: node.clone(),
        endpoint: Some(node),
        tee: None,
    }
}

/// A pipeline split by key, waiting for its state computation.
///
/// `F` is the key function's own type, not a boxed closure, so that the exchange's route and
/// the state computation's entity lookup call it inline. Why: the two indirect calls per
/// message (and the argument shuffling around them) were 3.4% of the instructions per message
/// of Market Spread on 2 shards (perf/peer bettong-iter under callgrind: 408.4 before).
pub struct KeyedPipeline<T, K: ?Sized, F> {
    pipeline: Pipeline<T>,
    key: Arc<F>,
    _k: PhantomData<fn() -> Box<K>>,
}

impl<T, K, KF> KeyedPipeline<T, K, KF>
where
    T: Send + 'static,
    K: Key + ?Sized + 'static,
    KF: Fn(&T) -> &K + Send + Sync + 'static,
{
    /// A state computation: `f(message, &mut state)` with zero or one output. Each key has its
    /// own state entity, created with `S::default()` when the key is first seen, on the shard
    /// that owns the key's group.
    ///
    /// ```
    /// # use bettong::{DecodeError, Pipeline, TcpSource};
    /// # let p = Pipeline::source("Text", TcpSource::new(|b: &[u8]| -> Result<String, DecodeError> { Ok(String::from_utf8_lossy(b).into_owned()) }));
    /// #[derive(Default, serde::Serialize, serde::Deserialize)]
    /// struct Count(u64);
    /// let counts = p.key_by(|w: &String| w.as_str()).to_state(|w: String, c: &mut Count| {
    ///     c.0 += 1;
    ///     Some((w, c.0))
    /// });
    /// # let _ = counts;
    /// ```
    pub fn to_state<S, U, F>(self, f: F) -> Pipeline<U>
    where
        S: crate::state::StateEntity,
        U: Send + 'static,
        F: Fn(T, &mut S) -> Option<U> + Send + Sync + 'static,
    {
        self.to_state_many(move |msg, state: &mut S| f(msg, state))
    }

    /// A state computation with any number of outputs per message.
    ///
    /// ```
    /// # use bettong::{DecodeError, Pipeline, TcpSource};
    /// # let p = Pipeline::source("N", TcpSource::new(|b: &[u8]| -> Result<u64, DecodeError> { Ok(b.len() as u64) }));
    /// // Emit the running total every time it crosses a multiple of 100.
    /// let crossings = p.key_by(|n: &u64| n).to_state_many(|n: u64, total: &mut u64| {
    ///     let before = *total / 100;
    ///     *total += n;
    ///     (before + 1..=*total / 100).map(|k| k * 100).collect::<Vec<_>>()
    /// });
    /// # let _ = crossings;
    /// ```
    pub fn to_state_many<S, U, I, F>(self, f: F) -> Pipeline<U>
    where
        S: crate::state::StateEntity,
        U: Send + 'static,
        I: IntoIterator<Item = U>,
        F: Fn(T, &mut S) -> I + Send + Sync + 'static,
    {
        let exchange: Arc<dyn ExchangeBuild> = Arc::new(KeyExchange {
            key: self.key.clone(),
            _k: PhantomData,
        });
        self.pipeline.then(
            "to_state",
            Arc::new(StateNode::<T, K, S, U, F, KF> {
                f: Arc::new(f),
                key: self.key,
                _t: PhantomData,
                _k: PhantomData,
            }),
            Some(exchange),
        )
    }

    /// Range windows over event time, `range` long (tumbling until
    /// [`with_slide`](RangeWindows::with_slide) says otherwise); see [`crate::window`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use bettong::{InProcessSource, Pipeline};
    /// # let p = Pipeline::source("N", InProcessSource::new(|n: &u64| n));
    /// let per_second = p.key_by(|n: &u64| n).range_windows(Duration::from_secs(1));
    /// # let _ = per_second;
    /// ```
    pub fn range_windows(self, range: std::time::Duration) -> RangeWindows<T, K> {
        RangeWindows {
            keyed: self.erased(),
            range,
            slide: None,
            delay: std::time::Duration::ZERO,
            late: LatePolicy::Drop,
        }
    }

    /// Count windows: every `n` messages of a key make one window (`n` ≥ 1); a clean stop
    /// fires the remainder.
    ///
    /// ```
    /// # use bettong::{InProcessSource, Pipeline};
    /// # let p = Pipeline::source("N", InProcessSource::new(|n: &u64| n));
    /// let tens = p.key_by(|n: &u64| n).count_windows(10);
    /// # let _ = tens;
    /// ```
    pub fn count_windows(self, n: u64) -> CountWindows<T, K> {
        CountWindows {
            keyed: self.erased(),
            n,
        }
    }

    /// The pipeline and the key function, boxed: the window operators take it so (their work
    /// per message is far larger than the indirect call).
    fn erased(self) -> Keyed<T, K> {
        Keyed {
            pipeline: self.pipeline,
            key: self.key,
        }
    }
}

/// A pipeline split by a boxed key function: what windows are set up on.
struct Keyed<T, K: ?Sized> {
    pipeline: Pipeline<T>,
    key: crate::ops::state::KeyFn<T, K>,
}

impl<T: Send + 'static, K: Key + ?Sized + 'static> Keyed<T, K> {
    fn windows<U: Send + 'static>(
        self,
        kind: &'static str,
        build: Arc<dyn NodeBuild>,
    ) -> Pipeline<U> {
        let exchange: Arc<dyn ExchangeBuild> = Arc::new(KeyExchange {
            key: self.key.clone(),
            _k: PhantomData,
        });
        self.pipeline.then(kind, build, Some(exchange))
    }
}

/// Range windows being set up: [`with_slide`](Self::with_slide),
/// [`with_delay`](Self::with_delay), [`with_late_data_policy`](Self::with_late_data_policy),
/// then [`over`](Self::over) an aggregation.
pub struct RangeWindows<T, K: ?Sized> {
    keyed: Keyed<T, K>,
    range: std::time::Duration,
    slide: Option<std::time::Duration>,
    delay: std::time::Duration,
    late: LatePolicy,
}

impl<T: Send + 'static, K: Key + ?Sized + 'static> RangeWindows<T, K> {
    /// A new window starts every `slide` (which must divide the range).
    pub fn with_slide(mut self, slide: std::time::Duration) -> Self {
        self.slide = Some(slide);
        self
    }

    /// Windows fire `delay` after their end has passed (room for out-of-order data).
    pub fn with_delay(mut self, delay: std::time::Duration) -> Self {
        self.delay = delay;
        self
    }

    /// What happens to a message that arrives after its windows have fired.
    pub fn with_late_data_policy(mut self, policy: LatePolicy) -> Self {
        self.late = policy;
        self
    }

    /// Folds each window with `aggregation` into at most one output.
    pub fn over<A: Aggregation<T, Key = K>>(self, aggregation: A) -> Pipeline<A::Out> {
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let range = ns(self.range);
        let slide = self.slide.map_or(range, ns);
        let node = RangeWindowNode {
            agg: Arc::new(aggregation),
            key: self.keyed.key.clone(),
            shape: Shape::new(range, slide, ns(self.delay)),
            late: self.late,
        };
        let mut p: Pipeline<A::Out> = self.keyed.windows("range_windows", Arc::new(node));
        if let Err(e) = Shape::new(range, slide, 0) {
            p.graph.errors.push(e);
        }
        p
    }
}

/// Count windows being set up: [`over`](Self::over) an aggregation.
pub struct CountWindows<T, K: ?Sized> {
    keyed: Keyed<T, K>,
    n: u64,
}

impl<T: Send + 'static, K: Key + ?Sized + 'static> CountWindows<T, K> {
    /// Folds every `n` messages of a key with `aggregation` into at most one output.
    pub fn over<A: Aggregation<T, Key = K>>(self, aggregation: A) -> Pipeline<A::Out> {
        let n = self.n;
        let node = CountWindowNode {
            agg: Arc::new(aggregation),
            key: self.keyed.key.clone(),
            n,
        };
        let mut p: Pipeline<A::Out> = self.keyed.windows("count_windows", Arc::new(node));
        if n == 0 {
            p.graph
                .errors
                .push("count_windows(0): a window needs at least one message".into());
        }
        p
    }
}

/// Hands an operator the entities a restored checkpoint holds for it on this shard.
fn restore_into(
    sb: &ShardBuild,
    name: &str,
    mut restore: impl FnMut(&crate::checkpoint::format::Entries) -> Result<(), String>,
) -> Result<(), Error> {
    let restored = sb
        .core
        .checkpoints
        .restored
        .borrow_mut()
        .states
        .remove(name);
    for entries in restored.into_iter().flatten() {
        restore(&entries).map_err(|e| Error::Shard(format!("restoring {name}: {e}")))?;
    }
    Ok(())
}

struct RangeWindowNode<T, A: Aggregation<T>> {
    agg: Arc<A>,
    key: crate::ops::state::KeyFn<T, A::Key>,
    shape: Result<Shape, String>,
    late: LatePolicy,
}

impl<T: Send + 'static, A: Aggregation<T>> NodeBuild for RangeWindowNode<T, A> {
    fn build(
        &self,
        sb: &mut ShardBuild,
        node: &NodeCtx<'_>,
        out: Option<AnyBox>,
    ) -> Result<Option<Built>, Error> {
        let shape = self.shape.clone().map_err(Error::Plan)?;
        let next = downstream::<A::Out>(out);
        let gauges = next.gauges.clone();
        let op = Rc::new(ops::window::RangeWindows::new(
            self.agg.clone(),
            self.key.clone(),
            shape,
            self.late,
            next,
            Ports::new(node.ports),
            ComputationTimer::new(sb.core.metrics.clone(), node.name),
            sb.core.metrics.clone(),
            Some((sb.core.clone(), node.name.to_string())),
        ));
        restore_into(sb, node.name, |e| op.restore(e))?;
        sb.tasks
            .push((node.rank, Box::pin(op.clone().run(sb.core.clone()))));
        let input: Rc<dyn Input<T>> = op;
        Ok(Some(built(input, gauges)))
    }
}

struct CountWindowNode<T, A: Aggregation<T>> {
    agg: Arc<A>,
    key: crate::ops::state::KeyFn<T, A::Key>,
    n: u64,
}

impl<T: Send + 'static, A: Aggregation<T>> NodeBuild for CountWindowNode<T, A> {
    fn build(
        &self,
        sb: &mut ShardBuild,
        node: &NodeCtx<'_>,
        out: Option<AnyBox>,
    ) -> Result<Option<Built>, Error> {
        let next = downstream::<A::Out>(out);
        let gauges = next.gauges.clone();
        let op = Rc::new(ops::window::CountWindows {
            agg: self.agg.clone(),
            key: self.key.clone(),
            n: self.n,
            state: Default::default(),
            next,
            ports: Ports::new(node.ports),
            timer: ComputationTimer::new(sb.core.metrics.clone(), node.name),
            metrics: sb.core.metrics.clone(),
            saver: Some((sb.core.clone(), node.name.to_string())),
        });
        restore_into(sb, node.name, |e| op.restore(e))?;
        let input: Rc<dyn Input<T>> = op;
        Ok(Some(built(input, gauges)))
    }
}

/// A pipeline that ends at a sink, ready to become (part of) an [`Application`].
pub struct Complete {
    graph: Graph,
}

/// A named application: one or more complete pipelines, which may share sources. What the
/// engine runs.
///
/// ```
/// # use bettong::{Application, DecodeError, Pipeline, TcpSink, TcpSource};
/// let bytes = |b: &[u8]| -> Result<Vec<u8>, DecodeError> { Ok(b.to_vec()) };
/// let echo = |b: &Vec<u8>, out: &mut Vec<u8>| bettong::codec::write_frame(out, b);
/// let app = Application::new(
///     "echo",
///     Pipeline::source("In", TcpSource::new(bytes)).to_sink("Echo", TcpSink::new(echo)),
/// )
/// .pipeline(Pipeline::source("Other", TcpSource::new(bytes)).to_sink("OtherEcho", TcpSink::new(echo)));
/// assert_eq!(app.name(), "echo");
/// assert_eq!(app.source_names(), ["In", "Other"]);
/// assert_eq!(app.sink_names(), ["Echo", "OtherEcho"]);
/// ```
pub struct Application {
    name: String,
    graph: Graph,
}

impl Application {
    /// Names a complete pipeline as an application.
    pub fn new(name: &str, pipeline: Complete) -> Self {
        Application {
            name: name.to_string(),
            graph: pipeline.graph,
        }
    }

    /// Adds another pipeline (Wallaroo's `new_pipeline`); it may share sources with the
    /// others.
    pub fn pipeline(mut self, pipeline: Complete) -> Self {
        self.graph = std::mem::take(&mut self.graph).union(pipeline.graph);
        self
    }

    /// The application's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn names(&self, role: Role) -> Vec<String> {
        self.graph
            .nodes
            .values()
            .filter(|n| n.role == role)
            .filter_map(|n| n.name.clone())
            .collect()
    }

    /// The names of its sources, in the order they were defined.
    pub fn source_names(&self) -> Vec<String> {
        self.names(Role::Source)
    }

    /// The names of its sinks, in the order they were defined.
    pub fn sink_names(&self) -> Vec<String> {
        self.names(Role::Sink)
    }

    /// The plan the engine will run, one operator per line in topological order:
    /// `id name (kind) -> next ids` (`~` marks an exchange by key). Fails as
    /// [`Engine::start`](crate::Engine::start) would on an invalid graph (two operators with
    /// one name).
    pub fn describe(&self) -> Result<String, Error> {
        Ok(self.graph.plan()?.to_string())
    }

    pub(crate) fn plan(&self) -> Result<crate::plan::Plan, Error> {
        self.graph.plan()
    }
}

// ---- typed node builders -------------------------------------------------------------------

/// An [`Opened`](crate::Opened) with its parts' type erased, for the plan.
#[allow(clippy::type_complexity)]
fn erase<P: Send + 'static>(
    opened: crate::Opened<P>,
) -> Result<(Vec<Box<dyn std::any::Any + Send>>, Option<String>), Error> {
    let parts = opened
        .parts
        .into_iter()
        .map(|p| Box::new(p) as Box<dyn std::any::Any + Send>)
        .collect();
    Ok((parts, opened.endpoint))
}

struct SourceNode<S>(Arc<S>);

impl<S: Source> NodeBuild for SourceNode<S> {
    fn build(
        &self,
        sb: &mut ShardBuild,
        node: &NodeCtx<'_>,
        out: Option<AnyBox>,
    ) -> Result<Option<Built>, Error> {
        let down = downstream::<S::Out>(out);
        let part = sb.take_part::<S::Part>(node.id, node.name)?;
        let ctx = SourceContext::new(node.name, down, sb.core.clone());
        let injector = ctx.clone();
        sb.injectors
            .push(Box::new(move |id| injector.inject_barrier(id)));
        let run = self.0.run(part, ctx.clone());
        sb.sources.push((
            node.rank,
            Box::pin(async move {
                run.await;
                ctx.finish().await;
            }),
        ));
        Ok(None)
    }
}

impl<S: Source> Endpoint for SourceNode<S> {
    fn takes_address(&self) -> bool {
        self.0.takes_address()
    }

    fn open(
        &self,
        name: &str,
        address: Option<&str>,
        shards: usize,
    ) -> Result<(Vec<Box<dyn std::any::Any + Send>>, Option<String>), Error> {
        erase(self.0.open(name, address, shards)?)
    }
}

struct SinkNode<T, S>(Arc<S>, PhantomData<fn(T)>);

impl<T: Send + 'static, S: Sink<T>> NodeBuild for SinkNode<T, S> {
    fn build(
        &self,
        sb: &mut ShardBuild,
        node: &NodeCtx<'_>,
        _out: Option<AnyBox>,
    ) -> Result<Option<Built>, Error> {
        let part = sb.take_part::<S::Part>(node.id, node.name)?;
        let finish = Rc::new(Latch::default());
        let gauges = Rc::new(std::cell::RefCell::new(Vec::new()));
        let ctx = SinkContext {
            name: node.name.to_string(),
            core: sb.core.clone(),
            finish: finish.clone(),
            gauges: gauges.clone(),
        };
        let shard = self.0.start(part, ctx);
        sb.sinks.push((node.rank, finish, shard.task));
        let sinks = &sb.core.checkpoints.sinks;
        sinks.set(sinks.get() + 1);
        let input = (shard.wire)(ops::sink::SinkWiring {
            ports: Ports::new(node.ports),
            metrics: sb.core.metrics.clone(),
            core: sb.core.clone(),
            precommits: shard.precommits,
        });
        let gauges: Rc<[Gauge]> = gauges.borrow().clone().into();
        Ok(Some(built(input, gauges)))
    }
}

impl<T: Send + 'static, S: Sink<T>> Endpoint for SinkNode<T, S> {
    fn takes_address(&self) -> bool {
        self.0.takes_address()
    }

    fn open(
        &self,
        name: &str,
        address: Option<&str>,
        shards: usize,
    ) -> Result<(Vec<Box<dyn std::any::Any + Send>>, Option<String>), Error> {
        erase(self.0.open(name, address, shards)?)
    }
}

struct MapNode<T, U, F>(Arc<F>, PhantomData<fn(T) -> U>);

impl<T: Send + 'static, U: Send + 'static, F: Fn(T) -> Option<U> + Send + Sync + 'static> NodeBuild
    for MapNode<T, U, F>
{
    fn build(
        &self,
        sb: &mut ShardBuild,
        node: &NodeCtx<'_>,
        out: Option<AnyBox>,
    ) -> Result<Option<Built>, Error> {
        let next = downstream::<U>(out);
        let gauges = next.gauges.clone();
        let input: Rc<dyn Input<T>> = Rc::new(ops::map::Map {
            f: self.0.clone(),
            next,
            ports: Ports::new(node.ports),
            timer: ComputationTimer::new(sb.core.metrics.clone(), node.name),
            metrics: sb.core.metrics.clone(),
            _in: PhantomData,
        });
        Ok(Some(built(input, gauges)))
    }
}

struct FlatMapNode<T, U, F>(Arc<F>, PhantomData<fn(T) -> U>);

impl<T, U, I, F> NodeBuild for FlatMapNode<T, U, F>
where
    T: Send + 'static,
    U: Send + 'static,
    I: IntoIterator<Item = U>,
    F: Fn(T) -> I + Send + Sync + 'static,
{
    fn build(
        &self,
        sb: &mut ShardBuild,
        node: &NodeCtx<'_>,
        out: Option<AnyBox>,
    ) -> Result<Option<Built>, Error> {
        let next = downstream::<U>(out);
        let gauges = next.gauges.clone();
        let input: Rc<dyn Input<T>> = Rc::new(ops::flat_map::FlatMap {
            f: self.0.clone(),
            next,
            ports: Ports::new(node.ports),
            timer: ComputationTimer::new(sb.core.metrics.clone(), node.name),
            metrics: sb.core.metrics.clone(),
            _in: PhantomData,
        });
        Ok(Some(built(input, gauges)))
    }
}

struct MergeNode<T>(PhantomData<fn(T)>);

impl<T: Send + 'static> NodeBuild for MergeNode<T> {
    fn build(
        &self,
        sb: &mut ShardBuild,
        node: &NodeCtx<'_>,
        out: Option<AnyBox>,
    ) -> Result<Option<Built>, Error> {
        let next = downstream::<T>(out);
        let gauges = next.gauges.clone();
        // Data skips the merge (each edge calls the next operator directly and checks the
        // merge's flag), unless the next operator is a merge too: its edge's flag must be
        // checked as well, by the merge's own `data`.
        let skip = !next.ctl.holds_data();
        let data = next.data.rc().clone();
        let input: Rc<dyn Input<T>> = Rc::new(ops::merge::Merge::new(
            next,
            node.ports,
            sb.core.relief.clone(),
        ));
        Ok(Some(Built {
            input: Box::new(input.clone()),
            data: Box::new(if skip { data } else { input }),
            gauges,
            forward: forward_into_merge::<T>,
        }))
    }
}

/// The edge into input `port` of a merge: with the merge's "some input is held" flag.
fn forward_into_merge<T: 'static>(built: &Built, port: usize) -> AnyBox {
    let mut edge = forward::<T>(built, port)
        .downcast::<Downstream<T>>()
        .unwrap_or_else(|_| unreachable!("forward() gives a Downstream of the input type"));
    if let Some(ports) = edge.ctl.ports() {
        edge.held = ports.any_held_flag();
    }
    // The input's own gauge, for the sources upstream of this input only: the barrier a
    // held input waits for comes by another, whose sources must keep going.
    if let Some(gauge) = edge.ctl.input_gauge(port) {
        edge.gauges = std::iter::once(gauge)
            .chain(edge.gauges.iter().cloned())
            .collect();
    }
    edge
}

struct StateNode<T, K: ?Sized, S, U, F, KF> {
    f: Arc<F>,
    key: Arc<KF>,
    _t: PhantomData<fn(T, S) -> U>,
    _k: PhantomData<fn() -> Box<K>>,
}

impl<T, K, S, U, I, F, KF> NodeBuild for StateNode<T, K, S, U, F, KF>
where
    T: Send + 'static,
    K: Key + ?Sized + 'static,
    S: crate::state::StateEntity,
    U: Send + 'static,
    I: IntoIterator<Item = U>,
    F: Fn(T, &mut S) -> I + Send + Sync + 'static,
    KF: Fn(&T) -> &K + Send + Sync + 'static,
{
    fn build(
        &self,
        sb: &mut ShardBuild,
        node: &NodeCtx<'_>,
        out: Option<AnyBox>,
    ) -> Result<Option<Built>, Error> {
        let next = downstream::<U>(out);
        let gauges = next.gauges.clone();
        let states: Rc<KeyedState<K, S>> = Rc::default();
        // After a restart, the entities of the groups this shard owns.
        let restored = sb
            .core
            .checkpoints
            .restored
            .borrow_mut()
            .states
            .remove(node.name);
        for entries in restored.into_iter().flatten() {
            crate::state::StateView::restore(&*states, &entries)
                .map_err(|e| Error::Shard(format!("restoring {}: {e}", node.name)))?;
        }
        sb.states.push((node.name.to_string(), states.clone()));
        let on_barrier: Rc<dyn Fn(u64)> = {
            let (core, view, name) = (sb.core.clone(), states.clone(), node.name.to_string());
            Rc::new(move |id| {
                for (group, entries) in crate::state::StateView::snapshot(&*view) {
                    core.checkpoints.record(
                        id,
                        crate::checkpoint::format::Record::Group(
                            crate::checkpoint::format::GroupState {
                                operator: name.clone(),
                                group,
                                entries,
                            },
                        ),
                    );
                }
            })
        };
        let input: Rc<dyn Input<T>> = Rc::new(ops::state::StateOp {
            f: self.f.clone(),
            key: self.key.clone(),
            states,
            next,
            ports: Ports::new(node.ports),
            timer: ComputationTimer::new(sb.core.metrics.clone(), node.name),
            metrics: sb.core.metrics.clone(),
            on_barrier,
        });
        Ok(Some(built(input, gauges)))
    }
}

/// An exchange edge by key: the route is `shard_for(stable_hash(key), shards)`, looked up in a
/// [`RouteCache`] for small keys. `KF` is the key function's type (a boxed `dyn Fn` for
/// windows).
struct KeyExchange<T, K: ?Sized, KF: ?Sized> {
    key: Arc<KF>,
    _k: PhantomData<fn(T) -> Box<K>>,
}

impl<T, K, KF> ExchangeBuild for KeyExchange<T, K, KF>
where
    T: Send + 'static,
    K: Key + ?Sized + 'static,
    KF: Fn(&T) -> &K + Send + Sync + ?Sized + 'static,
{
    fn build(
        &self,
        sb: &mut ShardBuild,
        edge: usize,
        built: &Built,
        base: usize,
        rank: usize,
    ) -> AnyBox {
        let me = sb.core.index;
        let shards = sb.core.shards;
        let capacity = sb.core.config.ring_capacity.unwrap_or_else(|| {
            crate::runtime::config::auto_ring_capacity(std::mem::size_of::<T>(), shards)
        });
        let Some(target) = built.input.downcast_ref::<Rc<dyn Input<T>>>() else {
            unreachable!("an exchange feeds an operator of its message type");
        };
        let mut outboxes: Vec<Option<Rc<Outbox<T>>>> = Vec::with_capacity(shards);
        let mut rings = Vec::new();
        let mut runtime = ExchangeRuntime {
            order: rank,
            drain: None,
            movers: Vec::new(),
            closing: Vec::new(),
        };
        let mut gauges: Vec<Gauge> = built.gauges.to_vec();
        let mut port = base + 1;
        for other in 0..shards {
            if other == me {
                outboxes.push(None);
                continue;
            }
            let (tx, rx) = sb.rings.pair::<T>(edge, me, other, capacity);
            let outbox = Rc::new(Outbox {
                spill: Spill::new(tx),
            });
            let closing = Rc::new(Notify::default());
            gauges.push(outbox.spill.gauge.clone());
            runtime.movers.push(Box::pin(
                outbox
                    .clone()
                    .mover(closing.clone(), sb.core.relief.clone()),
            ));
            runtime.closing.push(closing);
            sb.core.add_publisher(outbox.clone());
            outboxes.push(Some(outbox));
            rings.push((rx, port));
            port += 1;
        }
        runtime.drain = Some(Box::pin(exchange::drain(
            rings,
            target.clone(),
            built.gauges.clone(),
            sb.core.clone(),
        )));
        sb.exchanges.push(runtime);
        let local = *(built.forward)(built, base)
            .downcast::<Downstream<T>>()
            .unwrap_or_else(|_| unreachable!("forward() gives a Downstream of the input type"));
        let key = self.key.clone();
        // Always a cache: a validated config has at most `MAX_CORE + 1` shards, which is what
        // a cache entry can name. Looked up per message when it was an `Option` (2 of the
        // instructions of every message's route).
        let cache = RouteCache::new(shards)
            .unwrap_or_else(|| unreachable!("{shards} shards: more than the cores allowed"));
        let exchange = Rc::new(Exchange {
            route: move |msg: &T| {
                let k = key(msg);
                match k.small_bits() {
                    Some(bits) => cache.shard(bits, || shard_for(k.stable_hash(), shards)),
                    None => shard_for(k.stable_hash(), shards),
                }
            },
            me,
            outboxes,
            any_held: local.ctl.ports().map(Ports::any_held_flag),
            local,
            held: Default::default(),
        });
        sb.tasks
            .push((rank, Box::pin(exchange.clone().releaser(sb.core.clone()))));
        let input: Rc<dyn Input<T>> = exchange;
        Box::new(Downstream::to(input, 0, gauges.into()))
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Application>();
    let _ = std::mem::size_of::<Event<()>>();
}
