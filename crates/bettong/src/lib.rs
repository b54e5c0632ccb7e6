//! bettong: a single-node, thread-per-core stream-processing engine in the Wallaroo model.
//!
//! An application is a [`Pipeline`]: a source with a decoder, stateless computations
//! ([`Pipeline::to`], [`Pipeline::to_many`]), state computations over keyed state entities
//! ([`Pipeline::key_by`] then [`KeyedPipeline::to_state`]), merges, and a sink with an encoder.
//! The [`Engine`] runs it on one shard per core; see README.md for a complete walk-through.
//!
//! ```
//! use bettong::{Application, DecodeError, Pipeline, TcpSink, TcpSource};
//!
//! #[derive(Default)]
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
//!         .to_sink(TcpSink::new(|(k, n): &(Vec<u8>, u64), out: &mut Vec<u8>| {
//!             out.extend_from_slice(k);
//!             out.extend_from_slice(format!(" {n}\n").as_bytes());
//!         })),
//! );
//! assert_eq!(app.source_names(), ["Keys"]);
//! ```

#![warn(missing_docs)]

pub mod codec;
pub mod in_process;
pub mod metrics;
pub(crate) mod net;
pub mod pipeline;
pub mod runtime;
pub mod units;

pub use codec::{DecodeError, Decoder, Encoder};
pub use in_process::{CallbackSink, InProcessSource, Outputs, PolledSink, Pusher};
pub use pipeline::{
    Application, Complete, KeyedPipeline, Pipeline, Sink, Source, TcpSink, TcpSource,
};
pub use runtime::router::Key;
pub use runtime::{Engine, StopHandle};
