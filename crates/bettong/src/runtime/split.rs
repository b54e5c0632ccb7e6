//! The exchange's batch path: a batch of messages sorted by destination shard where they lie,
//! then delivered in two runs, this shard's own and the others'.
//!
//! Why: routed one at a time, every message of a `key_by` exchange takes a branch on "is this
//! key mine?", and with keys spread over the shards that branch goes either way at random:
//! cachegrind's branch simulation counts 0.687 mispredictions per message in the exchange for
//! Market Spread on 2 shards, 0.48 of them on that branch. Here every message's shard is computed first, and its index
//! appended to both lists with only one list's length advanced, so nothing branches on the
//! destination; then each list is delivered in order. The messages never move until they are
//! delivered: staging each message for its shard instead (a copy into a buffer per
//! destination and out again) cost more than the branch (see `Exchange`'s docs).
//!
//! Market Spread, perf/peer `bettong-iter` (an `IterSource` hands the exchange batches of
//! [`CHUNK`]), before and after:
//! - callgrind with branch simulation, 2 shards: the exchange's own mispredictions 0.687 ->
//!   0.226 per message, for 75.7 -> 85.0 of its instructions; in all, 284.2 -> 298.3
//!   instructions and 1.900 -> 1.41-1.64 mispredictions per message (the rest of the
//!   difference is the decoder's branch on the message type, which the simulated predictor
//!   counts differently as the harness's code is laid out). 2 shards with nothing crossing
//!   266.3 -> 270.1 instructions; 1 shard (no exchange, no batches) 196.6 -> 199.6;
//! - 2 shards, 12 alternating runs: median 28.1 -> 31.8 M msgs/s, CPU per message (best 3)
//!   60.7-62.8 -> 50.6-56.1 ns; 12 more in a noisier hour: 26.5 -> 28.5 M, 63.4-65.8 ->
//!   53.1-62.8 ns; perf samples of the engine per sample of `StateOp::data` (4 runs each,
//!   which cancels most of this machine's swings), median 2.84 -> 2.75.
//!
//! **Invariant:** once [`Split::route`] has run over a chunk (the messages of a batch's
//! stretch, indices `0..n`, or those a run names), `local[..nl]` and `remote[..nr]` together
//! hold every index of the chunk exactly once, each list in the chunk's order, and `dst[i]`
//! is the shard of message `i`. (Delivering on more than 2 shards then reuses `local`, once its
//! run is over, for the remote list sorted by shard.)

use crate::runtime::run::{self, Run};

/// The most messages routed at a time: indices fit a byte (a run's), and a chunk of 64-byte
/// messages (16 KiB) stays in the L1 cache between the route and the delivery.
pub(crate) const CHUNK: usize = run::MAX;

/// The most shards over which a chunk's remote messages are sorted by shard and handed on in a
/// run per shard; on more, each goes on its own. Over 64 a chunk's runs would average fewer
/// than 4 messages each, and the sort's pass over the shards is paid per chunk (not measured:
/// this machine has 2 cores, and callgrind's counts below go up to 4 shards).
pub(crate) const SORTED_SHARDS: usize = 64;

