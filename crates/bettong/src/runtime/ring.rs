//! A bounded, lock-free single-producer single-consumer ring that carries messages between two
//! shards.
//!
//! The producer writes items into slots it owns and makes them visible with one release store
//! of its tail ([`Producer::publish`]), so a whole read batch crosses cores with one store. The
//! consumer drains everything published with one acquire load and one release store
//! ([`Consumer::drain`]). Neither side takes a lock or allocates after construction.
//!
//! Either side can wait asynchronously (the consumer for items, the producer for space). A
//! waiting side parks its task's waker and raises a flag; the other side looks at the flag after
//! each publish or drain and wakes the waiter only when the flag is up, so a busy pair of shards
//! never pays for a wake-up. The store-load barrier of that handshake is asymmetric (see
//! `runtime::membarrier`): a compiler barrier on the side that publishes or drains, a
//! `membarrier` on the side that parks, so a publish costs no fence.
//!
//! ```
//! use bettong::runtime::ring;
//!
//! let (mut tx, mut rx) = ring::channel::<u64>(4);
//! assert!(tx.push(1).is_ok());
//! assert!(tx.push(2).is_ok());
//! tx.publish();
//! let mut got = Vec::new();
//! rx.drain(|v| got.push(v));
//! assert_eq!(got, vec![1, 2]);
//! ```

use std::cell::UnsafeCell;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use super::doorbell::{Doorbell, Waiter};
use super::membarrier;
use super::run::{self, Run};

/// Keeps a hot atomic on its own cache line pair so that the producer's and the consumer's
/// positions do not false-share (128 bytes covers adjacent-line prefetching on x86).
#[repr(align(128))]
struct CachePadded<T>(T);

struct Shared<T> {
    /// Next slot the consumer reads; written only by the consumer.
    head: CachePadded<AtomicUsize>,
    /// Next slot the producer publishes; written only by the producer.
    tail: CachePadded<AtomicUsize>,
    closed: AtomicBool,
    consumer: Arc<Waiter>,
    producer: Arc<Waiter>,
    /// `slots.len() - 1`: the length is a power of two, fixed at construction.
    mask: usize,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

impl<T> Shared<T> {
    /// The slot of position `pos`, without a bounds check: the one in `push` and the one per
    /// item in `drain_until` were 4 of the ~40 instructions a message pays to cross between
    /// shards (perf/peer `bettong-iter --workers 2` under callgrind).
    #[inline(always)]
    fn slot(&self, pos: usize) -> &UnsafeCell<MaybeUninit<T>> {
        debug_assert_eq!(self.slots.len(), self.mask + 1);
        // SAFETY: `mask + 1 == slots.len()` (set together in `channel_between`, never
        // changed), so `pos & mask < slots.len()`.
        unsafe { self.slots.get_unchecked(pos & self.mask) }
    }
}

// SAFETY: a slot is accessed by exactly one side at a time: the producer owns slots in
// [tail, head + capacity) and the consumer owns [head, tail); ownership moves only through the
// release/acquire pairs on `tail` and `head`. Values of T move from one thread to the other, so
// T must be Send.
unsafe impl<T: Send> Sync for Shared<T> {}
// SAFETY: see above; the ring owns values of T that may be dropped on either thread.
unsafe impl<T: Send> Send for Shared<T> {}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        let head = *self.head.0.get_mut();
        let tail = *self.tail.0.get_mut();
        for pos in head..tail {
            // SAFETY: we have `&mut self`, so both sides are gone; slots in [head, tail) were
            // published and never consumed, so each holds an initialised value dropped once.
            unsafe { (*self.slot(pos).get()).assume_init_drop() };
        }
    }
}

/// Creates a ring holding at least `capacity` items (rounded up to a power of two, at least 2).
///
/// ```
/// let (tx, rx) = bettong::runtime::ring::channel::<u32>(1000);
/// assert_eq!(tx.capacity(), 1024);
/// # drop(rx);
/// ```
pub fn channel<T: Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    channel_between(capacity, None, None)
}

/// Creates a ring between two shards: a parked producer is woken through `producer_bell`
/// (its shard's doorbell) and a parked consumer through `consumer_bell`.
pub fn channel_between<T: Send>(
    capacity: usize,
    producer_bell: Option<&Arc<Doorbell>>,
    consumer_bell: Option<&Arc<Doorbell>>,
) -> (Producer<T>, Consumer<T>) {
    channel_with(
        capacity,
        Waiter::new(producer_bell),
        Waiter::new(consumer_bell),
    )
}

