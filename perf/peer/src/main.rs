//! The peer comparison of `perf/peer.sh`: Market Spread (decode, key by symbol, per-symbol state,
//! check) run by a hand-written loop, by timely dataflow and by bettong, in-process and over TCP,
//! on the same generated data with the same output count checked.
//!
//! ```text
//! bettong-peer gen DIR MESSAGES [REJECTED_ORDERS]        # the data (bettong_giles::gen)
//! bettong-peer run VARIANT --data DIR [--workers W] [--messages N] [--rate R] [--json FILE]
//! bettong-peer noise SECONDS [THREADS]                   # the machine's stall floor
//! ```
//!
//! Variants (one process per run; `--workers` is timely's workers or bettong's shards):
//!
//! * `loop`: the ceiling. One thread: decode each frame, `HashMap<symbol, SymbolData>` with
//!   bettong's hasher (Fx), [`check_now`]. No engine.
//! * `loop-local` (W workers): the loop on W threads pinned to their own cores, each over the
//!   messages whose symbol it owns (bettong's routing), started together: the ceiling for W
//!   workers, and how far this machine scales the work with nothing shared between threads.
//! * `timely`: `timely::execute(Config::process(W))`; each worker decodes its share of the
//!   stream and feeds its own input handle, advancing the epoch every 1024 records (and stepping,
//!   with at most 64 epochs in flight); an `Exchange` by symbol into a `unary` operator holding
//!   the map; outputs counted in an `inspect`.
//! * `bettong-iter`: the engine with an [`IterSource`]: each of W shards decodes its share of the
//!   stream on its own thread (as timely's workers do) and the `key_by` exchange takes each
//!   message to the shard owning its symbol; a [`CallbackSink`] counts outputs. No host thread.
//! * `bettong`: the engine with an [`InProcessSource`] keyed by symbol and a [`CallbackSink`]
//!   counting outputs; W shards and W host pusher threads, each decoding its share
//!   and pushing every message to the shard that owns its symbol.
//! * `timely-local`, `bettong-iter-local` (2 or more workers): the same two runs, but each
//!   worker's or shard's share is the messages whose symbol it owns (by its own engine's
//!   routing), in stream order, so no message crosses to another core. They bound what the
//!   crossing costs: W workers' CPU per message without the exchange's traffic.
//! * `bettong-iter-engines` (2 or more workers): W engines of one shard each, each pinned to
//!   its own core and fed the messages it owns as in `bettong-iter-local`: no exchange at all.
//!   It separates what W shards cost from what the `key_by` exchange between them costs (in
//!   6 alternating rounds, 2 engines ran 1.49× one shard's msgs/s, the loop on two threads
//!   1.57× the loop's, one engine of 2 shards fed its own keys 1.17×).
//! * `bettong-beside-loop` (2 workers): a 1-shard engine over the keys of shard 0 on one core
//!   beside the hand-written loop over the keys of shard 1 on the other: whether a shard slows
//!   beside any busy neighbour or only beside another shard. Not in `peer.sh`.
//! * `bettong-iter-runs` (2 or more workers): `bettong-iter` with each share reordered within
//!   windows of [`RUN_WINDOW`] messages, stably by owning shard (a key's messages keep their
//!   order, so the outputs are the same): as many messages cross as in `bettong-iter`, but the
//!   exchange's "is this key mine?" branch sees runs instead of a coin toss. It bounds what a
//!   batch path that partitions by destination could gain, on this CPU's real predictor.
//! * `timely-tcp`: bettong-giles' sender blasts the framed files at two std listeners (Orders,
//!   Nbbo); one reader thread per connection cuts frames and hands chunks to a timely worker
//!   (Orders to worker 0, Nbbo to the last one), which decodes and feeds its input as above; each
//!   worker encodes its OrderResults into its own connection to bettong-giles' receiver,
//!   flushed whenever it runs out of input.
//! * `bettong-tcp`: what `bettong bench market-spread` does (the same application, sender,
//!   receiver, priming and checks), inlined so that the CPU time covers the same span as
//!   `timely-tcp`'s.
//!
//! With `--rate R` (in-process `timely` and `bettong`, one worker/shard) the run is open-loop: the
//! i-th message is due at `start + i/R`, sent when due (late ones at once), and the latency of each
//! OrderResult is measured from its message's *due* time to its output, so queueing shows.
//! `timely-busy` is the timely run with a thread spinning on another core (see
//! [`with_busy_core`]), the control for bettong's runs, which keep both cores busy.
//!
//! Every run reports msgs/s (timed messages / wall time from the first timed message until every
//! message is processed and every output counted) and CPU ns per message (this process's
//! `getrusage` user + system time over the same span, all threads, divided by the timed messages).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bettong::codec::Frames;
use bettong::metrics::now_ns;
use bettong::runtime::config::{online_cores, EngineConfig, Poll, DEFAULT_POLL};
use bettong::{Application, CallbackSink, Engine, InProcessSource, IterSource, Key, Pipeline};
use bettong_apps::market_spread::{
    check_now, decode, is_rejected_spread, spread_check, symbol_key, MarketMessage, MarketView,
    Nbbo, Order, OrderResult, SymbolData, TRANSACT_TIME_LEN,
};
use bettong_giles::gen::{self, GenMarketSpreadArgs};
use bettong_giles::receiver::{ReceiveArgs, Receiver};
use bettong_giles::sender::{self, SendArgs};
use rustc_hash::FxBuildHasher;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type SymbolMap = HashMap<[u8; 4], SymbolData, FxBuildHasher>;

/// Records per epoch fed to timely.
const EPOCH: usize = 1024;
/// Epochs a timely input may run ahead of its probe before the worker steps until it catches up
/// (bettong's pusher rings hold 4096 messages; this bounds timely's queues comparably).
const MAX_EPOCHS_IN_FLIGHT: u64 = 64;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("gen") => gen_cmd(&args[1..]),
        Some("run") => run_cmd(&args[1..]),
        Some("noise") => noise_cmd(&args[1..]),
        _ => Err("usage: bettong-peer gen DIR MESSAGES [REJECTED_ORDERS] | \
                  bettong-peer run VARIANT --data DIR [--workers W] [--messages N] [--rate R] [--json FILE] \
                  [--window BYTES] [--busy-shards K] | \
                  bettong-peer noise SECONDS [THREADS]"
            .to_string()),
    };
    if let Err(e) = result {
        eprintln!("bettong-peer: {e}");
        std::process::exit(1);
    }
}

/// `gen DIR MESSAGES [REJECTED_ORDERS]`: half orders, half NBBO updates, as `bench market-spread`.
fn gen_cmd(args: &[String]) -> Result<(), String> {
    let [dir, messages, rest @ ..] = args else {
        return Err("gen DIR MESSAGES [REJECTED_ORDERS]".into());
    };
    let messages: u64 = messages.parse().map_err(|e| format!("{messages}: {e}"))?;
    let mut g = GenMarketSpreadArgs::new(dir);
    g.nbbo = messages / 2;
    g.orders = messages - g.nbbo;
    if let Some(r) = rest.first() {
        g.rejected_orders = Some(r.parse().map_err(|e| format!("{r}: {e}"))?);
    }
    let summary = gen::generate(&g)?;
    eprintln!("{summary}");
    Ok(())
}

struct RunArgs {
    variant: String,
    data: PathBuf,
    workers: usize,
    messages: Option<u64>,
    rate: Option<u64>,
    json: Option<PathBuf>,
    feed: FeedOptions,
}

