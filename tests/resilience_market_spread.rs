//! Crash resilience of Market Spread through the real binary: `bettong market-spread` reads
//! Orders and NBBO updates from two replayable file sources and writes OrderResults to file
//! sinks, with barrier checkpoints every 20 ms; it is killed with SIGKILL at random moments at
//! least 10 times and restarted each time with the same command line, and the last run reads
//! both files to their end and stops by itself. The OrderResults in the sink files must then be
//! exactly those of an uninterrupted run, as a multiset, each order id exactly once — on 1
//! shard, on 2 shards, and from 2 pinned shards onto 3 unpinned ones.
//!
//! **Why the expected output is deterministic.** The two file sources are read concurrently,
//! so which NBBO update an order meets first depends on timing, and differs again after every
//! restart. An order's outcome cannot be made independent of that by choosing the NBBO well: a
//! symbol without an NBBO rejects with bid = offer = 0 (`SymbolData::default()`), while after
//! any NBBO its state holds that NBBO's bid and offer and rejects only if the spread is wide,
//! and a rejecting spread with both prices 0 does not exist (`0 - 0 >= 0.05` is false and
//! `0 / 0` is NaN). So the data keep the two kinds of symbols apart:
//!
//! - *quiet* symbols get orders and never an NBBO: their state stays the default whatever the
//!   interleaving, so every order on them produces exactly one OrderResult with bid 0 and offer
//!   0, and the expected output is known before the run (the test checks the uninterrupted run
//!   against that model too);
//! - *quoted* symbols get NBBO updates (every update of a symbol identical; half of them narrow,
//!   half wide) and never an order: their state entities are checkpointed and restored with the
//!   rest and the NBBO file is replayed from its checkpointed offset, so both sources and the
//!   state of both kinds of keys take part in the checkpoints. Were a quoted symbol's state
//!   ever restored under a quiet symbol's key, the orders on it would come out with that NBBO's
//!   prices or not at all.
//!
//! What fails these tests (each checked by breaking it in the engine): an Orders offset that is
//! not restored (orders replayed from the start: order ids repeated), a sink file not cut back
//! to exactly its checkpointed length (repeated ids, or a torn frame). Neither file source's
//! barrier needs aligning with the other's: both files are read by shard 0, which injects a
//! checkpoint's barrier into both between the same two messages.
//!
//! Shard-count changes in both directions are tested (from 1 shard to 2, from 3 to 2): the
//! sink files are cut back by file, not by shard, and a source that has ended still records
//! where it ended ([`an_ended_source_is_not_replayed_after_a_restart`]); both were engine bugs
//! these tests found.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bettong_apps::market_spread::OrderResult;
use common::capture::{write_data, Data};
use common::{payloads, result_key, ResultKey};

/// Orders in the capture.
const ORDERS: u32 = 200_000;
/// NBBO updates in the capture: fewer than orders, so the Nbbo file usually ends first.
const NBBO_UPDATES: u32 = 20_000;
/// Kills that must hit a running engine in each test.
const KILLS: usize = 10;

/// Where the shards of a run go: how many, and whether they are pinned to cores 0..n.
#[derive(Clone, Copy)]
struct Shards {
    count: usize,
    pin: bool,
}

/// `bettong market-spread` from the two capture files to `--out file:OUT`, checkpointing into
/// `chk` every 20 ms when given.
fn market_spread(data: &Data, out: &Path, chk: Option<&Path>, shards: Shards) -> Command {
    let cores = (0..shards.count)
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bettong"));
    cmd.args([
        "market-spread",
        "--in",
        &format!(
            "Orders@file:{},Nbbo@file:{}",
            data.orders.display(),
            data.nbbo.display()
        ),
        "--out",
        &format!("file:{}", out.display()),
        "--cores",
        &cores,
        "--metrics-interval",
        "0",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if !shards.pin {
        cmd.arg("--no-pin");
    }
    if let Some(chk) = chk {
        cmd.args([
            "--resilience-dir",
            &chk.display().to_string(),
            "--time-between-checkpoints",
            "20ms",
        ]);
    }
    cmd
}

/// Every OrderResult in the sink files of `--out file:OUT` for any shard count used (`OUT`,
/// `OUT.0`, `OUT.1`, …), without timestamps, sorted. A torn frame fails the test.
fn results(out: &Path) -> Vec<ResultKey> {
    let mut keys = Vec::new();
    for f in sink_files(out) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        for p in payloads(&bytes) {
            let r = OrderResult::decode(&p)
                .unwrap_or_else(|e| panic!("{}: not an OrderResult: {e}", f.display()));
            keys.push(result_key(&r));
        }
    }
    keys.sort_unstable();
    keys
}

/// The sink files of `--out file:OUT` for any shard count used: `OUT`, `OUT.0`, `OUT.1`, …
fn sink_files(out: &Path) -> Vec<PathBuf> {
    let mut files = vec![out.to_path_buf()];
    files.extend((0..8).map(|s| PathBuf::from(format!("{}.{s}", out.display()))));
    files
}

/// Whole frames in the sink files of `OUT` (as `results` reads them), ignoring a torn tail.
fn whole_frames(out: &Path) -> usize {
    let mut n = 0;
    for f in sink_files(out) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        let mut rest = &bytes[..];
        while let Some(len) = rest
            .get(..4)
            .map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]))
        {
            let Some(next) = rest.get(4 + len as usize..) else {
                break;
            };
            n += 1;
            rest = next;
        }
    }
    n
}

