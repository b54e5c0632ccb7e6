//! One key's open panes of a range window: a dense run indexed by pane number for the panes
//! near each other (the common case: a lookup is a subtraction and an index), and a sorted
//! map for a pane too far from that run to join it.
//!
//! Why both: with the dense run alone, one event far ahead in event time (a hostile or broken
//! clock: 2^62 ns with a 1 s slide is 4.6 billion panes) allocated every pane in between and
//! took the shard's memory. With the sorted map alone, VWAP over TCP (`bettong bench vwap
//! --shards 1`, callgrind, instructions per message) went from 798 to 854 with tumbling
//! windows and from 1919 to 2250 sliding by 100 ms, the map's search in every update.
//!
//! **Invariant:** a pane number is in at most one of the two: in the run when it lies in
//! `base..base + run.len()`, in `far` otherwise. The run never grows past [`RUN_PANES`]; when
//! it grows, the panes of `far` that it now covers move into it.

use std::collections::{BTreeMap, VecDeque};

/// The most panes the dense run spans (the empty slots between open panes included).
pub(crate) const RUN_PANES: u64 = 4096;

/// One pane's accumulator and the latest ingest time folded into it (for the output's
/// start-to-end latency).
pub(crate) struct Pane<Acc> {
    pub(crate) acc: Acc,
    pub(crate) ingest: u64,
}

/// One key's open panes (see the module docs).
pub(crate) struct KeyPanes<Acc> {
    /// `run[i]` is pane `base + i`.
    base: u64,
    run: VecDeque<Option<Pane<Acc>>>,
    far: BTreeMap<u64, Pane<Acc>>,
}

impl<Acc> Default for KeyPanes<Acc> {
    fn default() -> Self {
        KeyPanes {
            base: 0,
            run: VecDeque::new(),
            far: BTreeMap::new(),
        }
    }
}

impl<Acc> KeyPanes<Acc> {
    /// Pane `p`, if open.
    #[inline]
    pub(crate) fn get_mut(&mut self, p: u64) -> Option<&mut Pane<Acc>> {
        match p.checked_sub(self.base) {
            Some(i) if i < self.run.len() as u64 => self.run[i as usize].as_mut(),
            _ if self.far.is_empty() => None,
            _ => self.far.get_mut(&p),
        }
    }

    /// Opens pane `p` (which is not open).
    pub(crate) fn insert(&mut self, p: u64, pane: Pane<Acc>) {
        // Pane u64::MAX (an event time of u64::MAX with a 1 ns slide) stays far, so that the
        // run's end, `base + run.len()`, never overflows.
        let Some(after) = p.checked_add(1) else {
            self.far.insert(p, pane);
            return;
        };
        if self.run.is_empty() {
            self.base = p;
        }
        let (lo, hi) = (
            p.min(self.base),
            after.max(self.base + self.run.len() as u64),
        );
        if hi - lo > RUN_PANES {
            self.far.insert(p, pane);
            return;
        }
        let (old_lo, old_hi) = (self.base, self.base + self.run.len() as u64);
        while self.base > lo {
            self.run.push_front(None);
            self.base -= 1;
        }
        while self.base + (self.run.len() as u64) < hi {
            self.run.push_back(None);
        }
        self.run[(p - self.base) as usize] = Some(pane);
        // The invariant: what `far` held in the newly covered numbers moves into the run.
        if !self.far.is_empty() {
            let covered: Vec<u64> = self
                .far
                .range(lo..old_lo)
                .chain(self.far.range(old_hi.max(lo)..hi))
                .map(|(&q, _)| q)
                .collect();
            for q in covered {
                if let Some(pane) = self.far.remove(&q) {
                    self.run[(q - self.base) as usize] = Some(pane);
                }
            }
        }
    }

    /// The lowest open pane.
    pub(crate) fn first(&self) -> Option<u64> {
        let in_run = self
            .run
            .iter()
            .position(Option::is_some)
            .map(|i| self.base + i as u64);
        let far = self.far.first_key_value().map(|(&p, _)| p);
        match (in_run, far) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The open panes numbered `first..=last` (`first <= last`), in no particular order.
    pub(crate) fn range(&self, first: u64, last: u64) -> impl Iterator<Item = &Pane<Acc>> {
        let end = self.base + self.run.len() as u64;
        let (a, b) = (
            first.clamp(self.base, end),
            last.saturating_add(1).clamp(self.base, end),
        );
        let run = self
            .run
            .range((a - self.base) as usize..(b - self.base) as usize)
            .flatten();
        let far = (!self.far.is_empty())
            .then(|| self.far.range(first..=last).map(|(_, pane)| pane))
            .into_iter()
            .flatten();
        run.chain(far)
    }

    /// Closes every pane numbered `p` or below.
    pub(crate) fn close_through(&mut self, p: u64) {
        while self.base <= p && !self.run.is_empty() {
            self.run.pop_front();
            self.base += 1;
        }
        while let Some(entry) = self.far.first_entry() {
            if *entry.key() > p {
                break;
            }
            entry.remove();
        }
    }

    /// True when no pane is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.far.is_empty() && self.run.iter().all(Option::is_none)
    }

