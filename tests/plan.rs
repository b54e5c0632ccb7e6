//! The plan: diamonds, several sinks, several pipelines, names, a user-written source, and
//! control events, checked for exact outputs on 1 to 4 unpinned shards.

mod common;
#[allow(dead_code)]
#[path = "../examples/file_source.rs"]
mod file_source;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use bettong::{
    Application, CallbackSink, Control, EngineConfig, Error, InProcessSource, Opened, Pipeline,
    PolledSink, Sink, SinkContext, SinkInput, SinkShard, Sinks, Source, SourceContext, Stamp,
    TcpSink,
};
use common::wait_finished;

fn config(shards: usize) -> EngineConfig {
    EngineConfig {
        cores: (0..shards).collect(),
        pin: false,
        ..EngineConfig::default()
    }
}

/// Split then merge: every number goes through both branches and meets itself again at a
/// keyed state computation (which counts each value), on 1–4 shards.
#[test]
fn diamond_gives_exact_outputs() {
    for shards in 1..=4 {
        let numbers = InProcessSource::new(|n: &u64| n);
        let (sink, mut outputs) = PolledSink::new(1 << 16);
        let src = Pipeline::source("Numbers", numbers.clone());
        let tens = src.clone().to(|n: u64| Some(n * 10)).name("times ten");
        let ones = src.to(|n: u64| Some(n + 1)).name("plus one");
        let app = Application::new(
            "diamond",
            tens.merge(ones)
                .key_by(|v: &u64| v)
                .to_state(|v: u64, seen: &mut u64| {
                    *seen += 1;
                    Some((v, *seen))
                })
                .name("count values")
                .to_sink("Counts", sink),
        );
        let engine = bettong::Engine::start(app, config(shards)).unwrap();
        let mut pusher = numbers.pusher().unwrap();
        for n in 0..1000u64 {
            pusher.push(n).unwrap();
        }
        drop(pusher);
        wait_finished(&engine, 2000);
        let summary = engine.stop().unwrap();
        let mut got = Vec::new();
        outputs.poll(|o| got.push(o));
        got.sort_unstable();
        // The model: each value's outputs count 1..=its multiplicity.
        let mut mult: BTreeMap<u64, u64> = BTreeMap::new();
        for n in 0..1000u64 {
            *mult.entry(n * 10).or_default() += 1;
            *mult.entry(n + 1).or_default() += 1;
        }
        let want: Vec<(u64, u64)> = mult
            .iter()
            .flat_map(|(v, m)| (1..=*m).map(move |c| (*v, c)))
            .collect();
        assert_eq!(got, want, "{shards} shard(s)");
        assert_eq!(summary.messages_in, 1000);
        assert_eq!(summary.messages_out, 2000);
        assert_eq!(
            summary.state_entities,
            vec![("count values".to_string(), mult.len() as u64)],
            "every value is one state entity, on exactly one shard"
        );
    }
}

/// `to_sinks`: every output reaches both TCP sinks, each with its own encoder.
#[test]
fn to_sinks_delivers_every_output_to_both_tcp_sinks() {
    for shards in [1, 2, 3] {
        let text_sink = common::Sink::bind();
        let binary_sink = common::Sink::bind();
        let numbers = InProcessSource::new(|n: &u64| n);
        let app = Application::new(
            "two sinks",
            Pipeline::source("Numbers", numbers.clone()).to_sinks(
                Sinks::new()
                    .sink(
                        "Text",
                        TcpSink::new(|n: &u64, out: &mut Vec<u8>| {
                            out.extend_from_slice(format!("{n}\n").as_bytes())
                        }),
                    )
                    .sink(
                        "Binary",
                        TcpSink::new(|n: &u64, out: &mut Vec<u8>| {
                            out.extend_from_slice(&n.to_be_bytes())
                        }),
                    ),
            ),
        );
        let mut cfg = config(shards);
        cfg.outputs = vec![
            (Some("Binary".to_string()), binary_sink.addr.into()),
            (Some("Text".to_string()), text_sink.addr.into()),
        ];
        let engine = bettong::Engine::start(app, cfg).unwrap();
        let mut pusher = numbers.pusher().unwrap();
        for n in 0..500u64 {
            pusher.push(n).unwrap();
        }
        drop(pusher);
        wait_finished(&engine, 500);
        let summary = engine.stop().unwrap();
        assert_eq!(
            summary.messages_out, 1000,
            "{shards} shard(s): 500 outputs to each of 2 sinks\n{summary}"
        );
        let mut text: Vec<u64> = text_sink
            .finish()
            .concat()
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| std::str::from_utf8(l).unwrap().parse().unwrap())
            .collect();
        let mut binary: Vec<u64> = binary_sink
            .finish()
            .iter()
            .flat_map(|conn| {
                assert_eq!(conn.len() % 8, 0, "whole records per connection");
                conn.chunks(8)
                    .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
                    .collect::<Vec<_>>()
            })
            .collect();
        text.sort_unstable();
        binary.sort_unstable();
        let want: Vec<u64> = (0..500).collect();
        assert_eq!(text, want, "{shards} shard(s): text sink");
        assert_eq!(binary, want, "{shards} shard(s): binary sink");
    }
}