/// Creates a ring that runs beside `beside` between the same two tasks: it shares that ring's
/// parking spots, so a consumer parked on one is woken by a publish into either, and a
/// producer parked for space by a drain of either. (A lane's marks ring, `runtime::lane`.)
pub(crate) fn channel_beside<U: Send, T>(
    beside: &Producer<T>,
    capacity: usize,
) -> (Producer<U>, Consumer<U>) {
    let shared = &beside.shared;
    channel_with(capacity, shared.producer.clone(), shared.consumer.clone())
}

fn channel_with<T: Send>(
    capacity: usize,
    producer: Arc<Waiter>,
    consumer: Arc<Waiter>,
) -> (Producer<T>, Consumer<T>) {
    let cap = capacity.max(2).next_power_of_two();
    let slots = (0..cap)
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect::<Vec<_>>()
        .into_boxed_slice();
    let shared = Arc::new(Shared {
        head: CachePadded(AtomicUsize::new(0)),
        tail: CachePadded(AtomicUsize::new(0)),
        closed: AtomicBool::new(false),
        consumer,
        producer,
        mask: cap - 1,
        slots,
    });
    (
        Producer {
            shared: shared.clone(),
            write: 0,
            published: 0,
            head_cache: 0,
        },
        Consumer { shared, read: 0 },
    )
}

/// The sending end of a ring. Owned by the producing shard; `Send` so it can be handed to it.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Next slot to write (ahead of `published` until `publish`).
    write: usize,
    published: usize,
    /// Last head we read; refreshed only when the ring looks full, to keep the consumer's cache
    /// line from bouncing on every push.
    head_cache: usize,
}

impl<T: Send> Producer<T> {
    /// The number of items the ring holds.
    ///
    /// ```
    /// let (tx, _rx) = bettong::runtime::ring::channel::<u8>(8);
    /// assert_eq!(tx.capacity(), 8);
    /// ```
    pub fn capacity(&self) -> usize {
        self.shared.mask + 1
    }

    /// True when a slot is free (what a spinning producer looks at: unlike
    /// [`poll_space`](Self::poll_space) it never parks, so it never pays for a barrier).
    pub(crate) fn has_space(&mut self) -> bool {
        if self.write - self.head_cache <= self.shared.mask {
            return true;
        }
        self.head_cache = self.shared.head.0.load(Ordering::Acquire);
        self.write - self.head_cache <= self.shared.mask
    }

    /// Writes `value` into the ring without making it visible; call [`publish`](Self::publish)
    /// after a batch. Gives the value back when the ring is full. A full ring publishes what is
    /// pending so that the consumer can make room.
    ///
    /// ```
    /// let (mut tx, _rx) = bettong::runtime::ring::channel::<u8>(2);
    /// assert!(tx.push(1).is_ok() && tx.push(2).is_ok());
    /// assert_eq!(tx.push(3), Err(3));
    /// ```
    // Always inlined: left to itself LLVM kept it out of line in `Pusher::push`, so the
    // message was copied into the argument and again into the slot; inlined, Market Spread on 1
    // shard in-process takes 489.0 -> 478.0 instructions per message (perf/callgrind.sh's
    // bettong variant, repeats 47955829 / 47955838).
    #[inline(always)]
    pub fn push(&mut self, value: T) -> Result<(), T> {
        if !self.has_space() {
            self.publish();
            return Err(value);
        }
        // SAFETY: `has_space` returned true just above.
        unsafe { self.write_next(value) };
        Ok(())
    }

    /// Like [`push`](Self::push), but a full ring publishes nothing: for a caller that must
    /// publish something else first (a lane publishes its marks before its data).
    #[inline(always)]
    pub(crate) fn try_push(&mut self, value: T) -> Result<(), T> {
        if !self.has_space() {
            return Err(value);
        }
        // SAFETY: `has_space` returned true just above.
        unsafe { self.write_next(value) };
        Ok(())
    }

