//! bettong: a single-node, thread-per-core stream-processing engine in the Wallaroo model.
//!
//! An [`Application`] is one or more [`Pipeline`]s: a source with a decoder, stateless
//! computations ([`Pipeline::to`], [`Pipeline::to_many`]), state computations over keyed state
//! entities ([`Pipeline::key_by`] then [`KeyedPipeline::to_state`]), merges and splits, and
//! sinks with encoders ([`Pipeline::to_sink`], [`Pipeline::to_sinks`]). The [`Engine`] lowers
//! it into a plan of named operators and runs it on one shard per core; [`run_until_signal`]
//! runs it until SIGINT or SIGTERM and stops it cleanly.
//!
//! ```
//! use bettong::{Application, DecodeError, Pipeline, TcpSink, TcpSource};
//!
//! #[derive(Default, serde::Serialize, serde::Deserialize)]
//! struct Seen(u64);
//!
//! let app = Application::new(
//!     "count per key",
//!     Pipeline::source("Keys", TcpSource::new(|b: &[u8]| -> Result<Vec<u8>, DecodeError> { Ok(b.to_vec()) }))
//!         .key_by(|k: &Vec<u8>| k.as_slice())
//!         .to_state(|k: Vec<u8>, seen: &mut Seen| {
//!             seen.0 += 1;
//!             Some((k, seen.0))
//!         })
//!         .name("count")
//!         .to_sink("Counts", TcpSink::new(|(k, n): &(Vec<u8>, u64), out: &mut Vec<u8>| {
//!             out.extend_from_slice(k);
//!             out.extend_from_slice(format!(" {n}\n").as_bytes());
//!         })),
//! );
//! assert_eq!(app.source_names(), ["Keys"]);
//! assert_eq!(app.describe().unwrap(), "0 Keys (source) -> 1~\n1 count (to_state) -> 2\n2 Counts (sink)\n");
//! ```
//!
//! Connectors are public traits ([`Source`], [`Sink`]): see [`connect`] to write your own.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod codec;
pub mod connect;
mod error;
mod event;
mod hasher;
pub mod metrics;
pub(crate) mod net;
pub(crate) mod ops;
mod pipeline;
pub(crate) mod plan;
pub mod runtime;
mod signals;
pub mod state;
pub mod units;
pub mod window;

pub use codec::{DecodeError, Decoder, Encoder};
pub use connect::in_process::{
    CallbackSink, InProcessSource, Outputs, PolledSink, PushError, Pusher,
};
pub use connect::iter_source::IterSource;
pub use connect::tcp::{TcpSink, TcpSource};
pub use connect::{
    CheckpointOutcomes, Opened, Sink, SinkContext, SinkInput, SinkShard, Source, SourceContext,
};
pub use error::Error;
pub use event::{Control, Stamp};
pub use metrics::{now_ns, Summary};
pub use pipeline::{
    Application, Complete, CountWindows, KeyedPipeline, Pipeline, RangeWindows, Sinks,
};
pub use runtime::config::{EngineConfig, Poll};
pub use runtime::router::Key;
pub use runtime::shard::Gauge;
pub use runtime::{Engine, StopHandle};
pub use signals::run_until_signal;