/// An application of two pipelines, one of which shares its source with a third branch.
#[test]
fn two_pipelines_run_both() {
    for shards in [1, 2, 4] {
        let a = InProcessSource::new(|n: &u64| n);
        let b = InProcessSource::new(|s: &String| s.as_str());
        let (sums, mut sum_out) = PolledSink::new(1 << 12);
        let (lens, mut len_out) = PolledSink::new(1 << 12);
        let (upper, mut upper_out) = PolledSink::new(1 << 12);
        let numbers = Pipeline::source("Numbers", a.clone());
        let words = Pipeline::source("Words", b.clone());
        let app = Application::new(
            "two pipelines",
            numbers
                .to_state(|n: u64, sum: &mut u64| {
                    *sum += n;
                    Some(*sum)
                })
                .to_sink("Sums", sums),
        )
        .pipeline(
            words
                .clone()
                .to(|w: String| Some(w.len()))
                .to_sink("Lengths", lens),
        )
        .pipeline(
            words
                .to(|w: String| Some(w.to_uppercase()))
                .to_sink("Upper", upper),
        );
        assert_eq!(app.source_names(), ["Numbers", "Words"]);
        let engine = bettong::Engine::start(app, config(shards)).unwrap();
        let (mut pa, mut pb) = (a.pusher().unwrap(), b.pusher().unwrap());
        for n in 1..=100u64 {
            pa.push(n).unwrap();
        }
        for w in ["alpha", "be", "gamma"] {
            pb.push(w.to_string()).unwrap();
        }
        drop((pa, pb));
        wait_finished(&engine, 100 + 3);
        engine.stop().unwrap();
        let mut got_sums = Vec::new();
        sum_out.poll(|s| got_sums.push(s));
        // One state entity (no key_by): 100 running sums, each above the last, ending at the
        // total (pushes reach it through different shards, so their order is not fixed).
        got_sums.sort_unstable();
        assert_eq!(got_sums.len(), 100);
        assert!(got_sums.windows(2).all(|w| w[0] < w[1]), "{got_sums:?}");
        assert_eq!(got_sums.last(), Some(&5050));
        let mut got_lens = Vec::new();
        len_out.poll(|l| got_lens.push(l));
        got_lens.sort_unstable();
        assert_eq!(got_lens, [2, 5, 5]);
        let mut got_upper = Vec::new();
        upper_out.poll(|u| got_upper.push(u));
        got_upper.sort();
        assert_eq!(got_upper, ["ALPHA", "BE", "GAMMA"]);
    }
}