    /// Writes items from `items` into the free slots without publishing them, until the
    /// iterator ends (true) or the ring is full (false: `items` may hold more). The
    /// consumer's head is read again only when the cached free space is less than `items`'
    /// lower size hint, or none.
    ///
    /// Why not a loop of [`try_push`](Self::try_push): its space check per item, the write
    /// position kept in `self` (stored back after every slot, which LLVM cannot tell apart
    /// from the slot's bytes) and the item held on the stack for the full ring's `Err` cost
    /// about 18 instructions per message a lane sends (Market Spread on 2 shards, the
    /// figures in the commit).
    ///
    /// ```
    /// let (mut tx, mut rx) = bettong::runtime::ring::channel::<u8>(4);
    /// let mut items = [1, 2, 3].into_iter();
    /// assert!(tx.push_many(&mut items));
    /// let mut more = [4, 5, 6].into_iter();
    /// assert!(!tx.push_many(&mut more)); // full after 4
    /// assert_eq!(more.next(), Some(5));
    /// tx.publish();
    /// let mut got = Vec::new();
    /// rx.drain(|v| got.push(v));
    /// assert_eq!(got, vec![1, 2, 3, 4]);
    /// ```
    #[inline(always)]
    pub fn push_many(&mut self, items: &mut impl Iterator<Item = T>) -> bool {
        let capacity = self.shared.mask + 1;
        let mut free = capacity - (self.write - self.head_cache);
        if free < items.size_hint().0.max(1) {
            self.head_cache = self.shared.head.0.load(Ordering::Acquire);
            free = capacity - (self.write - self.head_cache);
        }
        // The mask and the slots' address in locals: read through `self.shared` in the loop,
        // both were loaded again after every slot's stores (LLVM cannot tell them apart).
        let (mask, slots) = (self.shared.mask, self.shared.slots.as_ptr());
        let start = self.write;
        for pos in start..start + free {
            let Some(value) = items.next() else {
                self.write = pos;
                return true;
            };
            // SAFETY: `pos & mask < slots.len()` (`mask + 1 == slots.len()`, see `slot`).
            // pos < start + free = head_cache + capacity, and the consumer's head never passes
            // the tail we published (at most `start`), so the slot is outside the consumer's
            // range [head, tail): never written or already consumed, and overwriting it
            // without dropping is correct. `self.write` moves past it below (or the slot is
            // leaked, never read, if `next` panics).
            unsafe { (*(*slots.add(pos & mask)).get()).write(value) };
        }
        self.write = start + free;
        false
    }

    /// Writes `value` into the next slot.
    ///
    /// # Safety
    ///
    /// [`has_space`](Self::has_space) returned true since the last write.
    #[inline(always)]
    unsafe fn write_next(&mut self, value: T) {
        debug_assert!(self.write - self.head_cache <= self.shared.mask);
        let slot = self.shared.slot(self.write);
        // SAFETY: `has_space` showed write < head + capacity (the caller's contract), so this
        // slot is not in the consumer's range [head, tail) and was either never written or
        // already consumed (its value moved out), so overwriting it without dropping is
        // correct.
        unsafe { (*slot.get()).write(value) };
        self.write += 1;
    }

    /// The position the next push writes: how many items were ever pushed.
    #[inline]
    pub(crate) fn position(&self) -> usize {
        self.write
    }

    /// True when items were pushed but not yet published.
    pub fn has_pending(&self) -> bool {
        self.write != self.published
    }

    /// Makes every pushed item visible to the consumer with one release store, and wakes the
    /// consumer if it is parked.
    pub fn publish(&mut self) {
        if self.write == self.published {
            return;
        }
        self.published = self.write;
        self.shared.tail.0.store(self.write, Ordering::Release);
        self.shared.consumer.wake_if_parked();
    }

    /// Waits until at least one slot is free.
    ///
    /// ```
    /// # glommio::LocalExecutor::default().run(async {
    /// let (mut tx, _rx) = bettong::runtime::ring::channel::<u8>(2);
    /// tx.space().await; // an empty ring has room at once
    /// # });
    /// ```
    pub fn space(&mut self) -> Space<'_, T> {
        Space { producer: self }
    }

    /// Publishes what is pending and tells the consumer no more items will come.
    pub fn close(&mut self) {
        self.publish();
        self.shared.closed.store(true, Ordering::Release);
        self.shared.consumer.wake_if_parked();
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        // Items written but never published stay outside [head, tail); publish them so that
        // `Shared::drop` drops them, and so a consumer still running sees them.
        if self.write != self.published {
            self.shared.tail.0.store(self.write, Ordering::Release);
        }
        self.shared.closed.store(true, Ordering::Release);
        self.shared.consumer.wake_if_parked();
    }
}

