//! Embedding bettong: in-process sources and sinks, so a host program feeds the engine and
//! reads its outputs without sockets.
//!
//! - [`InProcessSource`]: the host gets a [`Pusher`] per thread. A push goes straight to the
//!   shard that owns the message's key, over an SPSC ring: no lock, no allocation. A full ring
//!   makes [`Pusher::push`] wait ([`Pusher::try_push`] hands the message back); nothing is
//!   dropped.
//! - [`CallbackSink`]: a function run on the shard that produced the output, right when it is
//!   produced. Choose it for the lowest latency, when the function is quick and thread-safe
//!   (publish to your own lock-free structure, update an atomic, signal a thread).
//! - [`PolledSink`]: outputs wait in a ring per shard until the host drains them from its own
//!   thread with [`Outputs::poll`]. Choose it when the host wants outputs on one thread of its
//!   own, in batches, or does slow work with them; a host that falls behind applies
//!   backpressure up to the sources.
//!
//! ```
//! use bettong::runtime::config::EngineConfig;
//! use bettong::{Application, Engine, InProcessSource, Pipeline, PolledSink};
//!
//! #[derive(Default, serde::Serialize, serde::Deserialize)]
//! struct Sum(u64);
//!
//! let numbers = InProcessSource::new(|n: &u64| n);
//! let (sink, mut outputs) = PolledSink::new(1024);
//! let app = Application::new(
//!     "sums",
//!     Pipeline::source("Numbers", numbers.clone())
//!         .key_by(|n: &u64| n)
//!         .to_state(|n: u64, sum: &mut Sum| {
//!             sum.0 += n;
//!             Some(sum.0)
//!         })
//!         .to_sink("Sums", sink),
//! );
//! let config = EngineConfig { cores: vec![0], pin: false, ..EngineConfig::default() };
//! let engine = Engine::start(app, config).unwrap();
//! let mut pusher = numbers.pusher().unwrap();
//! for n in [5, 5, 7] {
//!     pusher.push(n);
//! }
//! drop(pusher);
//! let summary = engine.stop().unwrap();
//! let mut got = Vec::new();
//! outputs.poll(|sum| got.push(sum));
//! got.sort();
//! assert_eq!(got, vec![5, 7, 10]);
//! assert_eq!(summary.messages_out, 3);
//! ```

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::connect::{Opened, Sink, SinkContext, SinkInput, SinkShard, Source, SourceContext};
use crate::error::Error;
use crate::event::Stamp;
use crate::metrics::now_ns;
use crate::runtime::config::Poll as PollMode;
use crate::runtime::doorbell::{Doorbell, Waiter};
use crate::runtime::membarrier;
use crate::runtime::ring::{self, Consumer, Producer};
use crate::runtime::route_cache::RouteCache;
use crate::runtime::router::Key;
use crate::runtime::shard::{yield_after_batch, Latch, ShardCore, Spill};
use crate::state::shard_for;

/// Messages a pusher's ring to each shard holds.
const PUSH_RING: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An in-process source of messages of type `T`. Clone it: one clone goes into the pipeline,
/// the host keeps another to make [`Pusher`]s once the engine runs.
pub struct InProcessSource<T> {
    hub: Arc<Hub<T>>,
}

impl<T> Clone for InProcessSource<T> {
    fn clone(&self) -> Self {
        InProcessSource {
            hub: self.hub.clone(),
        }
    }
}

/// A message's shard, of `shards`, looked up in the pusher's own cache for small keys.
type Route<T> = Arc<dyn Fn(&T, usize, &RouteCache) -> usize + Send + Sync>;

/// What the host side and the shards of one in-process source share.
struct Hub<T> {
    route: Route<T>,
    shards: Mutex<Vec<Option<ShardSide<T>>>>,
}

/// A pusher's ring into one shard, with the pusher's close handshake.
type PushRing<T> = (Consumer<T>, Arc<PushState>);

/// One shard's end of an in-process source.
struct ShardSide<T> {
    bell: Arc<Doorbell>,
    /// Raised when a new pusher's ring is waiting in `incoming`.
    waiter: Arc<Waiter>,
    incoming: Vec<PushRing<T>>,
}

