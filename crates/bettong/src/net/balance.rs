//! Spreading one TCP source's connections evenly over the shards.
//!
//! Every shard listens on the source's port (SO_REUSEPORT), and the kernel picks the listener
//! for each new connection by a hash of its addresses: with few connections the shards get
//! uneven shares. `bench passthrough` (8 connections, 2 shards) was bimodal: 22–23 M msgs/s in
//! 3 runs of 5 and 13–15 M in the other 2, about what a 6/2 or 7/1 split predicts (the busier
//! shard sets the pace; a random split is that uneven 28% of the time); balanced, 19–21 M in
//! every run. `bench market-spread` put its two feeds on the same shard about half the time.
//! So the shard that accepts a connection hands it to the shard of this source that has
//! the fewest open connections: least connections, counted per source, as Envoy's
//! `exact_balance` does for its listeners. Ties go to the first tied shard from the source's
//! *home* shard on, and each new source's home is the next shard round the ring: with ties
//! staying where they were accepted, a source of one connection landed anywhere, and Market
//! Spread's two feeds (one connection each) shared a shard in about half the runs, the other
//! shard then only doing its share of the state work. `bench market-spread` (2 shards), 6
//! rounds alternating: median 14.6 -> 15.1 M msgs/s (14.2-15.9 -> 14.7-17.4 M); perf put the
//! two feeds' decoding on one shard in some runs before, and evenly (280 and 284 samples)
//! after.
//!
//! Invariant: a socket in a shard's inbox is served by that shard, or by the shard that put
//! it there. A shard closes its inbox (under the inbox's lock) before it serves what is left
//! in it for the last time, and a hand-over that finds the inbox closed gives the socket back
//! to the caller to serve itself, so no accepted connection is dropped at a stop.
//!
//! Only plain frame sources are balanced: a connector-protocol client's stream state lives
//! on the shard that accepted it.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use crate::runtime::doorbell::Waiter;

/// One source's connection counts and hand-over inboxes, shared by all its shards.
pub(crate) struct Balancer {
    shards: Vec<Slot>,
    /// Where this source's ties start (see the module's doc).
    home: usize,
}

/// The home of the next source balanced in this process: sources opened one after another
/// (an application's, as the engine starts) get consecutive homes.
static NEXT_HOME: AtomicUsize = AtomicUsize::new(0);

struct Slot {
    /// Connections open on this shard, counting those handed to it and not yet served.
    open: AtomicUsize,
    inbox: Mutex<Inbox>,
}

#[derive(Default)]
struct Inbox {
    sockets: Vec<OwnedFd>,
    /// Set once the shard has stopped taking hand-overs.
    closed: bool,
    /// How to wake the shard's task that serves the inbox (set when it first waits; until
    /// then it has not looked, so it sees what is here when it does).
    waiter: Option<Arc<Waiter>>,
}

/// Where a newly accepted connection goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Serve it on the shard that accepted it.
    Here,
    /// Hand it to this shard.
    To(usize),
}

impl Balancer {
    /// A balancer for a source on `shards` shards.
    pub(crate) fn new(shards: usize) -> Arc<Balancer> {
        Self::with_home(shards, NEXT_HOME.fetch_add(1, Ordering::Relaxed))
    }

    /// A balancer whose ties start at shard `home` (modulo `shards`).
    fn with_home(shards: usize, home: usize) -> Arc<Balancer> {
        Arc::new(Balancer {
            home: home % shards.max(1),
            shards: (0..shards)
                .map(|_| Slot {
                    open: AtomicUsize::new(0),
                    inbox: Mutex::new(Inbox::default()),
                })
                .collect(),
        })
    }