/// Future returned by [`Producer::space`].
pub struct Space<'a, T> {
    producer: &'a mut Producer<T>,
}

impl<T: Send> Future for Space<'_, T> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().producer.poll_space(cx)
    }
}

impl<T: Send> Producer<T> {
    /// Polls for a free slot, parking the task's waker when the ring is full (what
    /// [`space`](Self::space) awaits). Publishes pending items first so the consumer can drain.
    pub fn poll_space(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.has_space() {
            return Poll::Ready(());
        }
        self.publish();
        self.shared.producer.park(cx);
        if self.has_space() {
            self.shared.producer.unpark();
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// The receiving end of a ring. Owned by the consuming shard.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    read: usize,
}

/// A drain's guard: frees the drained slots with one release store of the consumer's
/// position when dropped, also when the code items are handed to panics, so that
/// `Shared::drop` never drops a value that was already moved out.
struct Release<'a> {
    head: &'a AtomicUsize,
    read: &'a mut usize,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.head.store(*self.read, Ordering::Release);
    }
}

impl<T: Send> Consumer<T> {
    /// Hands every published item to `f`, in order, and frees their slots with one store.
    /// Returns how many items it drained.
    ///
    /// ```
    /// let (mut tx, mut rx) = bettong::runtime::ring::channel::<u8>(4);
    /// tx.push(7).unwrap();
    /// assert_eq!(rx.drain(|_| ()), 0); // not published yet
    /// tx.publish();
    /// assert_eq!(rx.drain(|v| assert_eq!(v, 7)), 1);
    /// ```
    pub fn drain(&mut self, mut f: impl FnMut(T)) -> usize {
        self.drain_until(|v| {
            f(v);
            true
        })
    }

    /// Like [`drain`](Self::drain), but stops after the first item for which `f` returns
    /// false (that item is consumed; the rest stay in the ring for the next call). An exchange
    /// uses it to stop at a checkpoint barrier while the other inputs catch up.
    ///
    /// ```
    /// let (mut tx, mut rx) = bettong::runtime::ring::channel::<u8>(4);
    /// for v in [1, 2, 3] { tx.push(v).unwrap(); }
    /// tx.publish();
    /// assert_eq!(rx.drain_until(|v| v != 2), 2); // 1 and 2
    /// assert_eq!(rx.drain(|v| assert_eq!(v, 3)), 1);
    /// ```
    pub fn drain_until(&mut self, f: impl FnMut(T) -> bool) -> usize {
        self.drain_before(usize::MAX, f)
    }

    /// Like [`drain_until`](Self::drain_until), but leaves the items from position `end` on
    /// (see [`position`](Self::position)) in the ring: a lane drains its messages up to its
    /// next mark this way, with no count kept per message.
    #[inline]
    pub(crate) fn drain_before(&mut self, end: usize, mut f: impl FnMut(T) -> bool) -> usize {
        self.drain_frame(end, |shared, read, tail| {
            while *read != tail {
                let slot = shared.slot(*read);
                // SAFETY: slots in [read, tail) were written and published by the producer
                // and stay ours until head moves (`drain_frame`); reading moves the value out
                // exactly once, and `read` advances before `f` runs.
                let value = unsafe { (*slot.get()).assume_init_read() };
                *read += 1;
                if !f(value) {
                    break;
                }
            }
        })
    }