/// A pusher's close handshake with the shards: a shard closes a pusher by raising `closed` and
/// then waiting until `pushing` is down, and a push raises `pushing` and then looks at
/// `closed`. Either the push sees `closed` (and hands the message back as stopped), or the
/// shard sees it pushing and drains its message before it finishes. The barrier between each
/// side's store and load is asymmetric (see `runtime::membarrier`): light on the pusher, per
/// push; heavy on the shard, once per stop. With full barriers (a SeqCst store of `pushing`
/// here, a fence in the ring's wake-up check) most of `Pusher::push`'s samples sat next to
/// them (`perf record`, `bettong-peer run bettong`).
#[derive(Default)]
struct PushState {
    closed: AtomicBool,
    pushing: AtomicBool,
    light: membarrier::Light,
}

impl PushState {
    /// Starts a push: false (and nothing raised) when the pusher is closed.
    #[inline]
    fn enter(&self) -> bool {
        self.pushing.store(true, Ordering::Relaxed);
        self.light.fence();
        if self.closed.load(Ordering::Relaxed) {
            self.leave();
            return false;
        }
        true
    }

    /// Ends a push: what it wrote into the ring was published before this.
    #[inline]
    fn leave(&self) {
        self.pushing.store(false, Ordering::Release);
    }

    /// The shard's side: closes the pusher. Then [`is_pushing`](Self::is_pushing) tells
    /// whether a push that did not see the close is still writing.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        membarrier::heavy();
    }

    fn is_pushing(&self) -> bool {
        self.pushing.load(Ordering::Acquire)
    }
}

impl<T: Send + 'static> InProcessSource<T> {
    /// A source whose messages are routed by `key`: give it the key of the first `key_by`
    /// downstream, and each message lands directly on the shard that owns its state.
    ///
    /// ```
    /// let orders = bettong::InProcessSource::new(|o: &(String, u32)| o.0.as_str());
    /// # let _ = orders;
    /// ```
    pub fn new<K, F>(key: F) -> Self
    where
        K: Key + ?Sized + 'static,
        F: Fn(&T) -> &K + Send + Sync + 'static,
    {
        InProcessSource {
            hub: Arc::new(Hub {
                // Called on more than one shard only (`Pusher::shard_of`). The key_by
                // exchange's way (a `RouteCache` hit is a multiply and a load, where the stable
                // hash is about 35 cycles of dependent multiplies). perf/peer `bettong`, Market
                // Spread on 2 shards under callgrind: the route 40.0 -> 22.4 instructions per
                // push, the whole path 364.3 -> 353.1 per message (the push itself +7: one
                // more argument and register).
                route: Arc::new(move |msg, shards, cache| {
                    let k = key(msg);
                    match k.small_bits() {
                        Some(bits) => cache.shard(bits, || shard_for(k.stable_hash(), shards)),
                        None => shard_for(k.stable_hash(), shards),
                    }
                }),
                shards: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A new pusher for one host thread. Fails until the engine has started.
    pub fn pusher(&self) -> Result<Pusher<T>, String> {
        let mut shards = lock(&self.hub.shards);
        if shards.is_empty() || shards.iter().any(Option::is_none) {
            return Err("the engine running this source has not started".to_string());
        }
        let state = Arc::new(PushState::default());
        let mut rings = Vec::with_capacity(shards.len());
        for side in shards.iter_mut().flatten() {
            let (tx, rx) = ring::channel_between(PUSH_RING, None, Some(&side.bell));
            side.incoming.push((rx, state.clone()));
            side.waiter.wake_if_parked();
            rings.push(tx);
        }
        let cache = RouteCache::new(rings.len())
            .ok_or_else(|| format!("{} shards: more than a route can name", rings.len()))?;
        Ok(Pusher {
            rings,
            route: self.hub.route.clone(),
            cache,
            state,
        })
    }
}

impl<T: Send + 'static> Source for InProcessSource<T> {
    type Out = T;
    type Part = ();

    fn open(
        &self,
        _name: &str,
        _address: Option<&str>,
        shards: usize,
    ) -> Result<Opened<()>, Error> {
        let mut sides = lock(&self.hub.shards);
        sides.clear();
        sides.resize_with(shards, || None);
        Ok(Opened::per_shard(shards, |_| ()))
    }

    fn run(
        &self,
        _part: (),
        ctx: SourceContext<T>,
    ) -> impl std::future::Future<Output = ()> + 'static {
        let bell = ctx.core().bell.clone();
        let waiter = Waiter::new(Some(&bell));
        let index = ctx.shard();
        if let Some(side) = lock(&self.hub.shards).get_mut(index) {
            *side = Some(ShardSide {
                bell,
                waiter: waiter.clone(),
                incoming: Vec::new(),
            });
        }
        serve(self.hub.clone(), index, waiter, ctx)
    }
}

/// A host thread's handle on an in-process source. `Send`, not `Clone`: each host thread makes
/// its own with [`InProcessSource::pusher`], so every ring keeps a single producer.
pub struct Pusher<T> {
    rings: Vec<Producer<T>>,
    route: Route<T>,
    cache: RouteCache,
    state: Arc<PushState>,
}

/// Why a push did not take the message; the message comes back with it.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<T> {
    /// The owning shard's ring is full (only from [`Pusher::try_push`]).
    Full(T),
    /// The engine is stopping or stopped.
    Stopped(T),
}

