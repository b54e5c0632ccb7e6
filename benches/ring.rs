//! Cross-core hand-off: bettong's shard-to-shard ring against rtrb (a plain SPSC ring) and
//! glommio's `shared_channel` (the channel glommio offers between executors).
//!
//! Each measurement moves `iters` u64 items from a producer thread to a consumer thread pinned
//! to different cores and reports the time from the producer's start to the consumer's receipt
//! of the last item, so criterion's "time per iteration" is the cost per item. Threads (and
//! glommio executors) are started outside the timed region for every sample.
//!
//! The round-trip group bounces one item back and forth between two spinning threads: its time
//! per iteration is one full round trip (two hand-offs, each seen by a spinning reader).
//!
//! The same-thread group runs the ring operations on one thread, as a noise-free measure of
//! their instruction cost (fences included) with no cache line moving between cores.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use bettong::runtime::ring;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};

/// Ring capacity used by every channel under test.
const CAP: usize = 1024;
/// Items per publish in the batched bettong variant.
const BATCH: u64 = 64;

/// The two CPUs the producer and the consumer run on, or `None` with fewer than two (then the
/// threads are left unpinned and the spin loops yield instead of spinning).
fn cpu_pair() -> Option<(usize, usize)> {
    let ids = core_affinity::get_core_ids()?;
    if ids.len() < 2 {
        return None;
    }
    Some((ids[0].id, ids[1].id))
}

fn pin(cpu: Option<usize>) {
    if let Some(id) = cpu {
        // Pinning may be refused (e.g. a restricted cpuset); the bench still runs unpinned.
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id });
    }
}