    /// Like [`drain_before`](Self::drain_before), but hands the items over in [`Run`]s of
    /// consecutive slots, where they lie (at most [`run::MAX`] a run; the ring's wrap ends a
    /// run too): a lane's drain hands its operator one run per stretch instead of one call per
    /// message (see `runtime::run`). What a run leaves is dropped with it, so every run frees
    /// all of its slots.
    #[inline]
    pub(crate) fn drain_runs_before(&mut self, end: usize, mut f: impl FnMut(Run<'_, T>)) -> usize {
        self.drain_frame(end, |shared, read, tail| {
            while *read != tail {
                let first = *read;
                let len = (tail - first)
                    .min(shared.mask + 1 - (first & shared.mask))
                    .min(run::MAX);
                // Past the run before it is handed over: the run reads out or drops every one
                // of its items, also when `f` panics (the run is dropped as the panic
                // unwinds), so head never moves past an item that is still in its slot.
                *read += len;
                // SAFETY: slots in [first, first + len) were written and published by the
                // producer and stay ours, put, until head moves past them after the run is
                // gone (`drain_frame`): the run's invariant. They are consecutive in memory
                // (the run stops at the wrap), and `MaybeUninit<T>` in an `UnsafeCell` is laid
                // out as `T`. (The pointer is taken from the whole slice, not from one slot: a
                // run reads past its first slot.)
                let run = unsafe {
                    let slots = shared.slots.as_ptr().cast::<T>();
                    Run::consecutive(slots.add(first & shared.mask), len)
                };
                f(run);
            }
        })
    }

    /// What every drain does around the moving out of items: `take` gets the ring, the
    /// consumer's position and the drain's end (`end` or the published tail, the nearer), and
    /// moves items out of the slots from the position on, advancing the position past each
    /// before handing it on, up to that end or short of it. The slots in between were written
    /// and published by the producer (the acquire load of the tail here pairs with its
    /// release store) and stay the consumer's until head moves, once, after `take` returns or
    /// panics ([`Release`]). Returns how many items were taken.
    #[inline(always)]
    fn drain_frame(
        &mut self,
        end: usize,
        take: impl FnOnce(&Shared<T>, &mut usize, usize),
    ) -> usize {
        let shared = &*self.shared;
        // Positions only grow, so the smaller of the two is the nearer.
        let tail = shared.tail.0.load(Ordering::Acquire).min(end);
        if tail <= self.read {
            return 0;
        }
        let start = self.read;
        let release = Release {
            head: &shared.head.0,
            read: &mut self.read,
        };
        take(shared, release.read, tail);
        let n = *release.read - start;
        drop(release);
        shared.producer.wake_if_parked();
        n
    }

    /// The position of the next item to drain: how many items were ever drained.
    #[inline]
    pub(crate) fn position(&self) -> usize {
        self.read
    }

    /// The position after the last item published so far (what a drain now would reach).
    #[inline]
    pub(crate) fn published(&self) -> usize {
        self.shared.tail.0.load(Ordering::Acquire)
    }

    /// The next item to drain, left in the ring.
    pub(crate) fn peek(&self) -> Option<&T> {
        if self.published() == self.read {
            return None;
        }
        // SAFETY: `read < tail`, so the slot was written and published (the acquire load in
        // `published` pairs with the producer's release store) and is ours until head moves
        // past it; head moves only through `&mut self`, which the returned borrow excludes.
        Some(unsafe { (*self.shared.slot(self.read).get()).assume_init_ref() })
    }

    /// Takes the next item, if one is published.
    pub(crate) fn pop(&mut self) -> Option<T> {
        let mut item = None;
        self.drain_until(|v| {
            item = Some(v);
            false
        });
        item
    }

    /// True when nothing is published and not yet drained.
    pub fn is_empty(&self) -> bool {
        self.shared.tail.0.load(Ordering::Acquire) == self.read
    }

    /// True once the producer has closed (or dropped) its end and everything it published has
    /// been drained.
    pub fn is_finished(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire) && self.is_empty()
    }

    /// Waits until there is something to drain or the producer has closed its end.
    ///
    /// ```
    /// # glommio::LocalExecutor::default().run(async {
    /// let (mut tx, mut rx) = bettong::runtime::ring::channel::<u8>(4);
    /// tx.close();
    /// rx.ready().await;
    /// assert!(rx.is_finished());
    /// # });
    /// ```
    pub fn ready(&mut self) -> Ready<'_, T> {
        Ready { consumer: self }
    }
}

/// Future returned by [`Consumer::ready`].
pub struct Ready<'a, T> {
    consumer: &'a mut Consumer<T>,
}

impl<T: Send> Future for Ready<'_, T> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().consumer.poll_ready(cx)
    }
}

impl<T: Send> Consumer<T> {
    /// Polls for items to drain or a closed producer, parking the task's waker otherwise (what
    /// [`ready`](Self::ready) awaits).
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        poll_any_ready(std::slice::from_mut(self), cx, |r| Some(r))
    }

    /// True when the producer has closed its end.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// The consumer's parking spot (shared with the rings beside it, see [`channel_beside`]).
    pub(crate) fn waiter(&self) -> &Waiter {
        &self.shared.consumer
    }
}