impl<T: Send + 'static> Pusher<T> {
    /// The shard that owns `msg`'s key. One shard owns every key: no hash (37 of the 603
    /// instructions per message of Market Spread on 1 shard once, perf/callgrind.sh), and no
    /// call either (through the route, with its cache as an argument, the 1-shard push took
    /// 7 more instructions per message and `push_batch` 11).
    #[inline(always)]
    fn shard_of(&self, msg: &T) -> usize {
        match self.rings.len() {
            1 => 0,
            shards => (self.route)(msg, shards, &self.cache),
        }
    }

    /// Pushes `msg` to the shard that owns its key, waiting while that shard's ring is full.
    /// Returns the message if the engine has stopped.
    // Always inlined: out of line it returned its `Result` (the message rides in the error)
    // through memory, written with two 8-byte stores that the caller's 16-byte load of the
    // result straddled. A failed forward waits for every older store to reach the cache,
    // and those include the ring tail's, which waits for the line the shard is polling: perf
    // put 95% of the host thread's own samples on that load.
    #[inline(always)]
    pub fn push(&mut self, msg: T) -> Result<(), PushError<T>> {
        // The body of `try_push`, with the route taken once and the message moved as little
        // as possible: `push` through `try_push` moved it through two `Result`s per call
        // (93 instructions per message in `push` itself, perf/callgrind.sh).
        let shard = self.shard_of(&msg);
        let mut msg = msg;
        loop {
            // The close handshake: see `PushState`.
            if !self.state.enter() {
                return Err(PushError::Stopped(msg));
            }
            let ring = &mut self.rings[shard];
            match ring.push(msg) {
                Ok(()) => {
                    ring.publish();
                    self.state.leave();
                    return Ok(());
                }
                Err(back) => {
                    self.state.leave();
                    msg = back;
                    wait_for_space(ring);
                }
            }
        }
    }

    /// Pushes a batch of messages, each to the shard that owns its key, waiting while a ring is
    /// full: the close handshake and each ring's publish happen once per batch instead of once
    /// per message.
    /// Returns the messages not pushed because the engine stopped.
    ///
    /// ```
    /// # use bettong::{Application, CallbackSink, Engine, EngineConfig, InProcessSource, Pipeline};
    /// let numbers = InProcessSource::new(|n: &u64| n);
    /// let app = Application::new("sink", Pipeline::source("N", numbers.clone())
    ///     .to_sink("Out", CallbackSink::new(|_: &u64| {})));
    /// let engine = Engine::start(app, EngineConfig { cores: vec![0], pin: false, ..EngineConfig::default() }).unwrap();
    /// let mut pusher = numbers.pusher().unwrap();
    /// assert!(pusher.push_batch(0..1000u64).is_ok());
    /// drop(pusher);
    /// assert_eq!(engine.stop().unwrap().messages_in, 1000);
    /// ```
    pub fn push_batch(
        &mut self,
        msgs: impl IntoIterator<Item = T>,
    ) -> Result<(), PushError<Vec<T>>> {
        let mut msgs = msgs.into_iter();
        let mut dirty = vec![false; self.rings.len()];
        // A message that found its ring full, pushed first when the batch goes on.
        let mut carry: Option<T> = None;
        'batch: loop {
            // The close handshake (`PushState`), once for this stretch of the batch.
            if !self.state.enter() {
                return Err(PushError::Stopped(carry.into_iter().chain(msgs).collect()));
            }
            while let Some(msg) = carry.take().or_else(|| msgs.next()) {
                let shard = self.shard_of(&msg);
                match self.rings[shard].push(msg) {
                    Ok(()) => dirty[shard] = true,
                    Err(msg) => {
                        // Full: publish what is pending, step out of the handshake while
                        // waiting (the shard may be stopping), then go on with this message.
                        self.publish(&mut dirty);
                        self.state.leave();
                        wait_for_space(&mut self.rings[shard]);
                        carry = Some(msg);
                        continue 'batch;
                    }
                }
            }
            self.publish(&mut dirty);
            self.state.leave();
            return Ok(());
        }
    }

    fn publish(&mut self, dirty: &mut [bool]) {
        for (ring, d) in self.rings.iter_mut().zip(dirty.iter_mut()) {
            if std::mem::take(d) {
                ring.publish();
            }
        }
    }

    /// Pushes `msg` if the owning shard's ring has room, or hands it back.
    // Always inlined, as `push` is (see there): its result must not go through memory.
    #[inline(always)]
    pub fn try_push(&mut self, msg: T) -> Result<(), PushError<T>> {
        if !self.state.enter() {
            return Err(PushError::Stopped(msg));
        }
        let shard = self.shard_of(&msg);
        let ring = &mut self.rings[shard];
        let result = match ring.push(msg) {
            Ok(()) => {
                ring.publish();
                Ok(())
            }
            Err(msg) => Err(PushError::Full(msg)),
        };
        self.state.leave();
        result
    }
}