fn run_cmd(args: &[String]) -> Result<(), String> {
    let mut it = args.iter();
    let variant = it.next().ok_or("run VARIANT")?.clone();
    let mut a = RunArgs {
        variant,
        data: PathBuf::new(),
        workers: 1,
        messages: None,
        rate: None,
        json: None,
        feed: FeedOptions::default(),
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--data" => a.data = PathBuf::from(value),
            "--workers" => a.workers = num()?.max(1) as usize,
            "--messages" => a.messages = Some(num()?),
            "--rate" => a.rate = Some(num()?),
            "--json" => a.json = Some(PathBuf::from(value)),
            "--window" => a.feed.window = Some(num()?.max(1) as usize),
            "--busy-shards" => a.feed.busy = Some(num()? as usize),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let data = Arc::new(Data::load(&a.data, a.messages)?);
    let altered = a.feed.alters();
    if altered && !a.variant.starts_with("bettong-iter") {
        return Err(format!(
            "--window and --busy-shards feed the IterSource variants (bettong-iter*), not {}",
            a.variant
        ));
    }
    FEED_OPTIONS
        .set(a.feed)
        .map_err(|_| "feed options set twice")?;
    let r = match (a.variant.as_str(), a.rate) {
        ("loop", None) => hand_loop(&data),
        ("loop-local", None) => hand_loop_local(&data, a.workers),
        ("timely", None) => timely_inproc(&data, a.workers, false),
        ("timely-local", None) => timely_inproc(&data, a.workers, true),
        ("bettong", None) => bettong_inproc(&data, a.workers, false),
        ("bettong-batch", None) => bettong_inproc(&data, a.workers, true),
        ("bettong-iter", None) => bettong_iter(&data, a.workers, Feed::Share),
        ("bettong-iter-local", None) => bettong_iter(&data, a.workers, Feed::Local),
        ("bettong-iter-engines", None) => bettong_iter_engines(&data, a.workers),
        ("bettong-beside-loop", None) => bettong_beside_loop(&data),
        ("bettong-iter-runs", None) => bettong_iter(&data, a.workers, Feed::Runs),
        ("bettong-iter-4096", None) => {
            // The same with rings of 4096 (`--ring-capacity 4096`, the default before
            // `auto_ring_capacity`): see `engine_config`.
            std::env::set_var("PEER_RING", "4096");
            bettong_iter(&data, a.workers, Feed::Share)
        }
        ("timely", Some(rate)) => timely_latency(&data, rate),
        ("timely-busy", Some(rate)) => with_busy_core(|| timely_latency(&data, rate)),
        ("bettong", Some(rate)) => bettong_latency(&data, rate),
        ("bettong-spin", Some(rate)) => {
            // The same with the shard spinning (`--poll spin`).
            std::env::set_var("PEER_POLL", "spin");
            bettong_latency(&data, rate)
        }
        ("timely-tcp", None) => timely_tcp(&data, a.workers),
        ("bettong-tcp", None) => bettong_tcp(&data, a.workers),
        (v, _) => Err(format!(
            "unknown variant {v} (or --rate not supported for it)"
        )),
    }?;
    // A replayed window or idle shards change what the run outputs: only its input is checked.
    if !altered && r.outputs != data.expected_out {
        return Err(format!(
            "{}: {} outputs, the data implies {}",
            a.variant, r.outputs, data.expected_out
        ));
    }
    let json = format!(
        concat!(
            "{{\"variant\":\"{}\",\"workers\":{},\"messages\":{},\"outputs\":{},\"expected_out\":{},",
            "\"seconds\":{:.6},\"msgs_per_sec\":{:.1},\"cpu_ns_per_msg\":{:.1},\"rate\":{},",
            "\"latency_ns\":{}}}"
        ),
        a.variant,
        a.workers,
        r.messages,
        r.outputs,
        // Not known for a replayed window or idle shards (the outputs are not checked).
        if altered {
            "null".to_string()
        } else {
            data.expected_out.to_string()
        },
        r.seconds,
        r.messages as f64 / r.seconds,
        r.cpu_ns as f64 / r.messages.max(1) as f64,
        a.rate.map_or("null".to_string(), |r| r.to_string()),
        r.latency.as_ref().map_or("null".to_string(), |h| format!(
            "{{\"samples\":{},\"p50\":{},\"p99\":{},\"p99_9\":{},\"max\":{}}}",
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        )),
    );
    println!("{json}");
    if let Some(path) = &a.json {
        std::fs::write(path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// `noise SECONDS [THREADS]`: the machine's own stalls, the floor under every latency figure.
/// THREADS threads (default 1), each pinned to its own core, read the engine's clock
/// ([`now_ns`]) in a loop that does nothing else, for SECONDS; a gap between two reads is time
/// the thread did not run (an interrupt, the hypervisor taking the vCPU). Prints, per thread,
/// the gaps over 1, 10 and 100 µs per second and the longest. One thread alone is the floor of
/// a single spinning shard; two on two cores is the floor of a host thread and a shard that
/// both spin (the embedded example's `--poll spin`).
fn noise_cmd(args: &[String]) -> Result<(), String> {
    let seconds: f64 = args
        .first()
        .ok_or("noise SECONDS [THREADS]")?
        .parse()
        .map_err(|e| format!("SECONDS: {e}"))?;
    let threads: usize = match args.get(1) {
        Some(t) => t.parse().map_err(|e| format!("THREADS: {e}"))?,
        None => 1,
    };
    let cores = online_cores();
    let span = (seconds * 1e9) as u64;
    let handles: Vec<_> = (0..threads.max(1))
        .map(|i| {
            let core = cores[i % cores.len()];
            std::thread::spawn(move || {
                pin_this_thread(core);
                let (mut over, mut longest) = ([0u64; 3], 0u64);
                let start = now_ns();
                let mut prev = start;
                while prev.saturating_sub(start) < span {
                    let t = now_ns();
                    let gap = t.saturating_sub(prev);
                    longest = longest.max(gap);
                    for (n, limit) in over.iter_mut().zip([1_000, 10_000, 100_000]) {
                        *n += u64::from(gap > limit);
                    }
                    prev = t;
                }
                (core, over, longest)
            })
        })
        .collect();
    for h in handles {
        let (core, over, longest) = h.join().map_err(|_| "a noise thread panicked")?;
        let per_s = |n: u64| n as f64 / seconds;
        println!(
            "core {core}: gaps per second over 1 µs {:.0}, over 10 µs {:.0}, over 100 µs {:.1}; longest {:.1} µs",
            per_s(over[0]),
            per_s(over[1]),
            per_s(over[2]),
            longest as f64 / 1e3
        );
    }
    Ok(())
}

/// User + system CPU time of this process (every thread), in ns.
fn cpu_ns() -> u64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    tv(u.ru_utime) + tv(u.ru_stime)
}

struct Outcome {
    messages: u64,
    outputs: u64,
    seconds: f64,
    cpu_ns: u64,
    latency: Option<hdrhistogram::Histogram<u64>>,
}

/// A span measured in wall time and in this process's CPU time.
struct Span {
    wall: Instant,
    cpu: u64,
}

impl Span {
    fn start() -> Span {
        Span {
            wall: Instant::now(),
            cpu: cpu_ns(),
        }
    }
    fn end(self, messages: u64, outputs: u64) -> Outcome {
        let seconds = self.wall.elapsed().as_secs_f64();
        Outcome {
            messages,
            outputs,
            seconds,
            cpu_ns: cpu_ns() - self.cpu,
            latency: None,
        }
    }
}

/// The generated data, as framed bytes in memory.
struct Data {
    dir: PathBuf,
    /// The initial NBBO (one per symbol), sent first and waited for: not timed.
    initial: Vec<u8>,
    /// Orders and NBBO updates interleaved, framed (`[u32 BE len][payload]`).
    stream: Vec<u8>,
    /// Frame offsets into `stream`.
    offsets: Vec<usize>,
    symbols: u64,
    orders: u64,
    nbbo: u64,
    expected_out: u64,
}

/// Whole frames (header and payload) of `bytes`, for setting runs up. What a run times reads
/// payloads through `bettong::codec::Frames`, the same for every variant (it reads ahead).
fn frames(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let frame = rest.get(..4 + len)?;
        rest = &rest[4 + len..];
        Some(frame)
    })
}

impl Data {
    /// Loads `dir`; `messages` (if given) keeps that many of the interleaved stream.
    fn load(dir: &Path, messages: Option<u64>) -> Result<Data, String> {
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()))
        };
        let initial = read(gen::INITIAL_NBBO_FILE)?;
        let orders = read(gen::ORDERS_FILE)?;
        let nbbo = read(gen::NBBO_FILE)?;
        let symbols = frames(&initial).count() as u64;
        let mut rejected: Vec<[u8; 4]> = Vec::new();
        for f in frames(&initial) {
            if let Some(n) = decode(&f[4..]).ok().as_ref().and_then(MarketMessage::nbbo) {
                if is_rejected_spread(n.bid(), n.offer()) {
                    rejected.push(*n.symbol());
                }
            }
        }
        let limit = messages.unwrap_or(u64::MAX);
        let mut stream = Vec::with_capacity(orders.len() + nbbo.len());
        let mut offsets = Vec::new();
        let (mut o, mut n) = (frames(&orders), frames(&nbbo));
        let (mut n_orders, mut n_nbbo, mut expected_out) = (0, 0, 0);
        while (offsets.len() as u64) < limit {
            let next = if offsets.len() % 2 == 0 {
                o.next().or_else(|| n.next())
            } else {
                n.next().or_else(|| o.next())
            };
            let Some(f) = next else { break };
            match decode(&f[4..]) {
                Ok(m) => match m.order() {
                    Some(ord) => {
                        n_orders += 1;
                        if rejected.contains(ord.symbol()) {
                            expected_out += 1;
                        }
                    }
                    None => n_nbbo += 1,
                },
                Err(e) => return Err(format!("bad record in {}: {e}", dir.display())),
            }
            offsets.push(stream.len());
            stream.extend_from_slice(f);
        }
        Ok(Data {
            dir: dir.to_path_buf(),
            initial,
            stream,
            offsets,
            symbols,
            orders: n_orders,
            nbbo: n_nbbo,
            expected_out,
        })
    }

    fn messages(&self) -> u64 {
        self.offsets.len() as u64
    }

    /// Part `k` of `parts` contiguous shares of the stream, as framed bytes.
    /// The frames of the whole stream for which `owner` says `k`, in stream order (for the
    /// `-local` variants: a share in which no message belongs to another worker).
    fn owned(&self, k: usize, owner: impl Fn(&MarketMessage) -> usize) -> Vec<u8> {
        let mut own = Vec::new();
        for f in frames(&self.stream).filter(|f| frame_owner(f, &owner) == k) {
            own.extend_from_slice(f);
        }
        own
    }

    /// The same counts with `stream` as the stream (and no initial NBBO or offsets).
    fn with_stream(&self, stream: Vec<u8>) -> Data {
        Data {
            dir: self.dir.clone(),
            initial: Vec::new(),
            stream,
            offsets: Vec::new(),
            symbols: self.symbols,
            orders: self.orders,
            nbbo: self.nbbo,
            expected_out: self.expected_out,
        }
    }

    fn part(&self, k: usize, parts: usize) -> &[u8] {
        let n = self.offsets.len();
        let (a, b) = (k * n / parts, (k + 1) * n / parts);
        let at = |i: usize| {
            if i == n {
                self.stream.len()
            } else {
                self.offsets[i]
            }
        };
        &self.stream[at(a)..at(b)]
    }
}