/// A consumer that a task can park on: what [`poll_any_ready`] waits on (a ring's
/// [`Consumer`], or an exchange's pair of rings, which park on one spot).
///
/// ```
/// use bettong::runtime::ring::{self, Park};
/// let (mut tx, rx) = ring::channel::<u8>(4);
/// assert!(!rx.is_ready());
/// tx.push(1).unwrap();
/// tx.publish();
/// assert!(rx.is_ready());
/// ```
pub trait Park {
    /// True when there is something to take now (or the producer has closed its end).
    fn is_ready(&self) -> bool;
    /// The spot to park on.
    fn waiter(&self) -> &Waiter;
}

impl<T: Send> Park for Consumer<T> {
    fn is_ready(&self) -> bool {
        !self.is_empty() || self.is_closed()
    }
    fn waiter(&self) -> &Waiter {
        Consumer::waiter(self)
    }
}

/// Polls several rings as one wait: ready when any ring has items or is closed, and otherwise
/// parked on all of them behind a single heavy barrier: one `membarrier` per wait rather than
/// one per ring (`bench market-spread --shards 4 --no-pin` made 14 k calls with one per ring,
/// 4.7–5.3 k with one per wait, and 2.3 k, all glommio's, before asymmetric barriers). `ring`
/// picks each item's ring, or `None` to leave it out of this wait.
///
/// ```
/// use std::task::{Context, Waker};
/// use bettong::runtime::ring;
/// let (mut tx, rx) = ring::channel::<u8>(4);
/// let (_tx2, rx2) = ring::channel::<u8>(4);
/// let mut rings = [rx, rx2];
/// let mut cx = Context::from_waker(Waker::noop());
/// assert!(ring::poll_any_ready(&mut rings, &mut cx, |r| Some(r)).is_pending());
/// tx.push(7).unwrap();
/// tx.publish();
/// assert!(ring::poll_any_ready(&mut rings, &mut cx, |r| Some(r)).is_ready());
/// ```
pub fn poll_any_ready<I, P: Park>(
    items: &mut [I],
    cx: &mut Context<'_>,
    mut ring: impl FnMut(&mut I) -> Option<&mut P>,
) -> Poll<()> {
    let mut ready = false;
    for item in items.iter_mut() {
        if let Some(r) = ring(item) {
            if r.is_ready() {
                ready = true;
                break;
            }
            r.waiter().raise(cx);
        }
    }
    if !ready {
        membarrier::heavy();
        for item in items.iter_mut() {
            if let Some(r) = ring(item) {
                ready |= r.is_ready();
            }
        }
        if !ready {
            return Poll::Pending;
        }
    }
    // Lower every flag this raised: a flag left up would have its producer ring the doorbell
    // on its next publish for a task that is not waiting.
    for item in items.iter_mut() {
        if let Some(r) = ring(item) {
            r.waiter().unpark();
        }
    }
    Poll::Ready(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn fifo_and_capacity() {
        let (mut tx, mut rx) = channel::<u32>(3);
        assert_eq!(tx.capacity(), 4);
        for i in 0..4 {
            assert!(tx.push(i).is_ok());
        }
        assert_eq!(tx.push(9), Err(9)); // full: and this published the four
        let mut got = vec![];
        assert_eq!(rx.drain(|v| got.push(v)), 4);
        assert_eq!(got, vec![0, 1, 2, 3]);
        assert!(tx.push(4).is_ok());
        tx.publish();
        rx.drain(|v| got.push(v));
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    /// `drain_before` stops at the position it is given and leaves the rest; `peek` shows the
    /// next item without taking it, `pop` takes it; positions count every push and drain.
    #[test]
    fn drain_before_peek_and_pop() {
        let (mut tx, mut rx) = channel::<u32>(8);
        for v in 10..15 {
            assert!(tx.push(v).is_ok());
        }
        assert_eq!(tx.position(), 5);
        assert_eq!(rx.peek(), None, "not published yet");
        tx.publish();
        let mut got = vec![];
        assert_eq!(
            rx.drain_before(2, |v| {
                got.push(v);
                true
            }),
            2
        );
        assert_eq!(
            rx.drain_before(2, |v| {
                got.push(v);
                true
            }),
            0
        );
        assert_eq!((got.as_slice(), rx.position()), ([10, 11].as_slice(), 2));
        assert_eq!(rx.peek(), Some(&12));
        assert_eq!(rx.pop(), Some(12));
        assert_eq!(
            rx.drain_before(usize::MAX, |v| {
                got.push(v);
                true
            }),
            2
        );
        assert_eq!(
            (got.as_slice(), rx.published()),
            ([10, 11, 13, 14].as_slice(), 5)
        );
        assert_eq!(rx.peek(), None);
        assert_eq!(rx.pop(), None);
    }

    /// `drain_runs_before` hands the items over in order, in runs that end at the ring's wrap
    /// and after `run::MAX` items, stops at the position it is given, and frees every slot of
    /// a run: what a run's taker leaves is dropped, and the ring has room for all of it again.
    #[test]
    fn drain_runs_before_ends_runs_at_the_wrap_and_at_the_most_a_run_holds() {
        let (mut tx, mut rx) = channel::<u32>(512);
        let mut next = 0u32;
        let mut push = |tx: &mut Producer<u32>, n: u32| {
            for _ in 0..n {
                assert!(tx.push(next).is_ok());
                next += 1;
            }
            tx.publish();
        };
        push(&mut tx, 300);
        let (mut got, mut lens) = (Vec::new(), Vec::new());
        let n = rx.drain_runs_before(usize::MAX, |run| {
            lens.push(run.len());
            got.extend(run);
        });
        assert_eq!((n, lens.as_slice()), (300, [run::MAX, 44].as_slice()));
        // 400 more: slots 300..512, then the wrap to 0..188.
        push(&mut tx, 400);
        lens.clear();
        let n = rx.drain_runs_before(600, |run| {
            lens.push(run.len());
            got.extend(run);
        });
        assert_eq!((n, lens.as_slice()), (300, [212, 88].as_slice()));
        assert_eq!(rx.position(), 600);
        // Half of each run taken: the rest is dropped with the run, and its slots freed.
        lens.clear();
        let n = rx.drain_runs_before(usize::MAX, |mut run| {
            lens.push(run.len());
            let half = run.len() / 2;
            got.extend(run.by_ref().take(half));
        });
        assert_eq!((n, lens.as_slice()), (100, [100].as_slice()));
        let want: Vec<u32> = (0..650).collect();
        assert_eq!(got, want);
        push(&mut tx, 512);
        assert!(
            tx.push(0).is_err(),
            "every slot was freed, and is full again"
        );
    }

    /// A panic in the code a run is handed to drops the rest of that run once, frees its
    /// slots, and leaves the runs after it in the ring; nothing is dropped twice.
    #[test]
    fn a_panic_in_a_run_frees_its_slots_and_drops_nothing_twice() {
        let drops = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct D(u32, std::sync::Arc<std::sync::Mutex<Vec<u32>>>);
        impl Drop for D {
            fn drop(&mut self) {
                self.1.lock().unwrap().push(self.0);
            }
        }
        let (mut tx, mut rx) = channel::<D>(512);
        for i in 0..300 {
            assert!(tx.push(D(i, drops.clone())).is_ok());
        }
        tx.publish();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rx.drain_runs_before(usize::MAX, |run| {
                for d in run {
                    assert!(d.0 < 10, "boom at {}", d.0);
                }
            })
        }));
        assert!(r.is_err());
        // 0..=10 taken and dropped, 11..256 dropped with the run.
        let mut dropped = drops.lock().unwrap().clone();
        dropped.sort_unstable();
        assert_eq!(dropped, (0..run::MAX as u32).collect::<Vec<_>>());
        assert_eq!(rx.position(), run::MAX);
        let mut rest = Vec::new();
        rx.drain(|d| rest.push(d.0));
        assert_eq!(rest, (run::MAX as u32..300).collect::<Vec<_>>());
        drop((tx, rx));
        let mut dropped = drops.lock().unwrap().clone();
        let all = dropped.len();
        dropped.sort_unstable();
        dropped.dedup();
        assert_eq!((all, dropped.len()), (300, 300), "each dropped once");
    }

    /// Every value is dropped exactly once, whether consumed, left published in the ring, or
    /// pushed and never published.
    #[test]
    fn drops_each_value_once() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct D;
        impl Drop for D {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (mut tx, mut rx) = channel::<D>(8);
        for _ in 0..3 {
            assert!(tx.push(D).is_ok());
        }
        tx.publish();
        rx.drain(drop);
        assert_eq!(DROPS.load(Ordering::SeqCst), 3);
        for _ in 0..2 {
            assert!(tx.push(D).is_ok());
        }
        tx.publish();
        assert!(tx.push(D).is_ok()); // never published
        drop(tx);
        drop(rx);
        assert_eq!(DROPS.load(Ordering::SeqCst), 6);
    }

    /// `push_many` fills exactly the free slots across the wrap-around, reads the head again
    /// only when the cached space is short of the iterator's hint, and leaves what did not fit
    /// in the iterator; each value is dropped once.
    #[test]
    fn push_many_fills_the_free_slots_and_leaves_the_rest() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct D(u32);
        impl Drop for D {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (mut tx, mut rx) = channel::<D>(4);
        let mut got = vec![];
        // Move the positions so that the next writes wrap around the slots.
        assert!(tx.push_many(&mut (0..3).map(D)));
        tx.publish();
        rx.drain(|d| got.push(d.0));
        // The cached head is 0 (3 used of 4): the hint of 5 makes it read the head (3).
        let mut items = (3..8).map(D);
        assert!(!tx.push_many(&mut items), "four fit, the fifth does not");
        assert_eq!(tx.position(), 7);
        assert_eq!(items.next().map(|d| d.0), Some(7), "left in the iterator");
        drop(items);
        // Full: nothing is written, the iterator is untouched.
        let mut more = (8..9).map(D);
        assert!(!tx.push_many(&mut more));
        assert_eq!(more.next().map(|d| d.0), Some(8));
        tx.publish();
        rx.drain(|d| got.push(d.0));
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5, 6]);
        // An empty iterator on a ring with room writes nothing and says it ended.
        assert!(tx.push_many(&mut std::iter::empty()));
        assert_eq!(tx.position(), 7);
        assert!(tx.push_many(&mut (9..11).map(D)));
        drop(tx); // published on drop, dropped with the ring
        drop(rx);
        assert_eq!(DROPS.load(Ordering::SeqCst), 11);
    }

    /// Two threads, runs of values through `push_many` into a tiny ring: every value arrives
    /// once and in order, whatever the split between full rings and runs.
    #[test]
    fn push_many_across_threads() {
        // Fewer under Miri, which runs it about a million times slower.
        let n: u64 = if cfg!(miri) { 300 } else { 100_000 };
        let (mut tx, mut rx) = channel::<u64>(8);
        let producer = std::thread::spawn(move || {
            futures_lite::future::block_on(async move {
                let mut next = 0;
                while next < n {
                    // Runs of 1 to 13 values.
                    let mut run = next..(next + 1 + next % 13).min(n);
                    while !tx.push_many(&mut run) {
                        tx.publish();
                        tx.space().await;
                    }
                    next = run.end;
                    tx.publish();
                }
                tx.close();
            })
        });
        let got = futures_lite::future::block_on(async move {
            let mut expect = 0u64;
            loop {
                rx.ready().await;
                rx.drain(|v| {
                    assert_eq!(v, expect);
                    expect += 1;
                });
                if rx.is_finished() {
                    break expect;
                }
            }
        });
        producer.join().unwrap();
        assert_eq!(got, n);
    }

    /// Two threads, a tiny ring and both sides parking: every value arrives once and in order.
    #[test]
    fn cross_thread_with_parking() {
        const N: u64 = 200_000;
        let (mut tx, mut rx) = channel::<u64>(16);
        let producer = std::thread::spawn(move || {
            futures_lite::future::block_on(async move {
                let mut i = 0;
                while i < N {
                    match tx.push(i) {
                        Ok(()) => {
                            i += 1;
                            if i % 5 == 0 {
                                tx.publish();
                            }
                        }
                        Err(_) => tx.space().await,
                    }
                }
                tx.close();
            })
        });
        let sum = futures_lite::future::block_on(async move {
            let mut expect = 0u64;
            let mut sum = 0u64;
            loop {
                rx.ready().await;
                rx.drain(|v| {
                    assert_eq!(v, expect);
                    expect += 1;
                    sum += v;
                });
                if rx.is_finished() {
                    break;
                }
            }
            assert_eq!(expect, N);
            sum
        });
        producer.join().unwrap();
        assert_eq!(sum, N * (N - 1) / 2);
    }
}
