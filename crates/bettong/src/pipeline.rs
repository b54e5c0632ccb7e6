//! The typed pipeline builder, in Wallaroo's vocabulary: a [`Pipeline`] starts at a source,
//! goes through computations (`to`, `to_many`), is split by key (`key_by`) into state
//! computations (`to_state`), may be merged with another pipeline of the same type (`merge`),
//! and ends at a sink (`to_sink`). The result becomes an [`Application`].
//!
//! Each stage's types must match the next one's, so a mistake is a compile error:
//!
//! ```compile_fail
//! use bettong::{Pipeline, TcpSource, DecodeError};
//! let p = Pipeline::source("Numbers", TcpSource::new(|b: &[u8]| -> Result<u64, DecodeError> { Ok(b.len() as u64) }))
//!     .to(|s: String| Some(s.len())); // expects String, the source gives u64
//! ```
//!
//! A pipeline is a recipe: every shard builds its own copy of the graph from it, so functions
//! must be `Send + Sync`. On a shard, each stage calls the next directly; only a message whose
//! key another shard owns leaves the shard, through a ring.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use rustc_hash::FxBuildHasher;

use crate::codec::{Decoder, Encoder};
use crate::metrics::ComputationTimer;
use crate::net::sink::SinkBuffer;
use crate::runtime::router::{shard_for, Key};
use crate::runtime::shard::{Downstream, Emit, ShardBuilder, SourceRuntime};

type Build<T> = Arc<dyn Fn(&mut ShardBuilder, Downstream<T>) + Send + Sync>;

/// A partial pipeline whose messages, at this point, are of type `T`.
///
/// ```
/// use bettong::{Application, DecodeError, Pipeline, TcpSink, TcpSource};
///
/// #[derive(Default)]
/// struct Total(u64);
///
/// let decode = |b: &[u8]| -> Result<u64, DecodeError> {
///     std::str::from_utf8(b).ok().and_then(|s| s.trim().parse().ok())
///         .ok_or(DecodeError::new("not a number"))
/// };
/// let pipeline = Pipeline::source("Numbers", TcpSource::new(decode))
///     .to(|n: u64| (n % 2 == 0).then_some(n)) // keep even numbers
///     .key_by(|n: &u64| n)
///     .to_state(|n: u64, total: &mut Total| {
///         total.0 += n;
///         Some(total.0)
///     })
///     .to_sink(TcpSink::new(|t: &u64, out: &mut Vec<u8>| {
///         out.extend_from_slice(format!("{t}\n").as_bytes())
///     }));
/// let app = Application::new("sum of evens", pipeline);
/// assert_eq!(app.source_names(), ["Numbers"]);
/// ```
pub struct Pipeline<T> {
    build: Build<T>,
    sources: Vec<SourceName>,
    /// Computations so far, to name the next one (`to #2`) in `--metrics-json`.
    computations: usize,
}

/// A source's name, and whether it listens on TCP (and so needs an `--in` address).
#[derive(Clone)]
struct SourceName {
    name: String,
    tcp: bool,
}

impl<T> Clone for Pipeline<T> {
    fn clone(&self) -> Self {
        Pipeline {
            build: self.build.clone(),
            sources: self.sources.clone(),
            computations: self.computations,
        }
    }
}

/// Where a pipeline's messages come from.
///
/// [`TcpSource`] is the one the command line drives.
pub trait Source: Send + Sync + 'static {
    /// The type of the messages this source produces.
    type Out: Send + 'static;
    /// Installs the source on one shard, feeding `down`.
    #[doc(hidden)]
    fn install(&self, name: &str, shard: &mut ShardBuilder, down: Downstream<Self::Out>);
    /// Whether the source listens on TCP, and so needs an address from `--in`.
    #[doc(hidden)]
    fn is_tcp(&self) -> bool {
        false
    }
}

