//! One updating progress line on stderr for long `bench` and `send` runs, drawn only when
//! stderr is a terminal (a pipe or a log file gets nothing).

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the line is redrawn.
const EVERY: Duration = Duration::from_millis(250);

/// A progress line: `label: done/total (pct%), rate msgs/s`.
pub struct Progress {
    on: bool,
    label: &'static str,
    total: Option<u64>,
    start: Instant,
    last: Cell<Instant>,
    shown: Cell<bool>,
}

impl Progress {
    /// A line for `label` that shows only if stderr is a terminal; `total` when known.
    pub fn on_terminal(label: &'static str, total: Option<u64>) -> Progress {
        let on = std::io::stderr().is_terminal();
        Progress::new(on, label, total)
    }

    /// A line that never shows.
    pub fn off() -> Progress {
        Progress::new(false, "", None)
    }

    fn new(on: bool, label: &'static str, total: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress {
            on,
            label,
            total: total.filter(|t| *t > 0 && *t != u64::MAX),
            start: now,
            last: Cell::new(now),
            shown: Cell::new(false),
        }
    }

    /// Redraws the line with `done` messages, at most every 250 ms.
    #[inline]
    pub fn show(&self, done: u64) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        if now - self.last.get() < EVERY {
            return;
        }
        self.last.set(now);
        let secs = (now - self.start).as_secs_f64().max(1e-9);
        let of = match self.total {
            Some(t) => format!("/{t} ({:.0}%)", done as f64 * 100.0 / t as f64),
            None => String::new(),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{}: {done}{of}, {:.0} msgs/s, {secs:.0}s",
            self.label,
            done as f64 / secs
        );
        let _ = err.flush();
        self.shown.set(true);
    }

    /// Clears the line (so that the report that follows starts clean).
    pub fn finish(&self) {
        if self.shown.replace(false) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