impl<T> Drop for Pusher<T> {
    fn drop(&mut self) {
        // Dropping the producers closes the rings; the shards finish what was pushed.
        self.state.closed.store(true, Ordering::Release);
    }
}

/// Waits on a host thread for room in a ring: spins briefly, then blocks until the shard wakes
/// us. The spin only looks (a park costs a heavy barrier, an interrupt on every core running
/// the engine), and what was pushed is already published: a full ring publishes before it
/// refuses a message.
///
/// Why 5 µs and not longer: a full ring frees its slots when the shard's pass over it ends, up
/// to `PUSH_RING` messages later (about 100 µs of Market Spread), so a longer spin rarely ends
/// with room, and it keeps a core busy that the shard may need: with 50 µs, perf/peer `bettong`
/// (a pusher per shard) ran 21.6 M msgs/s on 2 shards and 32.8 M on 1, against 27.9 M and 38.9 M
/// with 5 µs (10 alternating rounds, medians; CPU per message 90.2 -> 70.6 and 50.6 -> 45.9
/// ns). Blocking at once measured the same as 5 µs (28.2 M and 39.1 M); the short spin stays
/// for a pass that is about to end, which then costs the shard no wake-up.
fn wait_for_space<T: Send>(ring: &mut Producer<T>) {
    let spin_until = Instant::now() + std::time::Duration::from_micros(5);
    while Instant::now() < spin_until {
        for _ in 0..64 {
            if ring.has_space() {
                return;
            }
            std::hint::spin_loop();
        }
    }
    futures_lite::future::block_on(std::future::poll_fn(|cx| ring.poll_space(cx)));
}