/// Names: unnamed computations get unique defaults (two merged branches do not collide), the
/// plan lists operators with their edges, and two operators with one name are refused.
#[test]
fn plan_names_and_duplicates() {
    let src = || Pipeline::source("N", InProcessSource::new(|n: &u64| n));
    let app = Application::new(
        "defaults",
        src()
            .clone()
            .to(|n: u64| Some(n))
            .merge(src().to(|n: u64| Some(n)))
            .to_sink("Out", CallbackSink::new(|_: &u64| {})),
    );
    let err = app.describe().unwrap_err();
    assert!(
        matches!(&err, Error::Plan(m) if m.contains("`N`")),
        "two sources named N: {err}"
    );

    let n = Pipeline::source("N", InProcessSource::new(|n: &u64| n));
    let app = Application::new(
        "defaults",
        n.clone()
            .to(|n: u64| Some(n))
            .merge(n.to(|n: u64| Some(n + 1)))
            .key_by(|n: &u64| n)
            .to_state(|n: u64, _: &mut ()| Some(n))
            .to_sink("Out", CallbackSink::new(|_: &u64| {})),
    );
    assert_eq!(
        app.describe().unwrap(),
        "0 N (source) -> 1, 2\n\
         1 to #1 (to) -> 3\n\
         2 to #2 (to) -> 3\n\
         3 merge #3 (merge) -> 4~\n\
         4 to_state #4 (to_state) -> 5\n\
         5 Out (sink)\n"
    );

    let dup = Application::new(
        "dup",
        Pipeline::source("N", InProcessSource::new(|n: &u64| n))
            .to(|n: u64| Some(n))
            .name("step")
            .to(|n: u64| Some(n))
            .name("step")
            .to_sink("Out", CallbackSink::new(|_: &u64| {})),
    );
    match bettong::Engine::start(dup, config(1)) {
        Err(Error::Plan(m)) => assert!(m.contains("`step`"), "{m}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("two operators named step were accepted"),
    }
}

/// A source implemented outside the engine (`examples/file_source.rs`) feeds word count.
#[test]
fn user_file_source_runs() {
    let dir = std::env::temp_dir().join(format!("bettong-plan-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lines.frames");
    let lines: Vec<String> = (0..300)
        .map(|i| format!("the quick {} fox jumps over {} dogs", i % 7, i % 3))
        .collect();
    let mut bytes = Vec::new();
    for l in &lines {
        bettong::codec::write_frame(&mut bytes, l.as_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
    let mut model: HashMap<String, u64> = HashMap::new();
    let mut words = 0;
    for l in &lines {
        for w in bettong_apps::word_count::split(l) {
            *model.entry(w).or_default() += 1;
            words += 1;
        }
    }
    for shards in [1, 2, 3] {
        let (app, counts) = file_source::word_count(path.clone());
        let engine = bettong::Engine::start(app, config(shards)).unwrap();
        wait_finished(&engine, words);
        let summary = engine.stop().unwrap();
        assert_eq!(summary.messages_in, lines.len() as u64);
        let mut finals: HashMap<String, u64> = HashMap::new();
        let mut seen = 0;
        for (w, n) in counts.lock().unwrap().iter() {
            seen += 1;
            let e = finals.entry(w.clone()).or_default();
            *e = (*e).max(*n);
        }
        assert_eq!(seen, words, "one output per word");
        assert_eq!(finals, model, "{shards} shard(s)");
    }
    // A missing file is refused at start, naming the file.
    let (app, _) = file_source::word_count(dir.join("missing.frames"));
    match bettong::Engine::start(app, config(1)) {
        Err(e @ Error::Connector { .. }) => assert!(e.to_string().contains("missing.frames")),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a missing file was accepted"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A user source that emits a watermark per shard, and a user sink that records the control
/// events it sees: behind the exchange, each sink instance sees the minimum watermark over
/// all shards' inputs, never going back, and end of stream exactly once.
#[test]
fn control_events_are_aligned_across_shards() {
    struct Ticks;
    impl Source for Ticks {
        type Out = u64;
        type Part = usize;
        fn open(&self, _: &str, _: Option<&str>, shards: usize) -> Result<Opened<usize>, Error> {
            Ok(Opened::per_shard(shards, |s| s))
        }
        // Not `async fn`: that would borrow `self`, and a source's future must be 'static.
        #[allow(clippy::manual_async_fn)]
        fn run(&self, shard: usize, ctx: SourceContext<u64>) -> impl Future<Output = ()> + 'static {
            async move {
                let base = 1_000 * (shard as u64 + 1);
                for i in 0..100 {
                    ctx.emit(
                        base + i,
                        Stamp {
                            ingest_ns: bettong::now_ns(),
                            event_ns: base + i,
                        },
                    );
                }
                ctx.watermark(base);
                ctx.watermark(base / 2); // an older watermark changes nothing
                ctx.flush();
                ctx.stopping().await;
            }
        }
    }
    type Seen = Arc<Mutex<Vec<(usize, Control)>>>;
    struct Recorder(Seen);
    struct RecorderShard(Seen, usize);
    impl SinkInput<u64> for RecorderShard {
        fn write(&self, _: u64, _: Stamp) {}
        fn control(&self, event: Control) {
            self.0.lock().unwrap().push((self.1, event));
        }
    }
    impl Sink<u64> for Recorder {
        type Part = ();
        fn open(&self, _: &str, _: Option<&str>, shards: usize) -> Result<Opened<()>, Error> {
            Ok(Opened::per_shard(shards, |_| ()))
        }
        fn start(&self, _: (), ctx: SinkContext) -> SinkShard<u64> {
            SinkShard::new(RecorderShard(self.0.clone(), ctx.shard()))
        }
    }
    for shards in 1..=4 {
        let seen: Seen = Arc::default();
        let app = Application::new(
            "ticks",
            Pipeline::source("Ticks", Ticks)
                .key_by(|n: &u64| n)
                .to_state(|n: u64, _: &mut ()| Some(n))
                .to_sink("Recorder", Recorder(seen.clone())),
        );
        let engine = bettong::Engine::start(app, config(shards)).unwrap();
        wait_finished(&engine, 100 * shards as u64);
        let summary = engine.stop().unwrap();
        assert_eq!(summary.messages_out, 100 * shards as u64);
        let seen = seen.lock().unwrap();
        for shard in 0..shards {
            let events: Vec<Control> = seen
                .iter()
                .filter(|(s, _)| *s == shard)
                .map(|(_, e)| *e)
                .collect();
            let marks: Vec<u64> = events
                .iter()
                .filter_map(|e| match e {
                    Control::Watermark(t) => Some(*t),
                    _ => None,
                })
                .collect();
            assert!(
                marks.windows(2).all(|w| w[0] < w[1]),
                "shard {shard}: {marks:?}"
            );
            // Every shard's state hears every shard's source: the watermark reaches 1000 (the
            // smallest source's) while all are open; as sources end, the rest pass.
            assert_eq!(
                marks.first(),
                Some(&1_000),
                "shard {shard} of {shards}: {events:?}"
            );
            assert_eq!(
                events.iter().filter(|e| **e == Control::End).count(),
                1,
                "shard {shard}: {events:?}"
            );
            assert_eq!(events.last(), Some(&Control::End));
        }
    }
}

/// Counts a window's messages: one output per key and window, `(key, index, count)`.
struct CountPerKey;

impl bettong::window::Aggregation<(String, u64)> for CountPerKey {
    type Key = str;
    type Acc = u64;
    type Out = (String, u64, u64);
    fn initial_accumulator(&self) -> u64 {
        0
    }
    fn update(&self, _: &(String, u64), acc: &mut u64) {
        *acc += 1
    }
    fn combine(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn output(&self, key: &str, _: &bettong::window::Window, acc: &u64) -> Option<Self::Out> {
        let index = key.trim_start_matches('k').parse().ok()?;
        Some((key.to_string(), index, *acc))
    }
}

/// Windows that fire because the input went quiet (no watermark, no data, the connection
/// still open) reach a keyed step behind them on whichever shard owns their new key, at
/// once: the window's own task hands what it fired to the other shards, on 2 to 4 shards.
#[test]
fn windows_fired_on_quiet_input_cross_to_other_shards() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    for shards in 2..=4 {
        // "KEY MS": the key and the event time in ms since the epoch.
        let decode = |p: &[u8]| -> Result<(String, u64), bettong::DecodeError> {
            let text = std::str::from_utf8(p).map_err(|_| bettong::DecodeError::new("utf-8"))?;
            let (key, ms) = text
                .split_once(' ')
                .ok_or(bettong::DecodeError::new("KEY MS"))?;
            let ms = ms.parse().map_err(|_| bettong::DecodeError::new("MS"))?;
            Ok((key.to_string(), ms))
        };
        let source = bettong::TcpSource::new(decode)
            .with_event_time(|e: &(String, u64)| e.1 * 1_000_000)
            .with_idle_timeout(Duration::from_millis(50));
        let (sink, mut outputs) = PolledSink::new(1 << 10);
        let pipeline = Pipeline::source("Events", source)
            .key_by(|e: &(String, u64)| e.0.as_str())
            .range_windows(Duration::from_millis(100))
            .over(CountPerKey)
            // Routed by the key's index, a `u64`: another shard than the window's for most.
            .key_by(|o: &(String, u64, u64)| &o.1)
            .to_state(|o: (String, u64, u64), windows: &mut u64| {
                *windows += 1;
                Some((o.0, o.2, *windows))
            })
            .name("windows per key")
            .to_sink("Counts", sink);
        let config = EngineConfig {
            inputs: vec![(None, "127.0.0.1:0".parse().unwrap())],
            ..config(shards)
        };
        let engine = bettong::Engine::start(Application::new("quiet", pipeline), config).unwrap();
        let addr = engine.sources()[0].1;
        let t0 = 1_700_000_000_000u64;
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        for k in 0..40u64 {
            for i in 0..=k % 3 {
                bytes.extend(common::frame(format!("k{k} {}", t0 + i).as_bytes()));
            }
            want.push((format!("k{k}"), k % 3 + 1, 1));
        }
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.write_all(&bytes).unwrap();
        // The connection stays open and silent: only the quiet-input rule fires the windows,
        // from the window operator's own task.
        let mut got = Vec::new();
        let until = Instant::now() + common::DEADLINE;
        while got.len() < want.len() {
            assert!(
                Instant::now() < until,
                "{shards} shards: {} of {} outputs: {got:?}",
                got.len(),
                want.len()
            );
            outputs.poll(|o| got.push(o));
            std::thread::sleep(Duration::from_millis(1));
        }
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{shards} shards");
        drop(conn);
        engine.stop().unwrap();
    }
}

/// A shard whose source has ended (its sink has had end of stream, so no barrier will ever
/// reach it) does not hold back the checkpoints of the shards still running: they commit,
/// on 2 to 4 unpinned shards.
#[test]
fn a_shard_whose_input_ended_does_not_block_checkpoints() {
    /// Emits on shard 0 and stays open; ends at once everywhere else.
    struct OnlyShardZero;
    impl Source for OnlyShardZero {
        type Out = u64;
        type Part = usize;
        fn open(&self, _: &str, _: Option<&str>, shards: usize) -> Result<Opened<usize>, Error> {
            Ok(Opened::per_shard(shards, |s| s))
        }
        #[allow(clippy::manual_async_fn)]
        fn run(&self, shard: usize, ctx: SourceContext<u64>) -> impl Future<Output = ()> + 'static {
            async move {
                if shard != 0 {
                    return;
                }
                for i in 0..100 {
                    ctx.emit(i, Stamp::at(bettong::now_ns()));
                }
                ctx.flush();
                ctx.stopping().await;
            }
        }
    }
    for shards in 2..=4 {
        let dir = std::env::temp_dir().join(format!(
            "bettong-ended-shard-{}-{shards}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let count = Arc::new(Mutex::new(0u64));
        let seen = count.clone();
        let app = Application::new(
            "ended shard",
            Pipeline::source("Uneven", OnlyShardZero).to_sink(
                "Out",
                CallbackSink::new(move |_: &u64| *seen.lock().unwrap() += 1),
            ),
        );
        let config = EngineConfig {
            resilience_dir: Some(dir.clone()),
            checkpoint_interval: std::time::Duration::from_millis(20),
            ..config(shards)
        };
        let engine = bettong::Engine::start(app, config).unwrap();
        let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
        // Without the fix no checkpoint ever commits (each is given up after 30 s).
        common::wait_until("a committed checkpoint", || {
            !store.committed().unwrap().is_empty()
        });
        engine.stop().unwrap();
        assert_eq!(*count.lock().unwrap(), 100, "{shards} shards");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A merge aligns barriers over its inputs and holds the data of an input that has passed
/// its barrier until the others have too: what a source emits after a barrier reaches the
/// sink after that barrier, never before, even when the other input's barrier is late
/// (it waits for every shard at an exchange). 2 to 4 unpinned shards.
#[test]
fn a_merge_holds_data_behind_its_barrier_until_every_input_has_it() {
    /// Emits 0, 1, 2, ... in bursts on every shard; at each barrier, notes how many it had
    /// emitted on its shard.
    struct Counter(Arc<Mutex<HashMap<(usize, u64), u64>>>);
    impl Source for Counter {
        type Out = u64;
        type Part = usize;
        fn open(&self, _: &str, _: Option<&str>, shards: usize) -> Result<Opened<usize>, Error> {
            Ok(Opened::per_shard(shards, |s| s))
        }
        #[allow(clippy::manual_async_fn)]
        fn run(&self, shard: usize, ctx: SourceContext<u64>) -> impl Future<Output = ()> + 'static {
            let at_barrier = self.0.clone();
            async move {
                let emitted = std::rc::Rc::new(std::cell::Cell::new(0u64));
                let counted = emitted.clone();
                ctx.track_streams(move |id| {
                    at_barrier
                        .lock()
                        .unwrap()
                        .insert((shard, id), counted.get());
                    Vec::new()
                });
                while !ctx.is_stopping() {
                    for _ in 0..50 {
                        ctx.emit(emitted.get(), Stamp::at(bettong::now_ns()));
                        emitted.set(emitted.get() + 1);
                    }
                    ctx.flush();
                    glommio::timer::sleep(std::time::Duration::from_micros(200)).await;
                }
            }
        }
    }
    /// Emits nothing and stays open: its barriers go through the exchange only.
    struct Quiet;
    impl Source for Quiet {
        type Out = u64;
        type Part = ();
        fn open(&self, _: &str, _: Option<&str>, shards: usize) -> Result<Opened<()>, Error> {
            Ok(Opened::per_shard(shards, |_| ()))
        }
        #[allow(clippy::manual_async_fn)]
        fn run(&self, _: (), ctx: SourceContext<u64>) -> impl Future<Output = ()> + 'static {
            async move { ctx.stopping().await }
        }
    }
    type Log = Arc<Mutex<Vec<(usize, Result<u64, u64>)>>>;
    /// Logs, per shard, each value (`Ok`) and each barrier (`Err(id)`) in the order seen.
    struct Recorder(Log);
    struct RecorderShard(Log, usize);
    impl SinkInput<u64> for RecorderShard {
        fn write(&self, v: u64, _: Stamp) {
            self.0.lock().unwrap().push((self.1, Ok(v)));
        }
        fn control(&self, event: Control) {
            if let Control::Barrier(id) = event {
                self.0.lock().unwrap().push((self.1, Err(id)));
            }
        }
    }
    impl Sink<u64> for Recorder {
        type Part = usize;
        fn open(&self, _: &str, _: Option<&str>, shards: usize) -> Result<Opened<usize>, Error> {
            Ok(Opened::per_shard(shards, |s| s))
        }
        fn start(&self, shard: usize, _: SinkContext) -> SinkShard<u64> {
            SinkShard::new(RecorderShard(self.0.clone(), shard))
        }
    }
    // Nested: the counter's merge feeds a second merge with another keyed quiet input, so
    // data is held at either.
    for (shards, nested) in [(2, false), (3, false), (4, false), (2, true), (3, true)] {
        let dir = std::env::temp_dir().join(format!(
            "bettong-merge-hold-{}-{shards}-{nested}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let at_barrier = Arc::new(Mutex::new(HashMap::new()));
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let keyed = |name: &str| {
            Pipeline::source(name, Quiet)
                .key_by(|v: &u64| v)
                .to_state(|v: u64, _: &mut u64| Some(v))
                .name(&format!("{name} keyed"))
        };
        let mut merged =
            keyed("Quiet").merge(Pipeline::source("Counter", Counter(at_barrier.clone())));
        if nested {
            merged = merged.merge(keyed("Quiet 2"));
        }
        let app = Application::new("merge hold", merged.to_sink("Out", Recorder(log.clone())));
        let config = EngineConfig {
            resilience_dir: Some(dir.clone()),
            checkpoint_interval: std::time::Duration::from_millis(10),
            ..config(shards)
        };
        let engine = bettong::Engine::start(app, config).unwrap();
        let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
        // Older checkpoints are pruned as new ones commit: wait on the highest id.
        common::wait_until("checkpoint 5 committed", || {
            store.committed().unwrap().last().is_some_and(|&id| id >= 5)
        });
        engine.stop().unwrap();
        let at_barrier = at_barrier.lock().unwrap();
        let log = log.lock().unwrap();
        let mut barriers = 0;
        for shard in 0..shards {
            // Values are emitted in order per shard and the sink shard is the source's (no
            // exchange on the way): before barrier `id`, exactly the values emitted before
            // the source injected it.
            let mut seen = 0;
            for (_, e) in log.iter().filter(|(s, _)| *s == shard) {
                match e {
                    Ok(_) => seen += 1,
                    Err(id) => {
                        barriers += 1;
                        assert_eq!(
                            Some(&seen),
                            at_barrier.get(&(shard, *id)),
                            "{shards} shards, nested {nested}, shard {shard}, barrier {id}"
                        );
                    }
                }
            }
        }
        assert!(barriers >= 5 * shards, "{barriers} barriers seen");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