/// Where a split hands its messages on.
pub(crate) trait Deliver<T> {
    /// This shard's own messages of a chunk, in order, in one run.
    fn local(&mut self, run: Run<'_, T>);
    /// One message for another shard (on more than [`SORTED_SHARDS`] shards).
    fn remote(&mut self, shard: usize, msg: T);
    /// A chunk's messages for another shard, in order, in one run (on 2 to
    /// [`SORTED_SHARDS`] shards).
    fn run(&mut self, shard: usize, run: Run<'_, T>);
}

/// Three closures, for `local`, `remote` and `run` in that order.
impl<T, L, R, U> Deliver<T> for (L, R, U)
where
    L: FnMut(Run<'_, T>),
    R: FnMut(usize, T),
    U: FnMut(usize, Run<'_, T>),
{
    #[inline(always)]
    fn local(&mut self, run: Run<'_, T>) {
        (self.0)(run)
    }

    #[inline(always)]
    fn remote(&mut self, shard: usize, msg: T) {
        (self.1)(shard, msg)
    }

    #[inline(always)]
    fn run(&mut self, shard: usize, run: Run<'_, T>) {
        (self.2)(shard, run)
    }
}

/// The routes of one chunk of messages.
struct Split {
    dst: [u16; CHUNK],
    local: [u8; CHUNK],
    remote: [u8; CHUNK],
    nl: usize,
    nr: usize,
}

impl Split {
    fn new() -> Self {
        Split {
            dst: [0; CHUNK],
            local: [0; CHUNK],
            remote: [0; CHUNK],
            nl: 0,
            nr: 0,
        }
    }

    /// Routes `messages`, each with its index in the chunk (at most [`CHUNK`] of them),
    /// setting up the invariant for them.
    ///
    /// The list lengths are counted in locals and stored once: counted in the struct's
    /// fields, they went to memory and back for every message (LLVM cannot tell the byte
    /// stores into the lists from them). Market Spread on 2 shards, perf/peer `bettong-iter`
    /// under callgrind: 298.4 -> 292.8 instructions per message, 270.1 -> 264.0 with nothing
    /// crossing.
    #[inline]
    fn route<'m, T: 'm>(
        &mut self,
        messages: impl ExactSizeIterator<Item = (u8, &'m T)>,
        me: usize,
        route: &impl Fn(&T) -> usize,
    ) {
        debug_assert!(messages.len() <= CHUNK);
        let n = messages.len();
        let mut nl = 0usize;
        for (k, (i, msg)) in messages.enumerate() {
            let shard = route(msg);
            debug_assert!(shard <= usize::from(u16::MAX));
            self.dst[usize::from(i)] = shard as u16;
            // Written to both lists; only one of them grows (the remote one holds `k - nl`).
            // `nl <= k < CHUNK` (256), so no index below truncates: the byte casts only spare
            // the bounds checks.
            self.local[usize::from(nl as u8)] = i;
            self.remote[usize::from((k - nl) as u8)] = i;
            nl += usize::from(shard == me);
        }
        self.nl = nl;
        self.nr = n - nl;
    }

    /// Delivers the chunk at `base` that [`route`](Self::route) has just routed: see
    /// [`deliver`].
    ///
    /// # Safety
    /// `route` ran over this chunk, and none of its messages has been read out since; they
    /// stay put until this returns.
    #[inline(always)]
    unsafe fn deliver<T>(&mut self, base: *const T, shards: usize, to: &mut impl Deliver<T>) {
        if self.nl > 0 {
            // SAFETY: the local list's indices are messages of this chunk that no other
            // list names (the invariant), which stay put (the caller).
            to.local(unsafe { Run::new(base, &self.local[..self.nl]) });
        }
        let remotes = &self.remote[..self.nr];
        if shards == 2 {
            if let Some(&first) = remotes.first() {
                let shard = usize::from(self.dst[usize::from(first)]);
                debug_assert!(
                    remotes
                        .iter()
                        .all(|&i| usize::from(self.dst[usize::from(i)]) == shard),
                    "on 2 shards every remote message goes to the other one"
                );
                // SAFETY: the whole remote list: by the invariant, messages of this chunk
                // that the local run did not name, which stay put.
                to.run(shard, unsafe { Run::new(base, remotes) });
            }
        } else if shards <= SORTED_SHARDS {
            // A counting sort of the remote list by shard, into the local list (its run is
            // over): stable, so each shard's messages keep their order. `next[s]` counts shard
            // `s`'s messages, then holds where the next of them goes, and at the end where its
            // run ends.
            let mut next = [0u16; SORTED_SHARDS];
            for &i in remotes {
                next[usize::from(self.dst[usize::from(i)])] += 1;
            }
            let mut at = 0;
            for n in &mut next[..shards] {
                (*n, at) = (at, at + *n);
            }
            // Every remote message was counted below `shards` (a shard of `SORTED_SHARDS` or
            // more panicked above): otherwise the positions below would overlap, and a message
            // could be read out twice.
            assert_eq!(
                usize::from(at),
                remotes.len(),
                "route() gave a shard out of range"
            );
            for &i in remotes {
                let slot = &mut next[usize::from(self.dst[usize::from(i)])];
                // `*slot < nr <= CHUNK` (256): the byte cast does not truncate.
                self.local[usize::from(*slot as u8)] = i;
                *slot += 1;
            }
            let mut begin = 0;
            for (shard, &end) in next[..shards].iter().enumerate() {
                let end = usize::from(end);
                if end > begin {
                    // SAFETY: `local[..nr]` now holds the remote list's indices, each once
                    // (a permutation of it), so the runs name disjoint messages of this
                    // chunk that the local run did not name (the invariant), which stay put.
                    to.run(shard, unsafe { Run::new(base, &self.local[begin..end]) });
                }
                begin = end;
            }
        } else {
            for &i in remotes {
                let shard = usize::from(self.dst[usize::from(i)]);
                // SAFETY: by the invariant no other index of either list is `i`, so this
                // message is read out once.
                to.remote(shard, unsafe { base.add(usize::from(i)).read() });
            }
        }
    }
}

/// Empties `batch`, a chunk of [`CHUNK`] at a time. For each chunk: every message whose
/// `route` is `me` in one [`Run`] to `to`'s `local`, in order, then every other one with its
/// shard, in order: on 2 to [`SORTED_SHARDS`] shards in one run per shard to `run`, on more
/// one at a time to `remote`.
/// Messages for the same shard keep their order. `route` gives shards below `shards`.
///
/// Why a run for this shard's own: the operator takes each where it lies (`runtime::run`).
/// Why the others in a run on 2 shards: a lane then pays for its borrow, its overflow check and its stamp
/// once per chunk rather than once per message: Market Spread on 2 shards, 292.8 -> 284.4
/// instructions per message (perf/peer `bettong-iter` under callgrind). On more shards the
/// others are sorted by shard first (a counting sort: two passes over them), each shard's
/// then handed on in a run: Market Spread (perf/peer `bettong-iter` under callgrind, twice
/// each) 230.6 / 232.8 -> 212.5 / 213.7 instructions per message on 3 shards and 250.9 / 253.2
/// -> 228.4 / 229.6 on 4, where each message that crossed had cost 48 in its own send (the
/// lane's borrow, overflow check, stamp and slot). Sent as runs of
/// one message each instead, the 2-shard run took 315.7 (a run is built and taken apart around
/// every message), and a run cut wherever the shard changes would branch at random on the shard
/// again.
///
/// This shard's own go first for no measured reason: in perf samples of the engine per message
/// (Market Spread, 2 shards, 3 rounds) the two orders were within the noise of each other, and
/// so was prefetching the ring slots for writing before the local run.
///
/// A panic in a delivery leaks the chunk's messages not yet delivered (but those of a run
/// being delivered, which the run drops) and the chunks after it: none is dropped twice.
pub(crate) fn deliver<T>(
    batch: &mut Vec<T>,
    me: usize,
    shards: usize,
    route: impl Fn(&T) -> usize,
    mut to: impl Deliver<T>,
) {
    let len = batch.len();
    let base = batch.as_ptr();
    // SAFETY: a length of 0 is within the capacity, and leaves the vector owning no message:
    // each of the `len` messages behind `base` is read out exactly once below (the invariant),
    // and `batch` is borrowed here until then, so nothing else reads or drops them.
    unsafe { batch.set_len(0) };
    let mut split = Split::new();
    let mut start = 0;
    while start < len {
        let n = (len - start).min(CHUNK);
        // SAFETY: messages `start..start + n` are initialised and none of them has been read
        // out yet (chunks are read out in turn, after they are routed); the slice is gone
        // before the first is.
        let messages = unsafe { std::slice::from_raw_parts(base.add(start), n) };
        // `n <= CHUNK` (256): the byte casts do not truncate.
        split.route(
            messages.iter().enumerate().map(|(i, m)| (i as u8, m)),
            me,
            &route,
        );
        // SAFETY: routed just now, and none read out since; the batch's buffer stays put
        // while it is borrowed here.
        unsafe { split.deliver(base.add(start), shards, &mut to) };
        start += n;
    }
}

/// [`deliver`] for the messages of a run: the run's own messages to `local` in a run of
/// them, the others as `deliver` hands them on, where they lie.
pub(crate) fn deliver_run<T>(
    messages: Run<'_, T>,
    me: usize,
    shards: usize,
    route: impl Fn(&T) -> usize,
    mut to: impl Deliver<T>,
) {
    let (base, indices) = messages.into_raw();
    let mut split = Split::new();
    // SAFETY: by the run's invariant its indices name initialised messages that only it
    // reads out, which stay put while it lives (`'_`, past this call); the run is taken
    // apart, so only the split's runs and reads below read them out.
    unsafe {
        split.route(
            indices.iter().map(|&i| (i, &*base.add(usize::from(i)))),
            me,
            &route,
        );
        split.deliver(base, shards, &mut to);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::runtime::run::test_message::Msg;

    /// [`deliver`] with its three deliveries as closures.
    fn deliver_with<T>(
        batch: &mut Vec<T>,
        me: usize,
        shards: usize,
        route: impl Fn(&T) -> usize,
        local: impl FnMut(Run<'_, T>),
        remote: impl FnMut(usize, T),
        run: impl FnMut(usize, Run<'_, T>),
    ) {
        deliver(batch, me, shards, route, (local, remote, run))
    }

    fn shard_of(id: usize, shards: usize) -> usize {
        // Scattered, so that both lists interleave within a chunk.
        (id.wrapping_mul(2_654_435_761) >> 7) % shards
    }

    /// Every message is delivered once, to the list its route names, in its order among the
    /// messages for the same shard; this shard's own of a chunk go before the others of it.
    /// Over batches shorter than, as long as and longer than a chunk, on 1 to 5 shards and on
    /// either side of [`SORTED_SHARDS`].
    #[test]
    fn every_message_is_delivered_once_in_order_per_shard() {
        for shards in [1, 2, 3, 4, 5, SORTED_SHARDS, SORTED_SHARDS + 1, 100] {
            for len in [0, 1, 2, 255, 256, 257, 1000] {
                let me = len % shards;
                let drops = RefCell::new(Vec::new());
                let mut batch: Vec<Msg> = (0..len).map(|id| Msg { id, drops: &drops }).collect();
                let got = RefCell::new(Vec::new());
                let runs = RefCell::new(std::collections::HashMap::new());
                deliver_with(
                    &mut batch,
                    me,
                    shards,
                    |m| shard_of(m.id, shards),
                    |run| {
                        for m in run {
                            got.borrow_mut().push((me, m.id));
                        }
                    },
                    |s, m| {
                        assert!(shards > SORTED_SHARDS, "one at a time only on many shards");
                        got.borrow_mut().push((s, m.id));
                    },
                    |s, run| {
                        assert!(shards <= SORTED_SHARDS, "runs only up to {SORTED_SHARDS}");
                        assert!(run.len() > 0, "no empty runs");
                        *runs.borrow_mut().entry(s).or_insert(0) += 1;
                        for m in run {
                            got.borrow_mut().push((s, m.id));
                        }
                    },
                );
                assert!(batch.is_empty());
                let chunks = len.div_ceil(CHUNK);
                for (s, n) in runs.into_inner() {
                    assert!(n <= chunks, "shard {s}: {n} runs over {chunks} chunks");
                }
                let got = got.into_inner();
                let mut ids: Vec<usize> = got.iter().map(|&(_, id)| id).collect();
                ids.sort_unstable();
                assert_eq!(ids, (0..len).collect::<Vec<_>>(), "{shards} shards, {len}");
                for (s, id) in &got {
                    assert_eq!(*s, shard_of(*id, shards), "message {id} to its shard");
                }
                for s in 0..shards {
                    let order: Vec<usize> = got.iter().filter(|g| g.0 == s).map(|g| g.1).collect();
                    assert!(
                        order.windows(2).all(|w| w[0] < w[1]),
                        "shard {s}: {order:?}"
                    );
                }
                for (c, chunk) in got.chunks(CHUNK).enumerate() {
                    let first_remote = chunk.iter().position(|g| g.0 != me);
                    if let Some(p) = first_remote {
                        assert!(chunk[p..].iter().all(|g| g.0 != me), "chunk {c}");
                    }
                }
                // Delivered by value: each dropped once, by the callbacks above.
                let mut dropped = drops.borrow().clone();
                dropped.sort_unstable();
                assert_eq!(dropped, (0..len).collect::<Vec<_>>());
            }
        }
    }

    /// A run is split as a batch is, where it lies: each of its messages delivered once, to
    /// its shard, in the run's order; this shard's own in one run, the others in one run per
    /// shard up to [`SORTED_SHARDS`] and one at a time on more. Messages outside the run are
    /// not touched.
    #[test]
    fn a_run_is_split_in_place() {
        for shards in [1, 2, 3, 4, SORTED_SHARDS, SORTED_SHARDS + 1] {
            let drops = RefCell::new(Vec::new());
            let all: Vec<std::mem::ManuallyDrop<Msg>> = (0..CHUNK)
                .map(|id| std::mem::ManuallyDrop::new(Msg { id, drops: &drops }))
                .collect();
            // Every third message, from the end backwards: indices in no particular order.
            let picks: Vec<u8> = (0..CHUNK).rev().step_by(3).map(|i| i as u8).collect();
            // SAFETY: distinct initialised messages of `all`, which outlives the run and
            // drops none of them (`ManuallyDrop`).
            let run = unsafe { Run::new(all.as_ptr().cast::<Msg>(), &picks) };
            let me = shards - 1;
            let got = RefCell::new(Vec::new());
            deliver_run(
                run,
                me,
                shards,
                |m| shard_of(m.id, shards),
                (
                    |run: Run<'_, Msg>| got.borrow_mut().extend(run.map(|m| (me, m.id))),
                    |s, m: Msg| {
                        assert!(shards > SORTED_SHARDS);
                        got.borrow_mut().push((s, m.id));
                    },
                    |s, run: Run<'_, Msg>| {
                        assert!(shards <= SORTED_SHARDS);
                        got.borrow_mut().extend(run.map(|m| (s, m.id)));
                    },
                ),
            );
            let got = got.into_inner();
            for s in 0..shards {
                let order: Vec<usize> = got.iter().filter(|g| g.0 == s).map(|g| g.1).collect();
                let want: Vec<usize> = picks
                    .iter()
                    .map(|&i| usize::from(i))
                    .filter(|&id| shard_of(id, shards) == s)
                    .collect();
                assert_eq!(order, want, "{shards} shards, shard {s}");
            }
            let mut dropped = drops.borrow().clone();
            dropped.sort_unstable();
            let mut want: Vec<usize> = picks.iter().map(|&i| usize::from(i)).collect();
            want.sort_unstable();
            assert_eq!(dropped, want, "{shards} shards: the run's, each once");
            for (id, m) in all.into_iter().enumerate() {
                if !picks.contains(&(id as u8)) {
                    drop(std::mem::ManuallyDrop::into_inner(m));
                }
            }
        }
    }

    /// A panic in a delivery drops nothing twice: what was delivered was dropped once, and so
    /// was the rest of the run the panic went through; the rest is leaked, and the vector is
    /// left empty.
    #[test]
    fn a_panic_in_a_delivery_drops_nothing_twice() {
        let drops = RefCell::new(Vec::new());
        let mut batch: Vec<Msg> = (0..600).map(|id| Msg { id, drops: &drops }).collect();
        let delivered = RefCell::new(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            deliver_with(
                &mut batch,
                0,
                2,
                |m| m.id % 2,
                |run| {
                    for m in run {
                        *delivered.borrow_mut() += 1;
                        assert!(m.id < 300, "boom at {}", m.id);
                    }
                },
                |_, _m| *delivered.borrow_mut() += 1,
                |_, run| *delivered.borrow_mut() += run.count(),
            );
        }));
        assert!(r.is_err());
        assert!(batch.is_empty());
        drop(batch);
        let dropped = drops.borrow().clone();
        let mut unique = dropped.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), dropped.len(), "a message dropped twice");
        // Delivered: the first chunk whole, and the second chunk's local run up to 300, whose
        // rest the run dropped as the panic unwound through it. The second chunk's remote
        // messages and the third chunk are leaked.
        let want: Vec<usize> = (0..CHUNK)
            .chain((CHUNK..2 * CHUNK).filter(|id| id % 2 == 0))
            .collect();
        assert_eq!(unique, want);
        assert_eq!(*delivered.borrow(), CHUNK + (300 - CHUNK) / 2 + 1);
    }

    /// A route that breaks its contract (a shard of `shards` or more) on 3 to
    /// [`SORTED_SHARDS`] shards panics before anything is delivered twice: the sort's
    /// positions would overlap otherwise.
    #[test]
    fn a_shard_out_of_range_panics_before_the_sort_reads_twice() {
        for bad in [3, SORTED_SHARDS - 1, SORTED_SHARDS] {
            let drops = RefCell::new(Vec::new());
            let mut batch: Vec<Msg> = (0..100).map(|id| Msg { id, drops: &drops }).collect();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                deliver_with(
                    &mut batch,
                    0,
                    3,
                    |m| if m.id == 50 { bad } else { m.id % 3 },
                    |run| run.for_each(drop),
                    |_, _| unreachable!("runs on 3 shards"),
                    |_, run| run.for_each(drop),
                );
            }));
            assert!(r.is_err(), "shard {bad} of 3");
            let mut dropped = drops.borrow().clone();
            let n = dropped.len();
            dropped.sort_unstable();
            dropped.dedup();
            assert_eq!(dropped.len(), n, "shard {bad}: a message dropped twice");
        }
    }