/// Fails with a count of what differs: order ids missing, repeated, or with other fields.
fn assert_same_results(got: &[ResultKey], want: &[ResultKey], what: &str) {
    if got == want {
        return;
    }
    let mut ids: HashMap<[u8; 6], i64> = HashMap::new();
    for k in want {
        *ids.entry(k.2).or_default() += 1;
    }
    for k in got {
        *ids.entry(k.2).or_default() -= 1;
    }
    let missing = ids.values().filter(|&&n| n > 0).count();
    let repeated = ids.values().filter(|&&n| n < 0).count();
    let mut want_set = want.to_vec();
    want_set.dedup();
    let changed = got
        .iter()
        .filter(|k| want_set.binary_search(k).is_err())
        .count();
    panic!(
        "{what}: {} results for {} orders: {missing} order ids missing, {repeated} repeated, \
         {changed} results not as expected",
        got.len(),
        want.len()
    );
}

/// Waits for `child` to exit by itself; returns whether it succeeded and its stderr.
fn wait_to_end(mut child: Child) -> (bool, String) {
    let until = Instant::now() + common::DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "the run did not finish");
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.success(), stderr)
}

/// Runs Market Spread killed [`KILLS`] times while it runs (the first `switch_after` kills on
/// `first`, the rest on `later`) and then to the end on `later`; checks the output against an
/// uninterrupted run and returns how many runs restored a checkpoint.
fn crash_run(name: &str, first: Shards, later: Shards, switch_after: usize) -> usize {
    let dir = std::env::temp_dir().join(format!(
        "bettong-resilience-ms-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = write_data(&dir, ORDERS, NBBO_UPDATES);

    // The reference: one uninterrupted run without checkpoints, which must also match the
    // model (the data are deterministic by construction, not by luck of the interleaving).
    let reference = dir.join("reference.bin");
    let started = Instant::now();
    let (ok, stderr) = wait_to_end(
        common::dies_with_test(&mut market_spread(&data, &reference, None, first))
            .spawn()
            .unwrap(),
    );
    assert!(ok, "{name}: the uninterrupted run failed: {stderr}");
    let reference_time = started.elapsed();
    let want = results(&reference);
    assert_same_results(&want, &data.model, &format!("{name}: uninterrupted run"));

    let out = dir.join("results.bin");
    let chk = dir.join("checkpoints");
    let mut rng = common::Lcg(0x5eed_0005 ^ first.count as u64 ^ (later.count as u64) << 8);
    // Kill moments scale with how long a whole run takes here (every restart resumes from its
    // checkpoint, so the work left shrinks with each kill): ten kills at up to a sixth of a
    // run each mostly land while the run is still going, on a fast machine or a loaded one.
    let span = (reference_time.as_millis() as u64 / 6).max(10);
    let (mut kills, mut restored, mut attempts) = (0, 0, 0);
    while kills < KILLS {
        attempts += 1;
        assert!(
            attempts <= 3 * KILLS,
            "{name}: only {kills} of {attempts} runs were still running when killed \
             (the capture is too short for this machine)"
        );
        let shards = if kills < switch_after { first } else { later };
        let before = common::newest_checkpoint(&chk);
        let mut child = common::dies_with_test(&mut market_spread(&data, &out, Some(&chk), shards))
            .spawn()
            .unwrap();
        if attempts % 2 == 0 {
            // Just after a checkpoint commits, or while the next one is in flight: wait for
            // the manifest (the machine may be slow), then a random moment more.
            let until = Instant::now() + common::DEADLINE;
            while common::newest_checkpoint(&chk) <= before && child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < until, "{name}: no checkpoint completed");
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(rng.below(span / 2)));
        } else {
            // Anywhere: before the first checkpoint, while restoring, during one, after several.
            std::thread::sleep(Duration::from_millis(5 + rng.below(span)));
        }
        let running = child.try_wait().unwrap().is_none();
        let _ = child.kill(); // SIGKILL
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("panicked"),
            "{name}: run {attempts}: {stderr}"
        );
        kills += usize::from(running);
        restored += usize::from(stderr.contains("restored checkpoint"));
    }

    // Only for the report: a SIGKILL can land in the middle of a write, so a file may end in
    // a torn frame here (the next start cuts it back to its checkpointed length).
    let after_kills = whole_frames(&out);
    // The last run: both files to their end.
    let (ok, stderr) = wait_to_end(
        common::dies_with_test(&mut market_spread(&data, &out, Some(&chk), later))
            .spawn()
            .unwrap(),
    );
    assert!(ok, "{name}: the last run failed: {stderr}");
    restored += usize::from(stderr.contains("restored checkpoint"));
    assert_same_results(&results(&out), &want, name);
    eprintln!(
        "{name}: {} results; uninterrupted run {reference_time:?}; {kills} kills in {attempts} \
         runs, {after_kills} results by then; {restored} runs restored a checkpoint",
        want.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
    restored
}