/// A TCP source: a listener (one per shard, same port) taking `[u32 BE len][payload]` frames,
/// each decoded into one message by the decoder. Its address comes from `--in NAME@HOST:PORT`.
///
/// ```
/// use bettong::{DecodeError, TcpSource};
/// let text = TcpSource::new(|b: &[u8]| -> Result<String, DecodeError> {
///     String::from_utf8(b.to_vec()).map_err(|_| DecodeError::new("not UTF-8"))
/// });
/// # let _ = text;
/// ```
pub struct TcpSource<D> {
    decoder: Arc<D>,
}

impl<D: Decoder> TcpSource<D> {
    /// A TCP source that decodes each frame with `decoder`.
    pub fn new(decoder: D) -> Self {
        TcpSource {
            decoder: Arc::new(decoder),
        }
    }
}

impl<D: Decoder> Source for TcpSource<D> {
    type Out = D::Out;

    fn is_tcp(&self) -> bool {
        true
    }

    fn install(&self, name: &str, shard: &mut ShardBuilder, down: Downstream<D::Out>) {
        let decoder = self.decoder.clone();
        let emit = down.emit;
        shard.sources.push(SourceRuntime {
            name: name.to_string(),
            on_frame: Box::new(move |payload, ingest| {
                emit(decoder.decode(payload)?, ingest);
                Ok(())
            }),
            gauges: down.gauges,
        });
    }
}

/// A TCP sink: every shard keeps one connection to the `--out` address and writes the
/// encoder's bytes to it in batches.
///
/// ```
/// use bettong::TcpSink;
/// let lines = TcpSink::new(|s: &String, out: &mut Vec<u8>| {
///     out.extend_from_slice(s.as_bytes());
///     out.push(b'\n');
/// });
/// # let _ = lines;
/// ```
pub struct TcpSink<E> {
    encoder: Arc<E>,
}