/// The shard side of an in-process source: drains every pusher's ring into the graph.
async fn serve<T: Send + 'static>(
    hub: Arc<Hub<T>>,
    index: usize,
    waiter: Arc<Waiter>,
    ctx: SourceContext<T>,
) {
    let mut rings: Vec<PushRing<T>> = Vec::new();
    let core = ctx.core().clone();
    let stop = &core.stop;
    // How long after its last message the task looks at its rings itself before it parks on
    // the doorbell: `--poll spin` forever, `spin:MICROS` that long, `park` not at all.
    let spin_window = match core.config.poll {
        PollMode::Park => None,
        PollMode::Spin => Some(Duration::MAX),
        PollMode::SpinFor(d) => Some(d),
    };
    let mut last_data = Instant::now();
    loop {
        if let Some(side) = lock(&hub.shards)[index].as_mut() {
            rings.append(&mut side.incoming);
        }
        let n = take(rings.iter_mut().map(|(ring, _)| ring), &ctx);
        if n > 0 {
            ctx.flush();
            ctx.backpressure().await;
            yield_after_batch().await;
            if spin_window.is_some() {
                last_data = Instant::now();
            }
            // Looked at while data flows too: hosts that push without a pause kept every pass
            // busy, and a stop never ended (the stop below closes the pushers and takes
            // what they had pushed).
            if stop.is_set() {
                break;
            }
            continue;
        }
        rings.retain(|(ring, _)| !ring.is_finished());
        if stop.is_set() {
            break;
        }
        if let Some(window) = spin_window {
            if last_data.elapsed() < window {
                // A spinning shard that parks here is woken through the doorbell: a write on
                // the host, an io_uring completion on the shard, ~20 µs p50 from push to
                // callback on this 2-core VM even with `--poll spin` (the executor spins, the
                // task waits for the kernel). Looking at the rings' tails from the task sees a
                // push within a few hundred ns. Between slices the task yields, so the shard's
                // other tasks run (its timers and socket completions wait until the run queue
                // runs dry, or for glommio's preemption timer).
                if !spin_for_input(&rings, stop) {
                    // This task keeps the run queue busy and flushes nothing while it spins:
                    // the shard's exchange drains and rung waiters get their turn here.
                    core.wake_pollers();
                    glommio::executor().yield_now().await;
                }
                continue;
            }
        }
        std::future::poll_fn(|cx| {
            stop.register(cx.waker());
            if stop.is_set() {
                return Poll::Ready(());
            }
            // Parked on the rings and on `waiter` (a new pusher) behind one heavy barrier:
            // `poll_any_ready`'s, which comes after `raise`, before the look at `incoming`.
            waiter.raise(cx);
            let ready = ring::poll_any_ready(&mut rings, cx, |(ring, _)| Some(ring)).is_ready()
                || lock(&hub.shards)[index]
                    .as_ref()
                    .is_some_and(|s| !s.incoming.is_empty());
            if ready {
                waiter.unpark();
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
    // Stopping: close every pusher, then drain until none is in the middle of a push, so a
    // message is either in a ring we drain here or handed back to the host as Stopped.
    if let Some(side) = lock(&hub.shards)[index].as_mut() {
        rings.append(&mut side.incoming);
    }
    for (_, state) in &rings {
        state.close();
    }
    for (ring, state) in rings.iter_mut() {
        loop {
            let busy = state.is_pushing();
            take([&mut *ring], &ctx);
            if !busy {
                break;
            }
            std::hint::spin_loop();
        }
    }
    ctx.flush();
}

/// Takes everything `rings` hold into the graph; returns how many messages that was.
///
/// The messages of one call share one ingest stamp, read when the first ring with input is
/// found: a message's start-to-end latency starts when its shard takes it from the pusher's
/// ring, as a TCP source's starts when the shard reads the frame from the socket (time in the
/// ring, like time in a socket buffer, is not in it; a host measures push to output itself,
/// as `examples/embedded_spread_check.rs` does). Why not at the push: the clock read (`rdtsc`,
/// 18-20 ns on this machine's vCPUs) was most of a push's cost, a stamp per message made each
/// message a latency run of its own (two histogram records per message at the settle), and
/// the stamp took 8 bytes of every 64-byte Market Spread slot. perf/peer `bettong` (a pusher
/// per shard; `perf/callgrind.sh` counts the push and this), Market Spread: 349.3 -> 263.2
/// instructions per message (`push_batch`: 242.2 -> 224.4); 6 alternating rounds, median
/// 22.5 -> 29.6 M msgs/s on 1 shard, 15.6 -> 27.5 M on 2 (timely 27.6 / 32.9 M alongside).
///
/// Never inlined: one call per pass, and `perf/callgrind.sh` counts the shard's side of the
/// pusher path in it.
#[inline(never)]
fn take<'a, T: Send + 'static>(
    rings: impl IntoIterator<Item = &'a mut Consumer<T>>,
    ctx: &SourceContext<T>,
) -> usize {
    let mut stamp = None;
    let mut n = 0;
    for ring in rings {
        if ring.is_empty() {
            continue;
        }
        let at = *stamp.get_or_insert_with(|| Stamp::at(now_ns()));
        n += ring.drain_runs_before(usize::MAX, |run| ctx.emit_run(run, at));
    }
    if n > 0 {
        ctx.count_in_n(n as u64);
    }
    n
}

/// Looks at the rings' tails for one slice of time (or until the stop); true once a ring has
/// input. Never inlined: `perf/callgrind.sh` leaves it out of the count (how long it spins is
/// how long the host takes, not work per message).
#[inline(never)]
fn spin_for_input<T: Send>(rings: &[PushRing<T>], stop: &Latch) -> bool {
    /// Long enough that a slice usually ends with input, short enough that the shard's other
    /// tasks (timers, sinks, other sources) wait at most this long.
    const SLICE: Duration = Duration::from_micros(20);
    let until = Instant::now() + SLICE;
    loop {
        for _ in 0..64 {
            if rings.iter().any(|(ring, _)| !ring.is_empty()) {
                return true;
            }
            std::hint::spin_loop();
        }
        if stop.is_set() || Instant::now() >= until {
            return false;
        }
    }
}

/// An in-process sink that calls a function on the shard that produced each output.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// let seen = Arc::new(AtomicU64::new(0));
/// let s = seen.clone();
/// let sink = bettong::CallbackSink::new(move |_: &u64| {
///     s.fetch_add(1, Ordering::Relaxed);
/// });
/// # let _ = sink;
/// ```
pub struct CallbackSink<F> {
    f: Arc<F>,
}

impl<F> CallbackSink<F> {
    /// A sink that runs `f` on every output, on the shard that produced it.
    pub fn new(f: F) -> Self {
        CallbackSink { f: Arc::new(f) }
    }
}

impl<T: Send + 'static, F: Fn(&T) + Send + Sync + 'static> Sink<T> for CallbackSink<F> {
    type Part = ();

    fn open(
        &self,
        _name: &str,
        _address: Option<&str>,
        shards: usize,
    ) -> Result<Opened<()>, Error> {
        Ok(Opened::per_shard(shards, |_| ()))
    }

    fn start(&self, _part: (), _ctx: SinkContext) -> SinkShard<T> {
        SinkShard::new(Callback(self.f.clone()))
    }
}

struct Callback<F>(Arc<F>);

impl<T, F: Fn(&T)> SinkInput<T> for Callback<F> {
    #[inline]
    fn write(&self, msg: T, _stamp: Stamp) {
        (self.0)(&msg)
    }
}

/// An in-process sink whose outputs the host drains from its own thread through [`Outputs`].
pub struct PolledSink<T> {
    capacity: usize,
    rings: Arc<Mutex<Vec<Consumer<T>>>>,
    leftovers: Arc<Mutex<VecDeque<T>>>,
}

/// The host's end of a [`PolledSink`]: one ring per shard, drained by [`poll`](Self::poll).
pub struct Outputs<T> {
    rings: Vec<Consumer<T>>,
    incoming: Arc<Mutex<Vec<Consumer<T>>>>,
    /// Outputs that did not fit a full ring when the engine stopped (a stop never waits for
    /// the host to poll).
    leftovers: Arc<Mutex<VecDeque<T>>>,
}

impl<T: Send + 'static> PolledSink<T> {
    /// A sink whose per-shard rings hold `capacity` outputs, and the host's handle on them.
    ///
    /// ```
    /// let (sink, outputs) = bettong::PolledSink::<u64>::new(1024);
    /// # let _ = (sink, outputs);
    /// ```
    pub fn new(capacity: usize) -> (PolledSink<T>, Outputs<T>) {
        let rings = Arc::new(Mutex::new(Vec::new()));
        let leftovers = Arc::new(Mutex::new(VecDeque::new()));
        (
            PolledSink {
                capacity,
                rings: rings.clone(),
                leftovers: leftovers.clone(),
            },
            Outputs {
                rings: Vec::new(),
                incoming: rings,
                leftovers,
            },
        )
    }
}

impl<T: Send + 'static> Outputs<T> {
    /// Hands every output waiting in the rings to `f` (per shard in order) and returns how
    /// many there were. Never blocks.
    pub fn poll(&mut self, mut f: impl FnMut(T)) -> usize {
        {
            let mut incoming = lock(&self.incoming);
            if !incoming.is_empty() {
                self.rings.append(&mut incoming);
            }
        }
        let mut n: usize = self.rings.iter_mut().map(|r| r.drain(&mut f)).sum();
        if !self.rings.is_empty() && self.rings.iter().all(Consumer::is_finished) {
            // A ring is closed only after its shard has put its leftovers here.
            let mut left = lock(&self.leftovers);
            n += left.len();
            left.drain(..).for_each(&mut f);
        }
        n
    }

    /// True once the engine has stopped and every output has been polled.
    pub fn is_finished(&self) -> bool {
        !self.rings.is_empty()
            && lock(&self.incoming).is_empty()
            && self.rings.iter().all(Consumer::is_finished)
            && lock(&self.leftovers).is_empty()
    }
}

impl<T: Send + 'static> Sink<T> for PolledSink<T> {
    type Part = ();

    fn open(
        &self,
        _name: &str,
        _address: Option<&str>,
        shards: usize,
    ) -> Result<Opened<()>, Error> {
        Ok(Opened::per_shard(shards, |_| ()))
    }

    fn start(&self, _part: (), ctx: SinkContext) -> SinkShard<T> {
        let (tx, rx) = ring::channel_between::<T>(self.capacity, Some(&ctx.core().bell), None);
        lock(&self.rings).push(rx);
        let out = Rc::new(OutRing {
            spill: Spill::new(tx),
            stopping: std::cell::Cell::new(false),
            leftovers: self.leftovers.clone(),
        });
        ctx.add_gauge(out.spill.gauge.clone());
        let core = ctx.core().clone();
        let finish = ctx.finish.clone();
        SinkShard::new(PolledInput(out.clone())).with_task(out.mover(core, finish))
    }
}

struct PolledInput<T: Send + 'static>(Rc<OutRing<T>>);

impl<T: Send + 'static> SinkInput<T> for PolledInput<T> {
    #[inline]
    fn write(&self, msg: T, _stamp: Stamp) {
        self.0.send(msg)
    }
}

