//! [`Run`]: messages handed to an operator where they lie (a chunk of a batch that a `key_by`
//! exchange split, a stretch of a lane's ring), each moved out once.
//!
//! Why: called once per message, an operator takes each message by value, which the caller
//! first copies out of the batch or the ring, and the operator copies again into its own
//! computation's call. A run is one call per stretch; the state operator looks at each message
//! where it lies ([`Run::next_in_place`]) and reads it out once, straight into its
//! computation's call. Market Spread, perf/peer `bettong-iter` under callgrind, instructions
//! per message: 2 shards with nothing crossing 240.6 -> 207.9; with half crossing 254.2 ->
//! 236.0 with the exchange's local runs, -> 218.7 with the lanes' runs too; 1 shard (no
//! exchange) 187.1 either way.
//!
//! **Invariant:** each index a run holds names an initialised message at `base + index`
//! that nothing but the run reads out or drops, and that stays where it is for the run's
//! lifetime `'a`; the run moves past an index before it reads that message out.

use std::marker::PhantomData;

/// The most messages one run holds: its indices are bytes.
pub(crate) const MAX: usize = 256;

/// Indices 0 to 255 in order: the indices of a run over consecutive messages.
static CONSECUTIVE: [u8; MAX] = {
    let mut all = [0u8; MAX];
    let mut i = 0;
    while i < MAX {
        all[i] = i as u8;
        i += 1;
    }
    all
};

/// Messages of one stretch for one operator, in order: an iterator that moves each out of
/// where it lies. What is not taken is dropped with the run.
pub(crate) struct Run<'a, T> {
    /// Where the messages' indices count from.
    base: *const T,
    /// Offsets from `base` of the messages not yet taken (the invariant).
    indices: std::slice::Iter<'a, u8>,
    _messages: PhantomData<&'a mut T>,
}

impl<'a, T> Run<'a, T> {
    /// The messages at `base + i` for each `i` in `indices`, in that order.
    ///
    /// # Safety
    /// The invariant, for `indices`: each names an initialised message that nothing else reads
    /// out or drops from now on, and that stays put for `'a`.
    #[inline(always)]
    pub(crate) unsafe fn new(base: *const T, indices: &'a [u8]) -> Self {
        Run {
            base,
            indices: indices.iter(),
            _messages: PhantomData,
        }
    }

    /// The `len` messages from `base` on, in order.
    ///
    /// # Safety
    /// As for [`new`](Self::new), for each of the `len` (at most [`MAX`]) messages.
    #[inline(always)]
    pub(crate) unsafe fn consecutive(base: *const T, len: usize) -> Self {
        debug_assert!(len <= MAX);
        // SAFETY: passed on to the caller.
        unsafe { Run::new(base, &CONSECUTIVE[..len.min(MAX)]) }
    }

    /// Where the messages' indices count from, and the indices of those not yet taken: the
    /// run taken apart, its messages left where they lie, for whoever reads them out (or
    /// leaks them) instead.
    #[inline(always)]
    pub(crate) fn into_raw(self) -> (*const T, &'a [u8]) {
        let this = std::mem::ManuallyDrop::new(self);
        (this.base, this.indices.as_slice())
    }

    /// The next message where it lies, to be looked at and then taken: an operator that
    /// passes the message on by value reads it out once this way, where
    /// [`next`](Iterator::next) reads it out into a value that the operator's call copies
    /// again.
    #[inline(always)]
    pub(crate) fn next_in_place(&mut self) -> Option<InPlace<'_, T>> {
        let &i = self.indices.next()?;
        Some(InPlace {
            // SAFETY: by the invariant `base + i` is a message of the run, and the run has
            // moved past `i`: only this `InPlace`, which borrows the run, reads it out.
            ptr: unsafe { self.base.add(usize::from(i)) },
            _run: PhantomData,
        })
    }
}

impl<T> Iterator for Run<'_, T> {
    type Item = T;

    #[inline(always)]
    fn next(&mut self) -> Option<T> {
        let &i = self.indices.next()?;
        // SAFETY: by the invariant, a message only this run reads out, and the run has moved
        // past it: it is read out once.
        Some(unsafe { self.base.add(usize::from(i)).read() })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.indices.size_hint()
    }
}

impl<T> ExactSizeIterator for Run<'_, T> {}

impl<T> Drop for Run<'_, T> {
    fn drop(&mut self) {
        self.for_each(drop);
    }
}