/// The worker that `owner` gives the message of `frame`. One function, never inlined, for every
/// feed that picks frames by owner: with a call of `decoded` of its own in the `-runs` feed
/// (f561421), LLVM stopped inlining `decode` into `push_chunk`, and `perf/callgrind.sh`'s
/// `push_batch` row rose from 256.8 to 282.8 instructions per message with the engine unchanged.
#[inline(never)]
fn frame_owner(frame: &[u8], owner: &impl Fn(&MarketMessage) -> usize) -> usize {
    owner(&decoded(frame))
}

fn decoded(frame: &[u8]) -> MarketMessage {
    decoded_payload(&frame[4..])
}

fn decoded_payload(payload: &[u8]) -> MarketMessage {
    decode(payload).expect("the data was checked at load")
}

// ---------------------------------------------------------------------------------------------
// The hand-written loop.

#[inline(never)]
fn run_loop(bytes: &[u8], map: &mut SymbolMap) -> u64 {
    let mut outputs = 0;
    for p in Frames::new(bytes) {
        let msg = decoded_payload(p);
        let state = map.entry(*msg.symbol()).or_default();
        if let Some(r) = check_now(msg, state) {
            std::hint::black_box(&r);
            outputs += 1;
        }
    }
    outputs
}

fn hand_loop(data: &Data) -> Result<Outcome, String> {
    let mut map = SymbolMap::default();
    run_loop(&data.initial, &mut map);
    let span = Span::start();
    let outputs = run_loop(&data.stream, &mut map);
    Ok(span.end(data.messages(), outputs))
}

/// The loop on `workers` threads, each pinned to its own core (unpinned when there are more
/// workers than cores) and each over the messages whose symbol it owns (bettong's routing), all
/// started together: the ceiling for that many workers, and how this machine scales the work
/// with no engine and nothing shared.
fn hand_loop_local(data: &Data, workers: usize) -> Result<Outcome, String> {
    let owner = |m: &MarketMessage| bettong::state::shard_for(symbol_key(m).stable_hash(), workers);
    // Each worker primes its map with the whole initial NBBO (its own symbols' entries are
    // the ones it reads; the rest are never looked up).
    let shares: Vec<Vec<u8>> = (0..workers).map(|k| data.owned(k, owner)).collect();
    let cores = online_cores();
    let pin = workers <= cores.len();
    let start = std::sync::Barrier::new(workers + 1);
    std::thread::scope(|scope| {
        let threads: Vec<_> = shares
            .iter()
            .enumerate()
            .map(|(k, own)| {
                let core = cores.get(k).copied().filter(|_| pin);
                let (start, initial) = (&start, &data.initial);
                scope.spawn(move || loop_worker(core, initial, own, start))
            })
            .collect();
        start.wait();
        let span = Span::start();
        let mut outputs = 0;
        for t in threads {
            outputs += t.join().map_err(|_| "a loop thread panicked")?;
        }
        Ok(span.end(data.messages(), outputs))
    })
}

/// One thread of `loop-local`: pins itself, primes its map, waits for the others, runs its
/// share.
///
/// (With this variant in the binary, LLVM lays out `iter_source::turn`'s loop for
/// `bettong-iter` differently: `perf/callgrind.sh`'s `IterSource` row reads 204.6 instead of
/// 199.6 instructions per message with the engine unchanged. Neither this function out of line
/// nor `ShardFeed::next` always inlined or split at the gate brought it back.)
fn loop_worker(core: Option<usize>, initial: &[u8], own: &[u8], start: &std::sync::Barrier) -> u64 {
    if let Some(core) = core {
        pin_this_thread(core);
    }
    let mut map = SymbolMap::default();
    run_loop(initial, &mut map);
    start.wait();
    run_loop(own, &mut map)
}

// ---------------------------------------------------------------------------------------------
// timely dataflow.

/// A market message as timely data. timely's `Exchange` asks for serde; in one process it moves
/// the values and never serializes them, but the impls are real: the 42/53 wire bytes, with a
/// zero transact time (the decoded message has none).
#[derive(Clone, Copy)]
struct Msg(MarketMessage);

impl serde::Serialize for Msg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.view() {
            MarketView::Order(o) => s.serialize_bytes(
                Order::new(
                    o.side(),
                    o.account(),
                    *o.order_id(),
                    *o.symbol(),
                    o.qty(),
                    o.price(),
                    [b'0'; TRANSACT_TIME_LEN],
                )
                .as_bytes(),
            ),
            MarketView::Nbbo(n) => s.serialize_bytes(
                Nbbo::new(*n.symbol(), [b'0'; TRANSACT_TIME_LEN], n.bid(), n.offer()).as_bytes(),
            ),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Msg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Msg, D::Error> {
        let bytes: Vec<u8> = serde::Deserialize::deserialize(d)?;
        decode(&bytes).map(Msg).map_err(serde::de::Error::custom)
    }
}