    /// Every open pane and its number, lowest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &Pane<Acc>)> {
        let mut all: Vec<(u64, &Pane<Acc>)> = self
            .run
            .iter()
            .enumerate()
            .filter_map(|(i, pane)| pane.as_ref().map(|pane| (self.base + i as u64, pane)))
            .chain(self.far.iter().map(|(&p, pane)| (p, pane)))
            .collect();
        all.sort_unstable_by_key(|(p, _)| *p);
        all.into_iter()
    }

    /// Panes held: the run's slots (open or not) and the far panes.
    #[cfg(test)]
    fn slots(&self) -> (usize, usize) {
        (self.run.len(), self.far.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pane(v: u64) -> Pane<u64> {
        Pane { acc: v, ingest: 0 }
    }

    fn open(k: &KeyPanes<u64>) -> Vec<(u64, u64)> {
        k.iter().map(|(p, pane)| (p, pane.acc)).collect()
    }

    /// Far apart panes cost a slot each; the run never spans more than `RUN_PANES`.
    #[test]
    fn far_panes_stay_out_of_the_run() {
        let mut k = KeyPanes::default();
        k.insert(10, pane(1));
        k.insert(1 << 60, pane(2));
        k.insert(3, pane(3));
        assert_eq!(k.slots(), (8, 1));
        assert_eq!(open(&k), [(3, 3), (10, 1), (1 << 60, 2)]);
        assert_eq!(k.first(), Some(3));
        assert_eq!(k.get_mut(1 << 60).map(|p| p.acc), Some(2));
        assert!(k.get_mut(11).is_none());
        k.insert(10 + RUN_PANES, pane(4));
        assert_eq!(k.slots(), (8, 2), "past the run's bound: far");
    }

    /// When the run grows over numbers `far` holds, those panes move into it: a pane is in
    /// exactly one place, so a lookup finds it and nothing is counted twice.
    #[test]
    fn the_run_takes_in_the_far_panes_it_comes_to_cover() {
        let mut k = KeyPanes::default();
        k.insert(0, pane(1));
        k.insert(RUN_PANES + 5, pane(2));
        k.insert(RUN_PANES + 9, pane(3));
        assert_eq!(k.slots(), (1, 2));
        k.close_through(0);
        assert!(k.first() == Some(RUN_PANES + 5) && k.slots() == (0, 2));
        // The run restarts at the new pane; growing to the next, it covers one far pane,
        // which moves in; the other stays far.
        k.insert(RUN_PANES + 1, pane(4));
        assert_eq!(k.slots(), (1, 2));
        k.insert(RUN_PANES + 7, pane(5));
        assert_eq!(k.slots(), (7, 1));
        assert_eq!(k.get_mut(RUN_PANES + 5).map(|p| p.acc), Some(2));
        assert_eq!(k.get_mut(RUN_PANES + 9).map(|p| p.acc), Some(3));
        assert_eq!(
            open(&k),
            [
                (RUN_PANES + 1, 4),
                (RUN_PANES + 5, 2),
                (RUN_PANES + 7, 5),
                (RUN_PANES + 9, 3)
            ]
        );
        let sum: u64 = k.range(RUN_PANES, RUN_PANES + 5).map(|p| p.acc).sum();
        assert_eq!(sum, 6);
    }

    /// `range` and `close_through` see both the run and `far`.
    #[test]
    fn range_and_close_cover_both() {
        let mut k = KeyPanes::default();
        for p in [5, 6, 9] {
            k.insert(p, pane(p));
        }
        k.insert(1 << 40, pane(7));
        let sum: u64 = k.range(0, u64::MAX).map(|p| p.acc).sum();
        assert_eq!(sum, 5 + 6 + 9 + 7);
        assert_eq!(k.range(6, 8).map(|p| p.acc).sum::<u64>(), 6);
        k.close_through(6);
        assert_eq!(open(&k), [(9, 9), (1 << 40, 7)]);
        k.close_through(1 << 40);
        assert!(k.is_empty());
    }

    /// The last pane number there is (an event time of u64::MAX with a 1 ns slide) is kept,
    /// found, summed and closed like any other; nothing overflows.
    #[test]
    fn the_last_pane_number_there_is() {
        let mut k = KeyPanes::default();
        k.insert(u64::MAX - 1, pane(1));
        k.insert(u64::MAX, pane(2));
        assert_eq!(k.slots(), (1, 1));
        assert_eq!(k.get_mut(u64::MAX).map(|p| p.acc), Some(2));
        assert_eq!(
            k.range(u64::MAX - 1, u64::MAX).map(|p| p.acc).sum::<u64>(),
            3
        );
        assert_eq!(k.range(u64::MAX, u64::MAX).map(|p| p.acc).sum::<u64>(), 2);
        k.close_through(u64::MAX - 1);
        assert_eq!(k.first(), Some(u64::MAX));
        k.close_through(u64::MAX);
        assert!(k.is_empty());
    }
}