/// A shard's side of a polled sink: the ring to the host, and overflow while it is full.
struct OutRing<T: Send> {
    spill: Spill<Producer<T>>,
    /// Once the shard stops, a full ring no longer holds the sources back: stopping must not
    /// depend on the host polling.
    stopping: std::cell::Cell<bool>,
    leftovers: Arc<Mutex<VecDeque<T>>>,
}

impl<T: Send + 'static> OutRing<T> {
    /// Outputs are published one by one: the host may be waiting for exactly this one.
    fn send(&self, msg: T) {
        self.spill.send(msg, true, !self.stopping.get());
    }

    /// Moves spilled outputs into the ring as the host drains it. Once the shard stops, it
    /// lifts backpressure; once `finish` says everything upstream is done, it hands what does
    /// not fit the ring to the host's leftovers and closes the ring.
    async fn mover(self: Rc<Self>, core: Rc<ShardCore>, finish: Rc<Latch>) {
        let stop_seen = std::cell::Cell::new(false);
        let notice_stop = || async {
            core.stop.wait().await;
            stop_seen.set(true);
            self.stopping.set(true);
        };
        loop {
            let finished = std::cell::Cell::new(false);
            let spilled = self.spill.spilled();
            let stopping = async {
                if stop_seen.get() {
                    std::future::pending::<()>().await;
                }
                notice_stop().await;
            };
            let finishing = async {
                finish.wait().await;
                finished.set(true);
            };
            futures_lite::future::or(spilled, futures_lite::future::or(stopping, finishing)).await;
            if finished.get() {
                self.spill.move_overflow();
                lock(&self.leftovers).extend(self.spill.take_overflow());
                self.spill.close();
                return;
            }
            while !self.spill.move_overflow() && !stop_seen.get() {
                futures_lite::future::or(self.spill.space(), notice_stop()).await;
            }
            self.spill.relieve(&core.relief);
        }
    }
}