fn route(m: &Msg) -> u64 {
    // The symbol's 4 bytes, mixed (timely picks the worker from the hash).
    (u32::from_le_bytes(*m.0.symbol()) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
}

type TimelyInput =
    timely::dataflow::InputHandle<u64, timely::container::CapacityContainerBuilder<Vec<Msg>>>;
type TimelyProbe = timely::dataflow::ProbeHandle<u64>;

/// Builds the Market Spread dataflow on a worker: input → exchange by symbol → check → `out`.
/// `processed` counts checked messages (per batch).
fn spread_dataflow(
    worker: &mut timely::worker::Worker,
    processed: Arc<AtomicU64>,
    mut out: impl FnMut(&OrderResult) + 'static,
) -> (TimelyInput, TimelyProbe) {
    use timely::dataflow::channels::pact::Exchange;
    use timely::dataflow::operators::{Inspect, Operator, Probe};
    let mut input = TimelyInput::new();
    let probe = TimelyProbe::new();
    worker.dataflow::<u64, _, _>(|scope| {
        let mut map = SymbolMap::default();
        input
            .to_stream(scope)
            .unary(Exchange::new(route), "check market data", move |_, _| {
                move |input, output| {
                    input.for_each(|cap, data: &mut Vec<Msg>| {
                        let mut session = output.session(&cap);
                        let n = data.len() as u64;
                        for Msg(m) in data.drain(..) {
                            let state = map.entry(*m.symbol()).or_default();
                            if let Some(r) = check_now(m, state) {
                                session.give(r);
                            }
                        }
                        processed.fetch_add(n, Ordering::Relaxed);
                    });
                }
            })
            .container::<Vec<OrderResult>>()
            .inspect(move |r| out(r))
            .probe_with(&probe);
    });
    (input, probe)
}

/// Feeds framed bytes into a timely input, advancing the epoch every [`EPOCH`] records.
struct Feeder {
    in_epoch: usize,
    /// The highest epoch any worker's input has reached, where inputs fill unevenly (TCP): an
    /// idle worker jumps its input there, so a busy one is never held back by its epoch count.
    global: Option<Arc<AtomicU64>>,
}

impl Feeder {
    fn feed(
        &mut self,
        worker: &mut timely::worker::Worker,
        input: &mut TimelyInput,
        probe: &TimelyProbe,
        bytes: &[u8],
    ) {
        for p in Frames::new(bytes) {
            input.send(Msg(decoded_payload(p)));
            self.in_epoch += 1;
            if self.in_epoch == EPOCH {
                self.advance(worker, input, probe);
            }
        }
    }

    fn advance(
        &mut self,
        worker: &mut timely::worker::Worker,
        input: &mut TimelyInput,
        probe: &TimelyProbe,
    ) {
        self.in_epoch = 0;
        let next = *input.time() + 1;
        input.advance_to(next);
        if let Some(g) = &self.global {
            g.fetch_max(next, Ordering::Relaxed);
        }
        worker.step();
        let behind = next.saturating_sub(MAX_EPOCHS_IN_FLIGHT);
        while probe.less_than(&behind) {
            worker.step();
        }
    }
}

/// `local`: each worker feeds the messages it owns (see `timely-local` in the module docs).
fn timely_inproc(data: &Arc<Data>, workers: usize, local: bool) -> Result<Outcome, String> {
    let outputs = Arc::new(AtomicU64::new(0));
    let processed = Arc::new(AtomicU64::new(0));
    let span = Arc::new(std::sync::Mutex::new(None::<Span>));
    let (o, p, s, d) = (
        outputs.clone(),
        processed.clone(),
        span.clone(),
        data.clone(),
    );
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let outputs = o.clone();
        let (mut input, probe) = spread_dataflow(worker, p.clone(), move |_| {
            outputs.fetch_add(1, Ordering::Relaxed);
        });
        // Priming (not timed): worker 0 sends the initial NBBO in epoch 0; all wait for it.
        let mut feeder = Feeder {
            in_epoch: 0,
            global: None,
        };
        if index == 0 {
            for f in frames(&d.initial) {
                input.send(Msg(decoded(f)));
            }
        }
        input.advance_to(1);
        while probe.less_than(&1) {
            worker.step();
        }
        // timely's exchange sends a record to worker `hash % workers`.
        let own = local.then(|| d.owned(index, |m| route(&Msg(*m)) as usize % workers));
        timely::synchronization::Barrier::new(worker).wait();
        if index == 0 {
            *s.lock().unwrap() = Some(Span::start());
        }
        let part = own.as_deref().unwrap_or_else(|| d.part(index, workers));
        feeder.feed(worker, &mut input, &probe, part);
        drop(input);
        while worker.step() {}
    })?;
    guards
        .join()
        .into_iter()
        .collect::<Result<Vec<()>, String>>()?;
    let span = span.lock().unwrap().take().ok_or("no span")?;
    let _ = processed;
    Ok(span.end(data.messages(), outputs.load(Ordering::Relaxed)))
}

/// Open-loop latency on one timely worker: message i is due at start + i/rate; the worker sends
/// what is due, flushes its input and steps; an output's latency is its order's due time to the
/// `inspect` that sees it. The epoch advances every [`EPOCH`] records, as in the throughput runs.
fn timely_latency(data: &Data, rate: u64) -> Result<Outcome, String> {
    let (stream, due_of) = measured_stream(data)?;
    let gap = 1_000_000_000 / rate.max(1);
    let due: Arc<Vec<AtomicU64>> = Arc::new((0..due_of).map(|_| AtomicU64::new(0)).collect());
    let hist = Arc::new(std::sync::Mutex::new(histogram()));
    let outputs = Arc::new(AtomicU64::new(0));
    let initial = data.initial.clone();
    let (dd, hh, oo) = (due.clone(), hist.clone(), outputs.clone());
    let result = Arc::new(std::sync::Mutex::new(None::<Outcome>));
    let rr = result.clone();
    let n = stream.len() as u64;
    let guards = timely::execute(timely::Config::process(1), move |worker| {
        let (d2, hh, oo) = (dd.clone(), hh.clone(), oo.clone());
        let (mut input, probe) = spread_dataflow(
            worker,
            Arc::new(AtomicU64::new(0)),
            move |r: &OrderResult| {
                let t = now_ns();
                if let Some(d) = d2.get(r.account as usize) {
                    let _ = hh
                        .lock()
                        .unwrap()
                        .record(t.saturating_sub(d.load(Ordering::Acquire)).max(1));
                }
                oo.fetch_add(1, Ordering::Relaxed);
            },
        );
        for f in frames(&initial) {
            input.send(Msg(decoded(f)));
        }
        input.advance_to(1);
        while probe.less_than(&1) {
            worker.step();
        }
        let span = Span::start();
        let start = now_ns();
        let mut in_epoch = 0;
        for (i, m) in stream.iter().enumerate() {
            let at = start + gap * i as u64;
            while now_ns() < at {
                worker.step();
            }
            if let Some(o) = m.order() {
                if let Some(d) = dd.get(o.account() as usize) {
                    d.store(at, Ordering::Release);
                }
            }
            input.send(Msg(*m));
            in_epoch += 1;
            if in_epoch == EPOCH {
                in_epoch = 0;
                let next = *input.time() + 1;
                input.advance_to(next);
            }
            input.flush();
            worker.step();
        }
        drop(input);
        while worker.step() {}
        *rr.lock().unwrap() = Some(span.end(n, 0));
    })?;
    guards
        .join()
        .into_iter()
        .collect::<Result<Vec<()>, String>>()?;
    let mut r = result.lock().unwrap().take().ok_or("no result")?;
    r.outputs = outputs.load(Ordering::Relaxed);
    r.latency = Some(hist.lock().unwrap().clone());
    Ok(r)
}

/// Runs `f` while a thread pinned to the last online core spins: the control for the latency
/// runs. bettong's latency runs keep both cores of a 2-core machine busy (the pacing host thread
/// spins on one, the shard runs on the other), where timely's single worker leaves one idle. On
/// this 2-core VM, busy on both vCPUs alone gives millisecond stalls: timely with a spinner on
/// the other core, 2 runs at 100 k msgs/s, p99.9 2.7 and 2.4 ms (against 51 µs with that core
/// idle), the same tail as `bettong-spin`.
fn with_busy_core<R>(f: impl FnOnce() -> R) -> R {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let core = online_cores().last().copied();
    let spinner = std::thread::spawn(move || {
        if let Some(c) = core {
            pin_this_thread(c);
        }
        while !s.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
    });
    let r = f();
    stop.store(true, Ordering::Relaxed);
    let _ = spinner.join();
    r
}

fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// The stream decoded, with every order on a rejected symbol renumbered through its account
/// field (0, 1, 2…) so that its output says which message it answers; other orders get account
/// `u32::MAX`. Returns the messages and the number of measured orders.
fn measured_stream(data: &Data) -> Result<(Vec<MarketMessage>, usize), String> {
    let mut rejected: Vec<[u8; 4]> = Vec::new();
    for f in frames(&data.initial) {
        if let Some(n) = decoded(f).nbbo() {
            if is_rejected_spread(n.bid(), n.offer()) {
                rejected.push(*n.symbol());
            }
        }
    }
    let mut measured = 0u32;
    let stream = frames(&data.stream)
        .map(|f| match Order::from_payload(&f[4..]) {
            Ok(o) => {
                let account = if rejected.contains(o.symbol()) {
                    measured += 1;
                    measured - 1
                } else {
                    u32::MAX
                };
                MarketMessage::from(Order::new(
                    o.side(),
                    account,
                    *o.order_id(),
                    *o.symbol(),
                    o.qty(),
                    o.price(),
                    *o.transact_time(),
                ))
            }
            Err(_) => decoded(f),
        })
        .collect();
    Ok((stream, measured as usize))
}

// ---------------------------------------------------------------------------------------------
// bettong in-process.

/// `PEER_POLL=park|spin|spin:MICROS` overrides `poll`, the run's own: the engine's default
/// ([`DEFAULT_POLL`], `spin:10`, what `bettong bench` and the CLIs use) for the throughput runs,
/// `park` for the `bettong` latency run. Until 70750dd every run used `park`, the default
/// before edcee12: on 2 shards `IterSource` ran at 18.4/18.0/16.7 M msgs/s on `park` against
/// 24.3/24.0/23.1 M on `spin:10` (3 alternating rounds, timely 26.7/26.8/26.4 M alongside).
/// `perf/callgrind.sh` sets spin, because a shard parked in `io_uring_enter` never wakes under
/// valgrind 3.19. `PEER_RING=N`: the rings' capacity (`--ring-capacity`; default
/// `auto_ring_capacity`).
fn engine_config(shards: usize, poll: Poll) -> EngineConfig {
    let online = online_cores();
    let poll = std::env::var("PEER_POLL")
        .ok()
        .and_then(|p| p.parse::<Poll>().ok())
        .unwrap_or(poll);
    // More shards than cores: unpinned, numbered 0.. (the engine takes each core once).
    let pin = shards <= online.len();
    EngineConfig {
        cores: if pin {
            online[..shards].to_vec()
        } else {
            (0..shards).collect()
        },
        pin,
        poll,
        ring_capacity: std::env::var("PEER_RING").ok().and_then(|v| v.parse().ok()),
        ..EngineConfig::default()
    }
}