const ONE: Shards = Shards {
    count: 1,
    pin: true,
};
const TWO: Shards = Shards {
    count: 2,
    pin: true,
};
const THREE_UNPINNED: Shards = Shards {
    count: 3,
    pin: false,
};

#[test]
fn killed_and_restarted_market_spread_is_exactly_once_on_one_shard() {
    let restored = crash_run("one", ONE, ONE, KILLS);
    assert!(restored > 0, "no run restored a checkpoint");
}

#[test]
fn killed_and_restarted_market_spread_is_exactly_once_on_two_shards() {
    let restored = crash_run("two", TWO, TWO, KILLS);
    assert!(restored > 0, "no run restored a checkpoint");
}

/// Half the kills on 2 pinned shards, the rest and the last run on 3 unpinned ones (more
/// shards than this machine's cores): key groups and sink files move to the new shard count.
#[test]
fn market_spread_restored_onto_three_unpinned_shards() {
    let restored = crash_run("moved", TWO, THREE_UNPINNED, KILLS / 2);
    assert!(restored > 0, "no run restored a checkpoint");
}

/// A source that has ended still records its offset in later checkpoints (it used not to, and
/// a restart from such a checkpoint replayed its whole file). Here the Orders file ends long
/// before the NBBO file; the engine is killed after a checkpoint taken once every order's
/// result is in the sink, and the restart must not write any result a second time.
#[test]
fn an_ended_source_is_not_replayed_after_a_restart() {
    let dir = std::env::temp_dir().join(format!(
        "bettong-resilience-ms-{}-ended",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The NBBO file must outlast two checkpoints (20 ms apart) after the Orders file ends. A
    // release build read 400 000 updates before that on every run (at b65449f too), so it gets
    // ten times as many.
    let nbbo = if cfg!(debug_assertions) {
        400_000
    } else {
        4_000_000
    };
    let data = write_data(&dir, 5_000, nbbo);
    let out = dir.join("results.bin");
    let chk = dir.join("checkpoints");
    let mut child = common::dies_with_test(&mut market_spread(&data, &out, Some(&chk), ONE))
        .spawn()
        .unwrap();
    // Every order's result is in the sink file: the Orders source has ended.
    let full = data.model.len() as u64 * bettong_apps::market_spread::ORDER_RESULT_FRAME_LEN as u64;
    common::wait_until("every result in the sink", || {
        std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) >= full
    });
    // A checkpoint started after that has committed.
    let seen = common::newest_checkpoint(&chk);
    common::wait_until("a checkpoint after the Orders file ended", || {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the NBBO file is too short: the run ended before the kill"
        );
        common::newest_checkpoint(&chk) >= seen + 2
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "the NBBO file is too short: the run ended before the kill"
    );
    let _ = child.kill();
    let _ = child.wait();
    let (ok, stderr) = wait_to_end(
        common::dies_with_test(&mut market_spread(&data, &out, Some(&chk), ONE))
            .spawn()
            .unwrap(),
    );
    assert!(ok, "{stderr}");
    assert_same_results(&results(&out), &data.model, "ended");
    let _ = std::fs::remove_dir_all(&dir);
}

/// From 1 shard to 2: one shard writes `OUT`, two write `OUT.0` and `OUT.1`. Sink lengths are
/// restored by file, so `OUT` is cut back to its committed length (and kept, frozen, in every
/// later checkpoint) and the new files start empty. (Restored by shard index, `OUT`'s length
/// was applied to `OUT.0`, zero-padded, and `OUT` kept what followed the checkpoint.)
#[test]
fn restored_from_one_shard_onto_two() {
    crash_run("one-to-two", ONE, TWO, KILLS / 2);
}

/// From 3 shards to 2: no shard writes `OUT.2` any more, so shard 0 cuts it back to its
/// committed length at the restart (what shard 2 wrote after the checkpoint is made again into
/// `OUT.0` and `OUT.1`) and keeps its length in every later checkpoint.
#[test]
fn restored_from_three_shards_onto_two() {
    let two_unpinned = Shards {
        count: 2,
        pin: false,
    };
    crash_run("three-to-two", THREE_UNPINNED, two_unpinned, KILLS / 2);
}