impl<E> TcpSink<E> {
    /// A TCP sink that writes each output as `encoder` encodes it.
    pub fn new(encoder: E) -> Self {
        TcpSink {
            encoder: Arc::new(encoder),
        }
    }
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
        let name_owned = name.to_string();
        let tcp = source.is_tcp();
        Pipeline {
            build: Arc::new(move |sb, down| source.install(&name_owned, sb, down)),
            sources: vec![SourceName {
                name: name.to_string(),
                tcp,
            }],
            computations: 0,
        }
    }

    /// Adds a computation called `kind` (numbered in pipeline order for the metrics); `stage`
    /// builds it on a shard, given its downstream, its timer and the shard.
    fn then<U: Send + 'static>(
        self,
        kind: &str,
        stage: impl Fn(&mut ShardBuilder, Downstream<U>, ComputationTimer) -> Downstream<T>
            + Send
            + Sync
            + 'static,
    ) -> Pipeline<U> {
        let upstream = self.build;
        let name = format!("{kind} #{}", self.computations + 1);
        Pipeline {
            build: Arc::new(move |sb, down| {
                let timer = ComputationTimer::new(sb.metrics.clone(), &name);
                let entry = stage(sb, down, timer);
                upstream(sb, entry)
            }),
            sources: self.sources,
            computations: self.computations + 1,
        }
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
        let f = Arc::new(f);
        self.then("to", move |sb, down: Downstream<U>, timer| {
            let f = f.clone();
            let metrics = sb.metrics.clone();
            let next = down.emit;
            Downstream {
                emit: Rc::new(move |msg, ingest| match timer.time(|| f(msg)) {
                    Some(out) => next(out, ingest),
                    None => metrics.filtered(ingest),
                }),
                gauges: down.gauges,
            }
        })
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
        let f = Arc::new(f);
        self.then("to_many", move |sb, down: Downstream<U>, timer| {
            let f = f.clone();
            let metrics = sb.metrics.clone();
            let next = down.emit;
            Downstream {
                emit: Rc::new(move |msg, ingest| {
                    emit_all(timer.time(|| f(msg)), &next, &metrics, ingest)
                }),
                gauges: down.gauges,
            }
        })
    }

    /// Splits the stream by key: the key picks the shard and the state entity of the state
    /// computation that follows.
    ///
    /// ```
    /// # use bettong::{DecodeError, Pipeline, TcpSource};
    /// # let p = Pipeline::source("Text", TcpSource::new(|b: &[u8]| -> Result<String, DecodeError> { Ok(String::from_utf8_lossy(b).into_owned()) }));
    /// let by_word = p.key_by(|w: &String| w.as_str());
    /// # let _ = by_word;
    /// ```
    pub fn key_by<K, F>(self, key: F) -> KeyedPipeline<T, K>
    where
        K: Key + ?Sized + 'static,
        F: Fn(&T) -> &K + Send + Sync + 'static,
    {
        KeyedPipeline {
            pipeline: self,
            key: Arc::new(key),
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
        S: Default + 'static,
        U: Send + 'static,
        F: Fn(T, &mut S) -> Option<U> + Send + Sync + 'static,
    {
        self.key_by(|_: &T| "").to_state(f)
    }

    /// Merges another pipeline of the same message type into this one.
    ///
    /// ```
    /// # use bettong::{DecodeError, Pipeline, TcpSource};
    /// let len = |b: &[u8]| -> Result<usize, DecodeError> { Ok(b.len()) };
    /// let both = Pipeline::source("A", TcpSource::new(len))
    ///     .merge(Pipeline::source("B", TcpSource::new(len)));
    /// # let _ = both;
    /// ```
    pub fn merge(self, other: Pipeline<T>) -> Pipeline<T> {
        let (a, b) = (self.build, other.build);
        let mut sources = self.sources;
        sources.extend(other.sources);
        Pipeline {
            build: Arc::new(move |sb, down: Downstream<T>| {
                a(sb, down.clone());
                b(sb, down);
            }),
            sources,
            computations: self.computations + other.computations,
        }
    }

    /// Ends the pipeline at a sink: a TCP sink (its address comes from `--out`), or an
    /// in-process sink when bettong is embedded.
    ///
    /// ```
    /// # use bettong::{DecodeError, Pipeline, TcpSource, TcpSink};
    /// # let p = Pipeline::source("N", TcpSource::new(|b: &[u8]| -> Result<u64, DecodeError> { Ok(b.len() as u64) }));
    /// let done = p.to_sink(TcpSink::new(|n: &u64, out: &mut Vec<u8>| out.extend_from_slice(&n.to_be_bytes())));
    /// # let _ = done;
    /// ```
    pub fn to_sink<S: Sink<T>>(self, sink: S) -> Complete {
        let upstream = self.build;
        Complete {
            build: Arc::new(move |sb| {
                let down = sink.install(sb);
                upstream(sb, down)
            }),
            sources: self.sources,
        }
    }
}

/// Where a pipeline's outputs go: [`TcpSink`], or an in-process sink
/// ([`crate::in_process::CallbackSink`], [`crate::in_process::PolledSink`]).
pub trait Sink<T>: Send + Sync + 'static {
    /// Installs the sink on one shard and returns its entry point.
    #[doc(hidden)]
    fn install(&self, shard: &mut ShardBuilder) -> Downstream<T>;
}

impl<T: Send + 'static, E: Encoder<T>> Sink<T> for TcpSink<E> {
    fn install(&self, sb: &mut ShardBuilder) -> Downstream<T> {
        let buffer = Rc::new(SinkBuffer::new(sb.sink_buffer));
        sb.sinks.push(buffer.clone());
        let encoder = self.encoder.clone();
        let metrics = sb.metrics.clone();
        let gauges = Rc::from([buffer.gauge.clone()]);
        let emit: Emit<T> = Rc::new(move |msg: T, ingest| {
            buffer.append(|out| encoder.encode(&msg, out));
            metrics.output(ingest);
        });
        Downstream { emit, gauges }
    }
}

fn emit_all<U>(
    outputs: impl IntoIterator<Item = U>,
    next: &Emit<U>,
    metrics: &crate::metrics::ShardMetrics,
    ingest: u64,
) {
    let mut any = false;
    for out in outputs {
        any = true;
        next(out, ingest);
    }
    if !any {
        metrics.filtered(ingest);
    }
}