    fn inbox(&self, shard: usize) -> MutexGuard<'_, Inbox> {
        self.shards[shard]
            .inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Decides where a connection that `here` accepted goes, and counts it there.
    pub(crate) fn place(&self, here: usize) -> Placement {
        let count = self.shards.len();
        let to = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.open.load(Ordering::Relaxed)))
            .min_by_key(|&(i, n)| (n, (i + count - self.home) % count))
            .map_or(here, |(i, _)| i);
        self.shards[to].open.fetch_add(1, Ordering::Relaxed);
        if to == here {
            Placement::Here
        } else {
            Placement::To(to)
        }
    }

    /// Counts a connection on `here` without choosing (the last accepts at a stop stay where
    /// they are).
    pub(crate) fn place_here(&self, here: usize) {
        self.shards[here].open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection placed on `to` is served on `from` after all.
    pub(crate) fn moved_back(&self, to: usize, from: usize) {
        self.shards[to].open.fetch_sub(1, Ordering::Relaxed);
        self.shards[from].open.fetch_add(1, Ordering::Relaxed);
    }

    /// Puts `socket` (placed on `to` by [`place`](Self::place)) in `to`'s inbox and wakes it.
    /// Gives the socket back if `to` no longer takes hand-overs: the caller serves it (and the
    /// count moves to the caller's shard `from`).
    pub(crate) fn hand_over(&self, from: usize, to: usize, socket: OwnedFd) -> Result<(), OwnedFd> {
        let waiter = {
            let mut inbox = self.inbox(to);
            if inbox.closed {
                drop(inbox);
                self.moved_back(to, from);
                return Err(socket);
            }
            inbox.sockets.push(socket);
            inbox.waiter.clone()
        };
        if let Some(w) = waiter {
            w.wake_if_parked();
        }
        Ok(())
    }

    /// A connection served on `shard` has ended.
    pub(crate) fn closed(&self, shard: usize) {
        self.shards[shard].open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Waits until a connection is handed to `shard`, and takes every one waiting. `waiter`
    /// (on `shard`'s doorbell) is how a hand-over wakes the task; the inbox keeps it.
    pub(crate) async fn handed(&self, shard: usize, waiter: &Arc<Waiter>) -> Vec<OwnedFd> {
        std::future::poll_fn(|cx| {
            let mut inbox = self.inbox(shard);
            if !inbox.sockets.is_empty() {
                return Poll::Ready(std::mem::take(&mut inbox.sockets));
            }
            // Parked under the inbox's lock: a hand-over pushes under it too, so it either
            // came before (and the check above saw it) or it sees the flag and rings.
            inbox.waiter.get_or_insert_with(|| waiter.clone()).park(cx);
            Poll::Pending
        })
        .await
    }

    /// Stops `shard` taking hand-overs and returns what is left in its inbox, to serve.
    pub(crate) fn close(&self, shard: usize) -> Vec<OwnedFd> {
        let mut inbox = self.inbox(shard);
        inbox.closed = true;
        std::mem::take(&mut inbox.sockets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn socket() -> OwnedFd {
        OwnedFd::from(UnixStream::pair().unwrap().0)
    }

    /// Connections accepted all on one shard end up spread evenly, ties going round from the
    /// source's home, and closing some sends the next ones to where they closed.
    #[test]
    fn least_connections_with_ties_from_home() {
        use Placement::*;
        let b = Balancer::with_home(3, 0);
        let placed: Vec<Placement> = (0..6).map(|_| b.place(0)).collect();
        assert_eq!(placed, [Here, To(1), To(2), Here, To(1), To(2)]);
        b.closed(2);
        b.closed(2);
        assert_eq!(b.place(1), To(2));
        assert_eq!(b.place(0), To(2));
        assert_eq!(b.place(2), To(0));
        // Home 2 (of 5): the first connection goes there, wherever it was accepted, and the
        // next ones round the ring from it.
        let b = Balancer::with_home(5, 2);
        assert_eq!(b.place(1), To(2));
        assert_eq!(b.place(3), Here);
        assert_eq!(b.place(0), To(4));
        assert_eq!(b.place(0), Here);
        assert_eq!(b.place(0), To(1));
        // One shard alone keeps everything.
        let one = Balancer::new(1);
        assert_eq!((one.place(0), one.place(0)), (Here, Here));
    }

    /// Sources opened one after another start at different shards, so two sources of one
    /// connection each land on different shards, whichever shard accepted them.
    #[test]
    fn consecutive_sources_have_different_homes() {
        // (Other tests open balancers on other threads meanwhile, but not a thousand.)
        let (a, b) = (Balancer::new(1000), Balancer::new(1000));
        assert_ne!(a.home, b.home);
        for accepted_on in [0, 1] {
            let (orders, nbbo) = (Balancer::with_home(2, 0), Balancer::with_home(2, 1));
            let first = |x: &Balancer| match x.place(accepted_on) {
                Placement::Here => accepted_on,
                Placement::To(s) => s,
            };
            assert_eq!((first(&orders), first(&nbbo)), (0, 1));
        }
    }

    /// A hand-over to a closed inbox gives the socket back and moves the count to the caller;
    /// what was in the inbox when it closed is returned by `close`.
    #[test]
    fn a_closed_inbox_gives_the_socket_back() {
        let b = Balancer::with_home(2, 0);
        assert_eq!(b.place(0), Placement::Here);
        assert_eq!(b.place(0), Placement::To(1));
        assert!(b.hand_over(0, 1, socket()).is_ok());
        assert_eq!(b.close(1).len(), 1);
        // Counts [1, 1]: a tie goes home (shard 0); then shard 1 has fewer, but its inbox is
        // closed.
        assert_eq!(b.place(0), Placement::Here);
        assert_eq!(b.place(0), Placement::To(1));
        assert!(b.hand_over(0, 1, socket()).is_err());
        let open = |s: usize| b.shards[s].open.load(Ordering::Relaxed);
        assert_eq!((open(0), open(1)), (3, 1));
    }
}