    /// On 2 shards a chunk's remote messages come in one run; what a run's taker leaves is
    /// dropped with the run, once, and nothing else is lost.
    #[test]
    fn a_run_drops_what_is_not_taken() {
        let drops = RefCell::new(Vec::new());
        let mut batch: Vec<Msg> = (0..300).map(|id| Msg { id, drops: &drops }).collect();
        let taken = RefCell::new(Vec::new());
        let mut runs = 0;
        deliver_with(
            &mut batch,
            1,
            2,
            |m| usize::from(m.id % 3 == 0),
            |run| {
                for m in run {
                    taken.borrow_mut().push(m.id);
                }
            },
            |_, _| unreachable!("a run on 2 shards"),
            |s, mut run| {
                assert_eq!(s, 0);
                runs += 1;
                let half = run.len() / 2;
                for m in run.by_ref().take(half) {
                    taken.borrow_mut().push(m.id);
                }
            },
        );
        assert_eq!(runs, 2, "one run per chunk");
        // Every third message is this shard's (1); the rest go to shard 0, half of each
        // chunk's run taken.
        let remote_ids: Vec<usize> = (0..300).filter(|id| id % 3 != 0).collect();
        let (first, second): (Vec<usize>, Vec<usize>) =
            remote_ids.iter().partition(|&&id| id < CHUNK);
        let mut want_taken: Vec<usize> = (0..300).filter(|id| id % 3 == 0).collect();
        want_taken.extend(&first[..first.len() / 2]);
        want_taken.extend(&second[..second.len() / 2]);
        want_taken.sort_unstable();
        let mut got = taken.into_inner();
        got.sort_unstable();
        assert_eq!(got, want_taken);
        let mut dropped = drops.borrow().clone();
        dropped.sort_unstable();
        assert_eq!(dropped, (0..300).collect::<Vec<_>>(), "each dropped once");
    }
}