fn wait_finished(engine: &Engine, total: u64) {
    while engine.progress().finished < total {
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Market Spread from `market` into a `CallbackSink` that counts the outputs.
fn counted_spread_check(
    market: impl bettong::Source<Out = MarketMessage>,
) -> (Application, Arc<AtomicU64>) {
    let outputs = Arc::new(AtomicU64::new(0));
    let out = outputs.clone();
    let sink = CallbackSink::new(move |_: &OrderResult| {
        out.fetch_add(1, Ordering::Relaxed);
    });
    let app = Application::new(
        "peer spread check",
        spread_check(Pipeline::source("Market", market)).to_sink("Results", sink),
    );
    (app, outputs)
}

/// `batch`: each pusher thread hands its messages to `Pusher::push_batch` 1024 at a time (as
/// timely's input handle buffers 1024 records before it sends), instead of one `push` each.
///
/// One pusher thread per shard, each with its share of the stream; `PEER_PUSHERS=N` runs N
/// instead (one host thread feeding 2 shards ran 15.2 M msgs/s against 25.6 M for two, 6
/// alternating rounds: the host thread is then the bottleneck, and the shards park and are
/// rung between its pushes).
fn bettong_inproc(data: &Data, shards: usize, batch: bool) -> Result<Outcome, String> {
    let market = InProcessSource::new(symbol_key);
    let (app, outputs) = counted_spread_check(market.clone());
    let engine =
        Engine::start(app, engine_config(shards, DEFAULT_POLL)).map_err(|e| e.to_string())?;
    let mut pusher = market.pusher()?;
    for f in frames(&data.initial) {
        pusher.push(decoded(f)).map_err(|_| "engine stopped")?;
    }
    drop(pusher);
    wait_finished(&engine, data.symbols);
    if let Some(chunk) = std::env::var("PEER_CHUNK")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
    {
        return bettong_chunked(data, engine, market, outputs, chunk.max(1));
    }
    let threads = std::env::var("PEER_PUSHERS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(shards)
        .max(1);
    let pushers = (0..threads)
        .map(|_| market.pusher())
        .collect::<Result<Vec<_>, _>>()?;
    let span = Span::start();
    std::thread::scope(|s| {
        for (k, mut p) in pushers.into_iter().enumerate() {
            let part = data.part(k, threads);
            s.spawn(move || {
                if batch {
                    // Chunks taken from the frame iterator as they go: collecting every
                    // frame of the share into a `Vec` first (8 M slices, inside the timed
                    // span) had the host thread's page faults and copies in the figure.
                    let mut all = Frames::new(part).peekable();
                    while all.peek().is_some() {
                        if p.push_batch(all.by_ref().take(1024).map(decoded_payload))
                            .is_err()
                        {
                            return;
                        }
                    }
                    return;
                }
                for payload in Frames::new(part) {
                    if p.push(decoded_payload(payload)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    wait_finished(&engine, data.symbols + data.messages());
    let r = span.end(data.messages(), outputs.load(Ordering::Relaxed));
    engine.stop().map_err(|e| e.to_string())?;
    Ok(r)
}

/// Each shard pulls its share of the stream from an [`IterSource`] on its own thread, decoding
/// as it goes (as timely's workers feed their own inputs): no host thread.
///
/// Priming without a host: shard k's iterator first yields the initial NBBO of the symbols
/// shard k owns (all local: no message crosses a ring), then waits at a gate until every
/// shard has primed; the last one to arrive starts the timed span.
///
/// `local`: each shard's share is the messages it owns (see `bettong-iter-local`), picked
/// before the engine starts.
/// What each shard of `bettong-iter` is fed.
#[derive(Clone, Copy, PartialEq)]
enum Feed {
    /// Its contiguous share of the stream.
    Share,
    /// The messages whose symbol it owns (nothing crosses).
    Local,
    /// Its share, reordered within windows of `RUN_WINDOW` messages by owning shard.
    Runs,
}

/// Messages per window of `Feed::Runs`.
const RUN_WINDOW: usize = 64;

fn bettong_iter(data: &Arc<Data>, shards: usize, feed: Feed) -> Result<Outcome, String> {
    let gate = Gate::new(shards);
    let (d, g) = (data.clone(), gate.clone());
    let (app, outputs) =
        spread_check_over(move |shard, shards| ShardFeed::new(&d, &g, shard, shards, feed));
    let engine =
        Engine::start(app, engine_config(shards, DEFAULT_POLL)).map_err(|e| e.to_string())?;
    let summary = engine.join().map_err(|e| e.to_string())?;
    let span = gate.span()?;
    let fed = FED.load(Ordering::Relaxed);
    let r = span.end(fed, outputs.load(Ordering::Relaxed));
    if summary.messages_in != data.symbols + fed {
        return Err(format!("{} messages in, {fed} fed", summary.messages_in));
    }
    Ok(r)
}

/// `bettong-iter-engines`: W engines of one shard each, each pinned to its own core and fed
/// only its own keys (as `bettong-iter-local` feeds W shards of one engine): what W shards
/// would do with nothing shared between them.
fn bettong_iter_engines(data: &Arc<Data>, engines: usize) -> Result<Outcome, String> {
    let gate = Gate::new(engines);
    let online = online_cores();
    let running: Vec<_> = (0..engines)
        .map(|e| own_keys_engine(data, &gate, e, engines, online[e % online.len()]))
        .collect();
    let (mut messages_in, mut outputs) = (0, 0);
    for t in running {
        let (m, o) = t.join().map_err(|_| "an engine's thread panicked")??;
        messages_in += m;
        outputs += o;
    }
    let span = gate.span()?;
    let fed = FED.load(Ordering::Relaxed);
    if messages_in != data.symbols + fed {
        return Err(format!("{messages_in} messages in, {fed} fed"));
    }
    Ok(span.end(fed, outputs))
}

/// A 1-shard engine on `core`, on a thread of its own, fed the messages whose keys shard
/// `shard` of `shards` owns; the thread returns its messages in and outputs. It starts and runs
/// on its own thread because `Engine::start` returns once its shard is running, and the shard
/// waits at `gate` for the others.
fn own_keys_engine(
    data: &Arc<Data>,
    gate: &Arc<Gate>,
    shard: usize,
    shards: usize,
    core: usize,
) -> std::thread::JoinHandle<Result<(u64, u64), String>> {
    let (d, g) = (data.clone(), gate.clone());
    std::thread::spawn(move || {
        let (app, outputs) =
            spread_check_over(move |_, _| ShardFeed::new(&d, &g, shard, shards, Feed::Local));
        let mut config = engine_config(1, DEFAULT_POLL);
        config.cores = vec![core];
        let engine = Engine::start(app, config).map_err(|e| e.to_string())?;
        let messages_in = engine.join().map_err(|e| e.to_string())?.messages_in;
        Ok((messages_in, outputs.load(Ordering::Relaxed)))
    })
}

/// `bettong-beside-loop` (2 workers): a 1-shard engine over the keys of shard 0 on one core and
/// the hand-written loop over the keys of shard 1 on the other, started together: whether a
/// shard slows beside any busy neighbour or only beside another shard (see
/// `bettong-iter-engines`). The span ends when both have finished; the loop's half takes less
/// time than the engine's, so the figure is the engine's pace.
fn bettong_beside_loop(data: &Arc<Data>) -> Result<Outcome, String> {
    let gate = Gate::new(2);
    let online = online_cores();
    let owner = |m: &MarketMessage| bettong::state::shard_for(symbol_key(m).stable_hash(), 2);
    let share = data.owned(1, owner);
    let engine = own_keys_engine(data, &gate, 0, 2, online[0]);
    let (initial, g) = (data.initial.clone(), gate.clone());
    let core = online.get(1).copied();
    let looped = std::thread::spawn(move || {
        if let Some(core) = core {
            pin_this_thread(core);
        }
        let mut map = SymbolMap::default();
        run_loop(&initial, &mut map);
        g.arrive();
        run_loop(&share, &mut map)
    });
    let (messages_in, outputs) = engine
        .join()
        .map_err(|_| "the engine's thread panicked")??;
    let outputs = outputs + looped.join().map_err(|_| "the loop's thread panicked")?;
    let span = gate.span()?;
    // The engine counts its own share and its shard's priming NBBO.
    if messages_in == 0 {
        return Err("the engine took no messages".into());
    }
    Ok(span.end(data.messages(), outputs))
}

/// Where the shards' feeds wait for each other after priming.
struct Gate {
    arrived: AtomicU64,
    shards: u64,
    span: std::sync::Mutex<Option<Span>>,
}

impl Gate {
    /// A gate for `shards` feeds.
    fn new(shards: usize) -> Arc<Gate> {
        Arc::new(Gate {
            arrived: AtomicU64::new(0),
            shards: shards as u64,
            span: std::sync::Mutex::new(None),
        })
    }

    /// Arrives at the gate and waits there for the others; the last to arrive starts the span.
    fn arrive(&self) {
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.shards {
            if let Ok(mut s) = self.span.lock() {
                *s = Some(Span::start());
            }
        }
        while self.arrived.load(Ordering::Acquire) < self.shards {
            std::hint::spin_loop();
        }
    }

    /// The span the last feed to arrive started.
    fn span(&self) -> Result<Span, String> {
        let span = self.span.lock().map_err(|_| "gate poisoned")?.take();
        span.ok_or_else(|| "no span".to_string())
    }
}

/// One shard's input in `bettong-iter`: its own symbols' initial NBBO, the gate, its share.
struct ShardFeed {
    data: Arc<Data>,
    prime: std::vec::IntoIter<MarketMessage>,
    gate: Option<Arc<Gate>>,
    /// The share's byte range in `data.stream`, consumed from the front. With `local`, `data`
    /// is a copy whose stream is only this shard's own messages (so that `next` reads the same
    /// way in both: `perf/callgrind.sh` counts it).
    at: usize,
    end: usize,
}

/// `run --window BYTES --busy-shards K`: diagnostic changes to what the `bettong-iter*` feeds
/// give their shards, for telling the engine's cost per message from the memory system's.
///
/// - `window`: each feed sends as many messages as its share holds, but reads them from the
///   first BYTES of its share (whole frames, at least one) over and over: the stream then
///   comes from the cache (500 000 bytes fit this machine's 2 MiB L2) instead of memory.
/// - `busy`: only feeds `0..K` send their share; the others send nothing after priming, so
///   `taskset -c 0 ... --busy-shards 1` runs one shard's work on one thread, next to idle
///   shards, with nothing crossing to it but what its own share routes there.
///
/// Either one changes the run's outputs, so only its input is checked (messages in = the
/// priming NBBO + what the feeds sent), and msgs/s counts what the feeds sent.
#[derive(Default)]
struct FeedOptions {
    window: Option<usize>,
    busy: Option<usize>,
}

impl FeedOptions {
    fn alters(&self) -> bool {
        self.window.is_some() || self.busy.is_some()
    }
}

static FEED_OPTIONS: std::sync::OnceLock<FeedOptions> = std::sync::OnceLock::new();

/// The spread check over an `IterSource` whose shard `s` of `n` reads `make(s, n)`, through a
/// [`WindowFeed`] under `--window`.
fn spread_check_over(
    make: impl Fn(usize, usize) -> ShardFeed + Send + Sync + 'static,
) -> (Application, Arc<AtomicU64>) {
    match FEED_OPTIONS.get().and_then(|o| o.window) {
        None => counted_spread_check(IterSource::new(make)),
        Some(bytes) => counted_spread_check(IterSource::new(move |shard, shards| {
            WindowFeed::new(make(shard, shards), bytes)
        })),
    }
}

/// Messages the `bettong-iter*` feeds of this run send after priming (all of them add theirs
/// when they are made, before any is read).
static FED: AtomicU64 = AtomicU64::new(0);

impl ShardFeed {
    fn new(
        data: &Arc<Data>,
        gate: &Arc<Gate>,
        shard: usize,
        shards: usize,
        feed: Feed,
    ) -> ShardFeed {
        let prime: Vec<MarketMessage> = frames(&data.initial)
            .map(decoded)
            .filter(|m| {
                shards == 1
                    || bettong::state::shard_for(symbol_key(m).stable_hash(), shards) == shard
            })
            .collect();
        let owner =
            |m: &MarketMessage| bettong::state::shard_for(symbol_key(m).stable_hash(), shards);
        let (data, at, end) = if feed == Feed::Local {
            let own = data.with_stream(data.owned(shard, owner));
            let end = own.stream.len();
            (Arc::new(own), 0, end)
        } else if feed == Feed::Runs {
            let mut runs = Vec::new();
            let part: Vec<&[u8]> = frames(data.part(shard, shards)).collect();
            for window in part.chunks(RUN_WINDOW) {
                let mut window = window.to_vec();
                // Stable: a symbol's messages keep their order.
                window.sort_by_key(|f| frame_owner(f, &owner));
                for f in window {
                    runs.extend_from_slice(f);
                }
            }
            let runs = data.with_stream(runs);
            let end = runs.stream.len();
            (Arc::new(runs), 0, end)
        } else {
            let part = data.part(shard, shards);
            let at = part.as_ptr() as usize - data.stream.as_ptr() as usize;
            (data.clone(), at, at + part.len())
        };
        let options = FEED_OPTIONS.get();
        let end = match options.and_then(|o| o.busy) {
            Some(busy) if shard >= busy => at,
            _ => end,
        };
        FED.fetch_add(
            frames(&data.stream[at..end]).count() as u64,
            Ordering::Relaxed,
        );
        ShardFeed {
            data,
            prime: prime.into_iter(),
            gate: Some(gate.clone()),
            at,
            end,
        }
    }
}

/// A [`ShardFeed`] under `--window`: its share's first bytes read lap after lap. A type of its
/// own, so that a plain run's feed (and the engine code LLVM builds around it: the layout of
/// `iter_source::turn` moves callgrind's counts) is what it was without the option.
struct WindowFeed {
    feed: ShardFeed,
    /// Where the window starts, and how many more times it is read from there.
    start: usize,
    laps_left: u64,
}

impl WindowFeed {
    /// Cuts `feed`'s share to its first `bytes` (whole frames, at least one), read as many
    /// times as fit in the share's message count.
    fn new(mut feed: ShardFeed, bytes: usize) -> WindowFeed {
        let start = feed.at;
        let share = frames(&feed.data.stream[start..feed.end]).count() as u64;
        let (mut end, mut in_window) = (start, 0u64);
        for f in frames(&feed.data.stream[start..feed.end]) {
            end += f.len();
            in_window += 1;
            if end - start >= bytes {
                break;
            }
        }
        // Whole laps: as many messages as the share holds, or just under.
        let laps = share.checked_div(in_window).unwrap_or(0).max(1);
        FED.fetch_sub(share - laps * in_window, Ordering::Relaxed);
        feed.end = end;
        WindowFeed {
            feed,
            start,
            laps_left: laps - 1,
        }
    }
}

impl Iterator for WindowFeed {
    type Item = MarketMessage;

    fn next(&mut self) -> Option<MarketMessage> {
        loop {
            if let Some(m) = self.feed.next() {
                return Some(m);
            }
            if self.laps_left == 0 || self.feed.at != self.feed.end {
                return None;
            }
            self.laps_left -= 1;
            self.feed.at = self.start;
        }
    }
}

impl Iterator for ShardFeed {
    type Item = MarketMessage;

    #[inline]
    fn next(&mut self) -> Option<MarketMessage> {
        if let Some(gate) = &self.gate {
            if let Some(m) = self.prime.next() {
                return Some(m);
            }
            // Primed (processed already: every priming message was local). Wait for the rest.
            gate.arrive();
            self.gate = None;
        }
        let mut frames = Frames::new(self.data.stream.get(self.at..self.end)?);
        let m = decode(frames.next()?).ok()?;
        self.at = self.end - frames.rest().len();
        Some(m)
    }
}

/// For `perf/callgrind.sh` (`PEER_CHUNK=C`): the host thread pushes `C` messages at a time
/// (fewer than a pusher ring holds, so a push never waits) and waits, outside [`push_chunk`],
/// until the shard has finished them. What callgrind counts in `push_chunk` (decode, route,
/// push, publish, wake) and in the shard's source task (drain, operators, sink) is then the same
/// from run to run: no spinning is inside either.
fn bettong_chunked(
    data: &Data,
    engine: Engine,
    market: InProcessSource<MarketMessage>,
    outputs: Arc<AtomicU64>,
    chunk: usize,
) -> Result<Outcome, String> {
    let mut pusher = market.pusher()?;
    let frames_all: Vec<&[u8]> = frames(&data.stream).collect();
    let span = Span::start();
    let mut done = data.symbols;
    for c in frames_all.chunks(chunk) {
        push_chunk(&mut pusher, c);
        done += c.len() as u64;
        wait_finished(&engine, done);
    }
    let r = span.end(data.messages(), outputs.load(Ordering::Relaxed));
    drop(pusher);
    engine.stop().map_err(|e| e.to_string())?;
    Ok(r)
}

#[inline(never)]
fn push_chunk(pusher: &mut bettong::Pusher<MarketMessage>, frames: &[&[u8]]) {
    // PEER_BATCH=1: one `push_batch` per chunk (one handshake, clock read and publish per
    // ring per chunk) instead of one `push` per message.
    static BATCH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *BATCH.get_or_init(|| std::env::var("PEER_BATCH").is_ok_and(|v| v == "1")) {
        let _ = pusher.push_batch(frames.iter().map(|f| decoded(f)));
        return;
    }
    for f in frames {
        let _ = pusher.push(decoded(f));
    }
}

/// Open-loop latency on one shard, one host pusher thread; see [`timely_latency`].
fn bettong_latency(data: &Data, rate: u64) -> Result<Outcome, String> {
    let (stream, due_of) = measured_stream(data)?;
    let gap = 1_000_000_000 / rate.max(1);
    let due: Arc<Vec<AtomicU64>> = Arc::new((0..due_of).map(|_| AtomicU64::new(0)).collect());
    let hist = Arc::new(std::sync::Mutex::new(histogram()));
    let outputs = Arc::new(AtomicU64::new(0));
    let market = InProcessSource::new(symbol_key);
    let (dd, hh, oo) = (due.clone(), hist.clone(), outputs.clone());
    let sink = CallbackSink::new(move |r: &OrderResult| {
        let t = now_ns();
        if let Some(d) = dd.get(r.account as usize) {
            let _ = hh
                .lock()
                .unwrap()
                .record(t.saturating_sub(d.load(Ordering::Acquire)).max(1));
        }
        oo.fetch_add(1, Ordering::Relaxed);
    });
    let app = Application::new(
        "peer spread check",
        spread_check(Pipeline::source("Market", market.clone())).to_sink("Results", sink),
    );
    let engine = Engine::start(app, engine_config(1, Poll::Park)).map_err(|e| e.to_string())?;
    let mut pusher = market.pusher()?;
    for f in frames(&data.initial) {
        pusher.push(decoded(f)).map_err(|_| "engine stopped")?;
    }
    wait_finished(&engine, data.symbols);
    // The host thread on a core of its own, as the issue's setup says (host thread and shard
    // each on one of the two cores): unpinned, the scheduler sometimes puts the spinning host
    // on the shard's core. 3 alternating runs at 100 k msgs/s, park: p99 3.7/2.4/3.3 ms
    // unpinned, 1.6/0.84/1.2 ms pinned (p50 about 20 µs either way).
    // PEER_PIN_HOST=0 leaves it unpinned (to compare).
    let pin = std::env::var("PEER_PIN_HOST").map_or(true, |v| v != "0");
    let shard_core = engine_config(1, Poll::Park).cores[0];
    if let Some(&core) = online_cores()
        .iter()
        .rev()
        .find(|&&c| pin && c != shard_core)
    {
        pin_this_thread(core);
    }
    let span = Span::start();
    let start = now_ns();
    for (i, m) in stream.iter().enumerate() {
        let at = start + gap * i as u64;
        while now_ns() < at {
            std::hint::spin_loop();
        }
        if let Some(o) = m.order() {
            if let Some(d) = due.get(o.account() as usize) {
                d.store(at, Ordering::Release);
            }
        }
        pusher.push(*m).map_err(|_| "engine stopped")?;
    }
    wait_finished(&engine, data.symbols + stream.len() as u64);
    let mut r = span.end(stream.len() as u64, outputs.load(Ordering::Relaxed));
    drop(pusher);
    engine.stop().map_err(|e| e.to_string())?;
    r.latency = Some(hist.lock().unwrap().clone());
    Ok(r)
}

/// Pins the calling thread to `core` (best effort: a failure leaves it unpinned).
fn pin_this_thread(core: usize) {
    // SAFETY: cpu_set_t is plain data that CPU_ZERO initialises; CPU_SET writes inside it for
    // core < CPU_SETSIZE (checked); sched_setaffinity(0, …) reads the set for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        if core < libc::CPU_SETSIZE as usize {
            libc::CPU_SET(core, &mut set);
            let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Over TCP: bettong-giles' sender and receiver around timely or the engine.

/// The three sends of `bench market-spread`: the initial NBBO (priming), then orders and NBBO
/// updates blasted concurrently on their own connections.
fn send_args(
    host: SocketAddr,
    file: &str,
    messages: u64,
    record: usize,
    prime: bool,
    dir: &Path,
) -> SendArgs {
    let mut a = SendArgs::new(&host.to_string(), messages);
    a.file = vec![dir.join(file)];
    a.no_write = true;
    a.repeat = true;
    a.binary = true;
    a.msg_size = Some(record);
    if prime {
        a.batch_size = messages.max(1) as usize;
        a.interval = 1_000_000;
    } else {
        a.blast = true;
    }
    a
}

fn receiver(expected: u64) -> Result<Receiver, String> {
    let mut r = ReceiveArgs::new("127.0.0.1:0");
    r.framed = true;
    r.no_write = true;
    r.expect = Some(expected);
    Receiver::bind(&r)
}

/// The TCP runs use the files as `gen` wrote them (orders and NBBO on their own connections),
/// so they need the whole data set, not a `--messages` cut.
fn tcp_run(
    data: &Data,
    orders: SocketAddr,
    nbbo: SocketAddr,
    processed: &dyn Fn() -> u64,
    receiving: &std::thread::JoinHandle<Result<bettong_giles::receiver::ReceiveReport, String>>,
) -> Result<Span, String> {
    sender::run(&send_args(
        nbbo,
        gen::INITIAL_NBBO_FILE,
        data.symbols,
        46,
        true,
        &data.dir,
    ))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while processed() < data.symbols {
        if Instant::now() > deadline {
            return Err("priming did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Loaded and connected before the clock starts (reading the files is not the engine's
    // work).
    let sends = [
        sender::prepare(&send_args(
            orders,
            gen::ORDERS_FILE,
            data.orders,
            57,
            false,
            &data.dir,
        ))?,
        sender::prepare(&send_args(
            nbbo,
            gen::NBBO_FILE,
            data.nbbo,
            46,
            false,
            &data.dir,
        ))?,
    ];
    let span = Span::start();
    let threads: Vec<_> = sends
        .into_iter()
        .map(|p| std::thread::spawn(move || p.send()))
        .collect();
    for t in threads {
        t.join().map_err(|_| "a sender panicked")??;
    }
    let total = data.symbols + data.orders + data.nbbo;
    while processed() < total {
        if Instant::now() > deadline {
            return Err("processing did not finish".into());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    while !receiving.is_finished() {
        if Instant::now() > deadline {
            return Err("the receiver did not get every output".into());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(span)
}

fn bettong_tcp(data: &Data, shards: usize) -> Result<Outcome, String> {
    if data.messages() != data.orders + data.nbbo || data.orders + data.nbbo == 0 {
        return Err("bettong-tcp needs the whole data set (no --messages)".into());
    }
    let rx = receiver(data.expected_out)?;
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut config = engine_config(shards, DEFAULT_POLL);
    config.inputs = vec![
        (Some("Orders".into()), loopback.into()),
        (Some("Nbbo".into()), loopback.into()),
    ];
    config.outputs = vec![(None, rx.local_addr().into())];
    let stop = rx.stop_handle();
    let receiving = std::thread::spawn(move || rx.run());
    let engine = Engine::start(bettong_apps::market_spread::application(), config)
        .map_err(|e| e.to_string())?;
    let addr = |name: &str| {
        engine
            .sources()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .ok_or_else(|| format!("no source {name}"))
    };
    let (orders, nbbo) = (addr("Orders")?, addr("Nbbo")?);
    let span = tcp_run(
        data,
        orders,
        nbbo,
        &|| engine.progress().finished,
        &receiving,
    );
    engine.stop_handle().stop();
    let summary = engine.join().map_err(|e| e.to_string());
    stop.stop();
    let received = receiving.join().map_err(|_| "receiver panicked")??;
    let span = span?;
    let r = span.end(data.orders + data.nbbo, received.messages);
    summary?;
    Ok(r)
}

/// One reader thread per accepted connection: reads big chunks, cuts whole frames, hands them
/// to its worker's channel.
fn reader(mut conn: TcpStream, to: mpsc::SyncSender<Vec<u8>>) {
    let mut buf = vec![0u8; 1 << 16];
    let mut have = 0;
    loop {
        let n = match conn.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        have += n;
        let mut whole = 0;
        for f in frames(&buf[..have]) {
            whole += f.len();
        }
        if whole > 0 {
            if to.send(buf[..whole].to_vec()).is_err() {
                return;
            }
            buf.copy_within(whole..have, 0);
            have -= whole;
        }
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

fn acceptor(listener: TcpListener, to: mpsc::SyncSender<Vec<u8>>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { return };
        let _ = conn.set_nodelay(true);
        let to = to.clone();
        std::thread::spawn(move || reader(conn, to));
    }
}

fn timely_tcp(data: &Data, workers: usize) -> Result<Outcome, String> {
    if data.messages() != data.orders + data.nbbo || data.orders + data.nbbo == 0 {
        return Err("timely-tcp needs the whole data set (no --messages)".into());
    }
    let rx = receiver(data.expected_out)?;
    let out_addr = rx.local_addr();
    let stop_rx = rx.stop_handle();
    let receiving = std::thread::spawn(move || rx.run());
    let orders = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let nbbo = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let (orders_addr, nbbo_addr) = (
        orders.local_addr().map_err(|e| e.to_string())?,
        nbbo.local_addr().map_err(|e| e.to_string())?,
    );
    let mut txs = Vec::new();
    let mut rxs = Vec::new();
    for _ in 0..workers {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(64);
        txs.push(tx);
        rxs.push(std::sync::Mutex::new(Some(rx)));
    }
    let rxs = Arc::new(rxs);
    {
        let (to_o, to_n) = (txs[0].clone(), txs[workers - 1].clone());
        std::thread::spawn(move || acceptor(orders, to_o));
        std::thread::spawn(move || acceptor(nbbo, to_n));
    }
    drop(txs);
    let processed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let epoch = Arc::new(AtomicU64::new(0));
    let (p, dn) = (processed.clone(), done.clone());
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let chunks = rxs[index]
            .lock()
            .unwrap()
            .take()
            .expect("one worker per channel");
        let sink = std::rc::Rc::new(std::cell::RefCell::new(std::io::BufWriter::with_capacity(
            1 << 16,
            TcpStream::connect(out_addr).expect("connect to the receiver"),
        )));
        let s2 = sink.clone();
        let mut frame = Vec::with_capacity(64);
        let (mut input, probe) = spread_dataflow(worker, p.clone(), move |r: &OrderResult| {
            frame.clear();
            r.encode_into(&mut frame);
            let _ = s2.borrow_mut().write_all(&frame);
        });
        let mut feeder = Feeder {
            in_epoch: 0,
            global: Some(epoch.clone()),
        };
        loop {
            match chunks.try_recv() {
                Ok(chunk) => feeder.feed(worker, &mut input, &probe, &chunk),
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {
                    // Out of input: push what the input holds, run the dataflow, flush the sink,
                    // then block briefly for more (as a parked shard would).
                    if feeder.in_epoch > 0 {
                        feeder.advance(worker, &mut input, &probe);
                    }
                    let g = epoch.load(Ordering::Relaxed);
                    if g > *input.time() {
                        input.advance_to(g);
                    }
                    while worker.step() && probe.less_than(input.time()) {}
                    let _ = sink.borrow_mut().flush();
                    if dn.load(Ordering::Acquire) {
                        break;
                    }
                    if let Ok(chunk) = chunks.recv_timeout(Duration::from_micros(200)) {
                        feeder.feed(worker, &mut input, &probe, &chunk);
                    }
                }
            }
        }
        drop(input);
        while worker.step() {}
        let _ = sink.borrow_mut().flush();
    })?;
    let span = tcp_run(
        data,
        orders_addr,
        nbbo_addr,
        &|| processed.load(Ordering::Relaxed),
        &receiving,
    );
    done.store(true, Ordering::Release);
    guards
        .join()
        .into_iter()
        .collect::<Result<Vec<()>, String>>()?;
    stop_rx.stop();
    let received = receiving.join().map_err(|_| "receiver panicked")??;
    let span = span?;
    Ok(span.end(data.orders + data.nbbo, received.messages))
}

#[cfg(test)]
mod tests {
    /// `pin_this_thread` leaves the calling thread allowed on that one core only (as the
    /// kernel reports it), and other threads as they were.
    #[test]
    fn pins_only_the_calling_thread() {
        let allowed = || {
            std::fs::read_to_string("/proc/thread-self/status")
                .unwrap()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Cpus_allowed_list:")
                        .map(|v| v.trim().to_string())
                })
                .unwrap()
        };
        let before = allowed();
        let core = *bettong::runtime::config::online_cores().last().unwrap();
        let pinned = std::thread::spawn(move || {
            super::pin_this_thread(core);
            allowed()
        })
        .join()
        .unwrap();
        assert_eq!(pinned, core.to_string());
        assert_eq!(allowed(), before);
    }
}