/// Waits a moment in a spin loop: a pause on a machine with a core per side, a yield when both
/// sides share one core (spinning there would only burn the other side's time slice).
#[inline(always)]
fn relax(shared_core: bool) {
    if shared_core {
        thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Runs `producer` and `consumer` on their own pinned threads, released together by a barrier,
/// and returns the time from the producer's start to the consumer's finish.
fn handoff<P, C>(producer: P, consumer: C) -> Duration
where
    P: FnOnce(bool) + Send + 'static,
    C: FnOnce(bool) + Send + 'static,
{
    let cpus = cpu_pair();
    let shared_core = cpus.is_none();
    let barrier = Arc::new(Barrier::new(2));
    let b = barrier.clone();
    let cons = thread::spawn(move || {
        pin(cpus.map(|c| c.1));
        b.wait();
        consumer(shared_core);
        Instant::now()
    });
    let prod = thread::spawn(move || {
        pin(cpus.map(|c| c.0));
        barrier.wait();
        let start = Instant::now();
        producer(shared_core);
        start
    });
    let start = prod.join().expect("producer thread panicked");
    let end = cons.join().expect("consumer thread panicked");
    end.saturating_duration_since(start)
}

/// Runs `pinger` (which times itself) and `echoer` on their own pinned threads.
fn round_trip<P, E>(pinger: P, echoer: E) -> Duration
where
    P: FnOnce(bool) -> Duration + Send + 'static,
    E: FnOnce(bool) + Send + 'static,
{
    let cpus = cpu_pair();
    let shared_core = cpus.is_none();
    let barrier = Arc::new(Barrier::new(2));
    let b = barrier.clone();
    let echo = thread::spawn(move || {
        pin(cpus.map(|c| c.1));
        b.wait();
        echoer(shared_core);
    });
    let ping = thread::spawn(move || {
        pin(cpus.map(|c| c.0));
        barrier.wait();
        pinger(shared_core)
    });
    let elapsed = ping.join().expect("pinger thread panicked");
    echo.join().expect("echo thread panicked");
    elapsed
}

// ---- one-way hand-off -------------------------------------------------------------------

/// bettong: push one item and publish it (one release store + the parked-check per item).
fn bettong_each(iters: u64) -> Duration {
    let (mut tx, mut rx) = ring::channel::<u64>(CAP);
    handoff(
        move |shared| {
            for i in 0..iters {
                let mut v = i;
                loop {
                    match tx.push(v) {
                        Ok(()) => break,
                        Err(back) => {
                            v = back;
                            relax(shared);
                        }
                    }
                }
                tx.publish();
            }
        },
        move |shared| {
            let mut got = 0u64;
            let mut sum = 0u64;
            while got < iters {
                let n = rx.drain(|v| sum = sum.wrapping_add(v));
                if n == 0 {
                    relax(shared);
                }
                got += n as u64;
            }
            black_box(sum);
        },
    )
}

/// bettong: push batches of 64, publish once per batch (how a shard forwards a read batch).
fn bettong_batched(iters: u64) -> Duration {
    let (mut tx, mut rx) = ring::channel::<u64>(CAP);
    handoff(
        move |shared| {
            let mut i = 0;
            while i < iters {
                let end = (i + BATCH).min(iters);
                while i < end {
                    // A full ring publishes what is pending itself, so the consumer can drain.
                    match tx.push(i) {
                        Ok(()) => i += 1,
                        Err(_) => relax(shared),
                    }
                }
                tx.publish();
            }
        },
        move |shared| {
            let mut got = 0u64;
            let mut sum = 0u64;
            while got < iters {
                let n = rx.drain(|v| sum = sum.wrapping_add(v));
                if n == 0 {
                    relax(shared);
                }
                got += n as u64;
            }
            black_box(sum);
        },
    )
}

/// rtrb: push / pop one item at a time.
fn rtrb_each(iters: u64) -> Duration {
    let (mut tx, mut rx) = rtrb::RingBuffer::<u64>::new(CAP);
    handoff(
        move |shared| {
            for i in 0..iters {
                while tx.push(i).is_err() {
                    relax(shared);
                }
            }
        },
        move |shared| {
            let mut got = 0u64;
            let mut sum = 0u64;
            while got < iters {
                match rx.pop() {
                    Ok(v) => {
                        sum = sum.wrapping_add(v);
                        got += 1;
                    }
                    Err(_) => relax(shared),
                }
            }
            black_box(sum);
        },
    )
}

/// glommio: `shared_channel` between two executors, `send().await` / `recv().await` per item.
/// Executors are started for every sample; only the transfer is timed.
fn glommio_shared_channel(iters: u64) -> Duration {
    let cpus = cpu_pair();
    let placement = |cpu: Option<usize>| match cpu {
        Some(c) => Placement::Fixed(c),
        None => Placement::Unbound,
    };
    let (tx, rx) = shared_channel::new_bounded::<u64>(CAP);
    let barrier = Arc::new(Barrier::new(2));
    let b = barrier.clone();
    let cons = LocalExecutorBuilder::new(placement(cpus.map(|c| c.1)))
        .name("bench-recv")
        .io_memory(256 * 1024)
        .spawn(move || async move {
            let rx = rx.connect().await;
            b.wait();
            let mut sum = 0u64;
            for _ in 0..iters {
                sum = sum.wrapping_add(rx.recv().await.expect("sender closed early"));
            }
            black_box(sum);
            Instant::now()
        })
        .expect("start glommio receiver");
    let prod = LocalExecutorBuilder::new(placement(cpus.map(|c| c.0)))
        .name("bench-send")
        .io_memory(256 * 1024)
        .spawn(move || async move {
            let tx = tx.connect().await;
            barrier.wait();
            let start = Instant::now();
            for i in 0..iters {
                tx.send(i).await.expect("receiver closed early");
            }
            start
        })
        .expect("start glommio sender");
    let start = prod.join().expect("glommio sender failed");
    let end = cons.join().expect("glommio receiver failed");
    end.saturating_duration_since(start)
}

// ---- round trip -------------------------------------------------------------------------

fn bettong_round_trip(iters: u64) -> Duration {
    let (mut ping_tx, mut ping_rx) = ring::channel::<u64>(CAP);
    let (mut pong_tx, mut pong_rx) = ring::channel::<u64>(CAP);
    round_trip(
        move |shared| {
            let start = Instant::now();
            for i in 0..iters {
                ping_tx.push(i).expect("ring has room: one item in flight");
                ping_tx.publish();
                let mut back = None;
                while back.is_none() {
                    if pong_rx.drain(|v| back = Some(v)) == 0 {
                        relax(shared);
                    }
                }
                debug_assert_eq!(back, Some(i));
            }
            start.elapsed()
        },
        move |shared| {
            let mut done = 0u64;
            while done < iters {
                let n = ping_rx.drain(|v| {
                    pong_tx.push(v).expect("ring has room: one item in flight");
                });
                if n == 0 {
                    relax(shared);
                } else {
                    pong_tx.publish();
                    done += n as u64;
                }
            }
        },
    )
}

fn rtrb_round_trip(iters: u64) -> Duration {
    let (mut ping_tx, mut ping_rx) = rtrb::RingBuffer::<u64>::new(CAP);
    let (mut pong_tx, mut pong_rx) = rtrb::RingBuffer::<u64>::new(CAP);
    round_trip(
        move |shared| {
            let start = Instant::now();
            for i in 0..iters {
                ping_tx.push(i).expect("ring has room: one item in flight");
                loop {
                    match pong_rx.pop() {
                        Ok(v) => {
                            debug_assert_eq!(v, i);
                            break;
                        }
                        Err(_) => relax(shared),
                    }
                }
            }
            start.elapsed()
        },
        move |shared| {
            let mut done = 0u64;
            while done < iters {
                match ping_rx.pop() {
                    Ok(v) => {
                        pong_tx.push(v).expect("ring has room: one item in flight");
                        done += 1;
                    }
                    Err(_) => relax(shared),
                }
            }
        },
    )
}

// ---- same thread ------------------------------------------------------------------------

/// The instruction cost of the ring operations without any cross-core traffic: one thread
/// pushes, publishes and drains, so every cache line stays in its own L1.
fn same_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring same thread (no cross-core traffic): bettong vs rtrb");
    configure(&mut group);
    let (mut tx, mut rx) = ring::channel::<u64>(CAP);
    group.bench_function("bettong push+publish+drain each", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            tx.push(black_box(i)).expect("empty ring has room");
            tx.publish();
            let mut sum = 0u64;
            rx.drain(|v| sum += v);
            sum
        })
    });
    let (mut tx, mut rx) = ring::channel::<u64>(CAP);
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("bettong batch 64: push x64, publish, drain", |b| {
        b.iter(|| {
            for i in 0..BATCH {
                tx.push(black_box(i)).expect("empty ring has room");
            }
            tx.publish();
            let mut sum = 0u64;
            rx.drain(|v| sum += v);
            sum
        })
    });
    group.throughput(Throughput::Elements(1));
    let (mut tx, mut rx) = rtrb::RingBuffer::<u64>::new(CAP);
    group.bench_function("rtrb push+pop each", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            tx.push(black_box(i)).expect("empty ring has room");
            rx.pop().expect("just pushed")
        })
    });
    group.finish();
}

fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20)
        .throughput(Throughput::Elements(1));
}

fn ring_handoff(c: &mut Criterion) {
    let mut group =
        c.benchmark_group("ring handoff: bettong ring vs rtrb vs glommio shared_channel");
    configure(&mut group);
    group.bench_function("bettong push+publish each", |b| b.iter_custom(bettong_each));
    group.bench_function("bettong batch 64 then publish", |b| {
        b.iter_custom(bettong_batched)
    });
    group.bench_function("rtrb push/pop", |b| b.iter_custom(rtrb_each));
    group.bench_function("glommio shared_channel send/recv", |b| {
        b.iter_custom(glommio_shared_channel)
    });
    group.finish();
}

fn ring_round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring round trip: bettong vs rtrb");
    configure(&mut group);
    group.bench_function("bettong push+publish / spin drain", |b| {
        b.iter_custom(bettong_round_trip)
    });
    group.bench_function("rtrb push / spin pop", |b| b.iter_custom(rtrb_round_trip));
    group.finish();
}

criterion_group!(benches, ring_handoff, ring_round_trip, same_thread);
criterion_main!(benches);
