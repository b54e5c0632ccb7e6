//! What flows between operators and through the rings: data with its stamps, and control
//! events that travel with the data (watermarks, checkpoint barriers, end of stream).
//!
//! ```
//! use bettong::{Control, Stamp};
//! let s = Stamp { ingest_ns: 1_000, event_ns: 5_000 };
//! assert_eq!(s.event_ns - s.ingest_ns, 4_000);
//! assert_ne!(Control::Barrier(1), Control::Barrier(2));
//! ```

/// The times a data event carries: when its input was read (`ingest_ns`, the engine's
/// monotonic clock, for start-to-end latency) and the event time it stands for (`event_ns`,
/// nanoseconds since the Unix epoch unless the source says otherwise; by default the wall
/// clock at ingest, as Wallaroo does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// The engine clock ([`crate::now_ns`]) when the input was read.
    pub ingest_ns: u64,
    /// The event time.
    pub event_ns: u64,
}

impl Stamp {
    /// A stamp read at `ingest_ns` (the engine clock, [`crate::now_ns`]) whose event time is
    /// the wall-clock time of that instant (for sources without an event time of their own).
    ///
    /// ```
    /// let s = bettong::Stamp::at(bettong::now_ns());
    /// let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    /// assert!(s.event_ns.abs_diff(wall.as_nanos() as u64) < 1_000_000_000);
    /// ```
    #[inline]
    pub fn at(ingest_ns: u64) -> Stamp {
        Stamp {
            ingest_ns,
            event_ns: crate::metrics::wall_clock_ns(ingest_ns),
        }
    }
}

/// A control event. Operators observe it and forward it; where an operator has several
/// inputs it forwards a watermark as the minimum over the inputs that are neither ended nor
/// idle, a barrier once every input has delivered it, and end of stream once every input has
/// ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// No data with an event time below this one will follow on this input.
    Watermark(u64),
    /// Checkpoint barrier `id`: everything before it belongs to checkpoint `id`.
    Barrier(u64),
    /// The input has no data for now: do not wait for its watermark until it sends one
    /// again (its later data may then be late).
    Idle,
    /// The input has ended: nothing more will follow.
    End,
}

/// What flows into an operator's input, in order: a message with its stamp, or a control
/// event. (Between shards the two travel apart, in a lane's rings: `runtime::lane`.)
pub(crate) enum Event<T> {
    Data(T, Stamp),
    Control(Control),
}
