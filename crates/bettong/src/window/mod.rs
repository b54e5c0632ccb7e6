//! Windows and aggregations over event time, in Wallaroo's vocabulary.
//!
//! On a keyed pipeline, `range_windows(range)` groups each key's messages by event time into
//! half-open windows `[start, end)` aligned to multiples of the slide from the Unix epoch
//! (tumbling when the slide is the range), and `count_windows(n)` into windows of `n`
//! messages. An [`Aggregation`] folds each window into one output.
//!
//! | rule | range windows |
//! |---|---|
//! | bounds | `[k·slide, k·slide + range)` in event-time nanoseconds since the epoch; `range` must be a multiple of `slide` |
//! | fires | when the watermark reaches `end + delay` (a message at exactly `end` belongs to the next window) |
//! | empty windows | produce nothing |
//! | late message (every window it belongs to has fired) | [`LatePolicy::Drop`]: counted, no output; [`LatePolicy::FirePerMessage`]: the message alone makes an output, for the last window it belongs to; [`LatePolicy::PlaceInOldestWindow`]: added to the oldest window not yet fired |
//! | quiet input | once every source says it is idle (a TCP source after 250 ms without data), event time is taken to advance with the wall clock from the latest event seen: the last window fires at most `range + delay` (plus the idle timeout) after the input goes quiet (checked every 50 ms) |
//! | clean stop | every open window fires before the engine exits |
//!
//! Count windows fire on their `n`-th message; at a clean stop the remainder fires.
//!
//! Sliding windows keep one accumulator per *pane* (a slide's worth of event time): a message
//! is updated into one pane, and a window is the `combine` of its panes.
//!
//! ```
//! use std::time::Duration;
//! use bettong::window::{Aggregation, LatePolicy, Window};
//! use bettong::{Application, CallbackSink, InProcessSource, Pipeline};
//!
//! /// Sum of the values in each window.
//! struct Sum;
//! impl Aggregation<(String, u64)> for Sum {
//!     type Key = str;
//!     type Acc = u64;
//!     type Out = (String, u64, u64);
//!     fn initial_accumulator(&self) -> u64 { 0 }
//!     fn update(&self, input: &(String, u64), acc: &mut u64) { *acc += input.1 }
//!     fn combine(&self, a: &u64, b: &u64) -> u64 { a + b }
//!     fn output(&self, key: &str, window: &Window, acc: &u64) -> Option<Self::Out> {
//!         Some((key.to_string(), window.end_ns, *acc))
//!     }
//! }
//!
//! let src = InProcessSource::new(|m: &(String, u64)| m.0.as_str());
//! let app = Application::new(
//!     "sums",
//!     Pipeline::source("Values", src)
//!         .key_by(|m: &(String, u64)| m.0.as_str())
//!         .range_windows(Duration::from_secs(3))
//!         .with_slide(Duration::from_secs(1))
//!         .with_delay(Duration::from_millis(500))
//!         .with_late_data_policy(LatePolicy::Drop)
//!         .over(Sum)
//!         .to_sink("Sums", CallbackSink::new(|_: &(String, u64, u64)| {})),
//! );
//! # let _ = app;
//! ```

pub(crate) mod key_panes;
pub(crate) mod panes;

use crate::Key;

/// The bounds of a window a result is for: for range windows `[start_ns, end_ns)` in event
/// time; for count windows the event times of its first and last message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Start (inclusive) in nanoseconds since the Unix epoch.
    pub start_ns: u64,
    /// End (exclusive for range windows) in nanoseconds since the Unix epoch.
    pub end_ns: u64,
}

/// What to do with a message that arrives after every window it belongs to has fired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LatePolicy {
    /// Drop it and count it (the summary's `late`).
    #[default]
    Drop,
    /// Make an output of the message alone, for the last window it belongs to.
    FirePerMessage,
    /// Add it to the oldest window of its key that has not fired yet.
    PlaceInOldestWindow,
}

/// How a window's messages become one output (Wallaroo's aggregation).
///
/// `combine` must be associative: sliding windows combine panes.
pub trait Aggregation<In>: Send + Sync + 'static {
    /// The key type of the `key_by` in front of the windows.
    type Key: Key + ?Sized;
    /// The running state of one window (or pane); serializable, as checkpoints write it.
    type Acc: serde::Serialize + serde::de::DeserializeOwned + 'static;
    /// What a window produces.
    type Out: Send + 'static;
    /// The accumulator of an empty window.
    fn initial_accumulator(&self) -> Self::Acc;
    /// Folds one message in.
    fn update(&self, input: &In, acc: &mut Self::Acc);
    /// Two accumulators as one (associative).
    fn combine(&self, a: &Self::Acc, b: &Self::Acc) -> Self::Acc;
    /// The output of a window of `key`, or `None` for no output.
    fn output(&self, key: &Self::Key, window: &Window, acc: &Self::Acc) -> Option<Self::Out>;
}
