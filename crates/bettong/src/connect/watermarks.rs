//! A source's watermark from its connections: each connection's watermark is the latest event
//! time it has delivered; the source's is the minimum over the connections that delivered
//! data within the idle timeout. With no such connection the source is idle (it sends
//! [`Control::Idle`](crate::Control::Idle), so it holds nobody back), until one speaks again.

use std::cell::RefCell;

/// Per-connection event-time progress of one source on one shard.
#[derive(Default)]
pub(crate) struct Watermarks {
    /// By connection slot: the latest event time delivered and when (engine clock), or
    /// `None` for a slot whose connection has delivered nothing yet or closed.
    conns: RefCell<Vec<Option<(u64, u64)>>>,
    free: RefCell<Vec<usize>>,
}

/// What the source should say downstream now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    Watermark(u64),
    Idle,
}

impl Watermarks {
    /// A slot for a new connection.
    pub(crate) fn open(&self) -> usize {
        if let Some(id) = self.free.borrow_mut().pop() {
            return id;
        }
        let mut conns = self.conns.borrow_mut();
        conns.push(None);
        conns.len() - 1
    }

    /// Connection `id` has delivered data up to event time `t` (at engine time `now`).
    pub(crate) fn advance(&self, id: usize, t: u64, now: u64) {
        if let Some(slot) = self.conns.borrow_mut().get_mut(id) {
            let prev = slot.map_or(0, |(w, _)| w);
            *slot = Some((prev.max(t), now));
        }
    }

    /// Connection `id` has closed.
    pub(crate) fn close(&self, id: usize) {
        if let Some(slot) = self.conns.borrow_mut().get_mut(id) {
            *slot = None;
            self.free.borrow_mut().push(id);
        }
    }

    /// The source's progress at engine time `now`: the minimum watermark over connections
    /// active within `idle_ns`, or idle when there is none.
    pub(crate) fn progress(&self, now: u64, idle_ns: u64) -> Progress {
        self.conns
            .borrow()
            .iter()
            .flatten()
            .filter(|(_, at)| now.saturating_sub(*at) < idle_ns)
            .map(|(w, _)| *w)
            .min()
            .map_or(Progress::Idle, Progress::Watermark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_active_connection_decides_and_quiet_ones_drop_out() {
        let w = Watermarks::default();
        let (a, b) = (w.open(), w.open());
        assert_eq!(w.progress(0, 100), Progress::Idle, "nothing delivered yet");
        w.advance(a, 50, 0);
        w.advance(b, 30, 10);
        assert_eq!(w.progress(20, 100), Progress::Watermark(30));
        w.advance(b, 20, 20); // out of order: the connection's watermark stays 30
        assert_eq!(w.progress(20, 100), Progress::Watermark(30));
        // a has been quiet for 100: only b counts.
        assert_eq!(w.progress(100, 100), Progress::Watermark(30));
        w.close(b);
        assert_eq!(w.progress(100, 100), Progress::Idle);
        assert_eq!(w.open(), b, "slots are reused");
    }
}