/// A pipeline split by key, waiting for its state computation.
pub struct KeyedPipeline<T, K: ?Sized> {
    pipeline: Pipeline<T>,
    key: Arc<dyn Fn(&T) -> &K + Send + Sync>,
}

impl<T: Send + 'static, K: Key + ?Sized + 'static> KeyedPipeline<T, K> {
    /// A state computation: `f(message, &mut state)` with zero or one output. Each key has its
    /// own state entity, created with `S::default()` when the key is first seen, on the shard
    /// that owns the key.
    ///
    /// ```
    /// # use bettong::{DecodeError, Pipeline, TcpSource};
    /// # let p = Pipeline::source("Text", TcpSource::new(|b: &[u8]| -> Result<String, DecodeError> { Ok(String::from_utf8_lossy(b).into_owned()) }));
    /// #[derive(Default)]
    /// struct Count(u64);
    /// let counts = p.key_by(|w: &String| w.as_str()).to_state(|w: String, c: &mut Count| {
    ///     c.0 += 1;
    ///     Some((w, c.0))
    /// });
    /// # let _ = counts;
    /// ```
    pub fn to_state<S, U, F>(self, f: F) -> Pipeline<U>
    where
        S: Default + 'static,
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
        S: Default + 'static,
        U: Send + 'static,
        I: IntoIterator<Item = U>,
        F: Fn(T, &mut S) -> I + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let key = self.key;
        self.pipeline
            .then("to_state", move |sb, down: Downstream<U>, timer| {
                let states: Rc<std::cell::RefCell<HashMap<K::Owned, S, FxBuildHasher>>> =
                    Rc::default();
                let (f, key_local, metrics, next) =
                    (f.clone(), key.clone(), sb.metrics.clone(), down.emit);
                let local: Emit<T> = Rc::new(move |msg: T, ingest| {
                    let outputs = {
                        let mut map = states.borrow_mut();
                        let k = key_local(&msg);
                        match map.get_mut(k) {
                            Some(state) => timer.time(|| f(msg, state)),
                            None => {
                                let state = map.entry(k.to_owned()).or_default();
                                timer.time(|| f(msg, state))
                            }
                        }
                    };
                    emit_all(outputs, &next, &metrics, ingest);
                });
                let shards = sb.shards;
                let key_route = key.clone();
                sb.keyed_stage(
                    move |msg: &T| shard_for(key_route(msg).stable_hash(), shards),
                    local,
                    down.gauges,
                )
            })
    }
}

/// A pipeline that ends at a sink, ready to become an [`Application`].
pub struct Complete {
    build: Arc<dyn Fn(&mut ShardBuilder) + Send + Sync>,
    sources: Vec<SourceName>,
}

/// A named application: what the engine runs.
///
/// ```
/// # use bettong::{Application, DecodeError, Pipeline, TcpSink, TcpSource};
/// let app = Application::new(
///     "echo",
///     Pipeline::source("In", TcpSource::new(|b: &[u8]| -> Result<Vec<u8>, DecodeError> { Ok(b.to_vec()) }))
///         .to_sink(TcpSink::new(|b: &Vec<u8>, out: &mut Vec<u8>| bettong::codec::write_frame(out, b))),
/// );
/// assert_eq!(app.name(), "echo");
/// ```
pub struct Application {
    name: String,
    pipeline: Complete,
}

impl Application {
    /// Names a complete pipeline as an application.
    pub fn new(name: &str, pipeline: Complete) -> Self {
        Application {
            name: name.to_string(),
            pipeline,
        }
    }

    /// The application's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The names of its sources, in the order they were defined.
    pub fn source_names(&self) -> Vec<String> {
        self.pipeline
            .sources
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    /// The names of its TCP sources (those that need an `--in` address).
    pub fn tcp_source_names(&self) -> Vec<String> {
        self.pipeline
            .sources
            .iter()
            .filter(|s| s.tcp)
            .map(|s| s.name.clone())
            .collect()
    }

    /// Builds the graph on one shard.
    pub(crate) fn build(&self, shard: &mut ShardBuilder) {
        (self.pipeline.build)(shard)
    }
}