/// A message of a [`Run`] not yet read out: [`take`](InPlace::take) moves it out, and
/// dropping the `InPlace` drops the message.
pub(crate) struct InPlace<'a, T> {
    /// A message that only this `InPlace` reads out (see `Run::next_in_place`).
    ptr: *const T,
    _run: PhantomData<&'a mut T>,
}

impl<T> InPlace<'_, T> {
    /// The message.
    #[inline(always)]
    pub(crate) fn get(&self) -> &T {
        // SAFETY: an initialised message (the run's invariant), read out only by `take` or
        // `drop`, which consume `self`.
        unsafe { &*self.ptr }
    }

    /// The message, moved out.
    #[inline(always)]
    pub(crate) fn take(self) -> T {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: as in `get`; `this` is never dropped, so this is the one read.
        unsafe { this.ptr.read() }
    }
}

impl<T> Drop for InPlace<'_, T> {
    fn drop(&mut self) {
        // SAFETY: as in `get`: not taken, so this is the one read.
        drop(unsafe { self.ptr.read() });
    }
}

/// What the tests of runs and splits move around.
#[cfg(test)]
pub(crate) mod test_message {
    use std::cell::RefCell;

    /// A message that logs its drop. (It borrows the log rather than sharing it through an
    /// `Rc`, so that a message a test leaks leaks no allocation: Miri runs these tests, `just
    /// miri`, and reports leaks.)
    pub(crate) struct Msg<'a> {
        pub(crate) id: usize,
        pub(crate) drops: &'a RefCell<Vec<usize>>,
    }

    impl Drop for Msg<'_> {
        fn drop(&mut self) {
            self.drops.borrow_mut().push(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::mem::ManuallyDrop;

    use super::test_message::Msg;
    use super::*;

    /// Messages `0..n`, owned by no one but what reads them out.
    fn messages(n: usize, drops: &RefCell<Vec<usize>>) -> Vec<ManuallyDrop<Msg<'_>>> {
        (0..n)
            .map(|id| ManuallyDrop::new(Msg { id, drops }))
            .collect()
    }

    /// Every message of a run is moved out or dropped exactly once, whichever way it is
    /// taken: by value, in place and taken, in place and dropped, or left to the run.
    #[test]
    fn every_message_is_read_out_once() {
        let drops = RefCell::new(Vec::new());
        let all = messages(MAX, &drops);
        let base = all.as_ptr().cast::<Msg>();
        // SAFETY: `all` holds MAX initialised messages that nothing else drops (they are
        // `ManuallyDrop`), and it outlives the run.
        let mut run = unsafe { Run::consecutive(base, MAX) };
        assert_eq!(run.len(), MAX);
        let by_value = run.next().expect("a message");
        let in_place = run.next_in_place().expect("a message");
        assert_eq!(in_place.get().id, 1);
        let taken = in_place.take();
        drop(run.next_in_place().expect("a message")); // 2, dropped in place
        assert_eq!(*drops.borrow(), [2]);
        assert_eq!(run.len(), MAX - 3);
        drop(run); // 3.., dropped by the run
        assert_eq!((by_value.id, taken.id), (0, 1));
        drop((by_value, taken));
        let mut got = drops.borrow().clone();
        got.sort_unstable();
        assert_eq!(got, (0..MAX).collect::<Vec<_>>(), "each dropped once");
    }

    /// A run over chosen indices reads those, in the order given, and nothing else.
    #[test]
    fn a_run_reads_its_indices_in_order() {
        let drops = RefCell::new(Vec::new());
        let all = messages(10, &drops);
        let base = all.as_ptr().cast::<Msg>();
        let picks = [7u8, 2, 9];
        // SAFETY: three distinct initialised messages of `all`, which outlives the run, and
        // no one else reads them out.
        let run = unsafe { Run::new(base, &picks) };
        let ids: Vec<usize> = run.map(|m| m.id).collect();
        assert_eq!(ids, [7, 2, 9]);
        assert_eq!(*drops.borrow(), [7, 2, 9]);
        // The others are still there, untouched: drop them here, once.
        for (i, m) in all.into_iter().enumerate() {
            if !picks.contains(&(i as u8)) {
                drop(ManuallyDrop::into_inner(m));
            }
        }
        assert_eq!(drops.borrow().len(), 10);
    }
}
