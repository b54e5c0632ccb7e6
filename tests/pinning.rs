//! Shard threads run where `--cores` says: read each thread's allowed CPUs from /proc.

mod common;

use common::{Engine, Sink};

/// (thread name, Cpus_allowed_list) for every thread of `pid`.
fn threads(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap()
        };
        out.push((field("Name:"), field("Cpus_allowed_list:")));
    }
    out.sort();
    out
}

/// Each shard's name with its threads' allowed CPUs. Glommio gives every executor a helper
/// thread for blocking work, which inherits the shard's name and placement, so a name can
/// appear twice: every thread of a shard must have the shard's CPUs.
///
/// The helper places itself once it runs, which can be just after the engine says it is
/// ready: one run in a few dozen read the helper still on every CPU. So the threads are read
/// again until they agree, for up to 10 s, and a disagreement that lasts is the failure.
fn shard_threads(pid: u32) -> Vec<(String, String)> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut shards: Vec<(String, String)> = threads(pid)
            .into_iter()
            .filter(|(name, _)| name.starts_with("bettong-shard-"))
            .collect();
        shards.dedup();
        let mut names: Vec<&String> = shards.iter().map(|(n, _)| n).collect();
        names.dedup();
        if names.len() == shards.len() {
            return shards;
        }
        assert!(
            std::time::Instant::now() < until,
            "threads of one shard disagree: {shards:?}"
        );
        std::thread::yield_now();
    }
}

fn allowed_cpus_of_this_process() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

fn two_cores() -> bool {
    core_affinity::get_core_ids().is_some_and(|c| c.len() >= 2)
}

fn start(cores: &[&str]) -> (Engine, Sink) {
    let sink = Sink::bind();
    let out = sink.addr.to_string();
    let mut args = vec!["word-count", "--in", "127.0.0.1:0", "--out", &out];
    args.extend_from_slice(cores);
    (Engine::start(&args), sink)
}

#[test]
fn one_shard_pinned_to_core_1() {
    if !two_cores() {
        eprintln!("skipped: needs 2 cores");
        return;
    }
    let (engine, _sink) = start(&["--cores", "1"]);
    assert_eq!(engine.preamble, ["shard 0 core 1"]);
    assert_eq!(
        shard_threads(engine.pid()),
        [("bettong-shard-0".to_string(), "1".to_string())]
    );
    assert!(engine.stop().0.success());
}

#[test]
fn two_shards_pinned_to_cores_0_and_1() {
    if !two_cores() {
        eprintln!("skipped: needs 2 cores");
        return;
    }
    let (engine, _sink) = start(&["--cores", "0,1"]);
    assert_eq!(engine.preamble, ["shard 0 core 0", "shard 1 core 1"]);
    assert_eq!(
        shard_threads(engine.pid()),
        [
            ("bettong-shard-0".to_string(), "0".to_string()),
            ("bettong-shard-1".to_string(), "1".to_string())
        ]
    );
    assert!(engine.stop().0.success());
}

#[test]
fn no_pin_leaves_threads_unrestricted() {
    let (engine, _sink) = start(&["--cores", "0,1", "--no-pin"]);
    assert_eq!(engine.preamble, ["shard 0 unpinned", "shard 1 unpinned"]);
    let all = allowed_cpus_of_this_process();
    let shards = shard_threads(engine.pid());
    let names: Vec<&str> = shards.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["bettong-shard-0", "bettong-shard-1"]);
    for (name, cpus) in shards {
        assert_eq!(cpus, all, "{name} is restricted");
    }
    assert!(engine.stop().0.success());
}

#[test]
fn a_core_that_does_not_exist_is_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bettong"))
        .args([
            "word-count",
            "--in",
            "127.0.0.1:0",
            "--out",
            "127.0.0.1:9",
            "--cores",
            "4096",
        ])
        .output()
        .unwrap();
    // A usage error, as every bad flag value.
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("core 4096 is not available"), "{err}");
}

/// CPU time (ns) each shard of `pid` has run, from `/proc/PID/task/TID/schedstat`, summed over
/// the threads of its name (a shard's glommio helper thread carries it too, and sits blocked).
fn shard_cpu_ns(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let (Ok(name), Ok(sched)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("schedstat")),
        ) else {
            continue; // the thread ended between the listing and the reads
        };
        let name = name.trim();
        if name.starts_with("bettong-shard-") {
            let ns: u64 = sched.split_whitespace().next().unwrap().parse().unwrap();
            *out.entry(name.to_string()).or_insert(0) += ns;
        }
    }
    out
}

/// `--poll spin` spins whether the shards are pinned or not: an idle spinning shard never
/// prepares to sleep. glommio spins only an executor bound to CPUs, so an unpinned shard is
/// bound to every CPU it may use; left unbound, each idle shard here went to park about 1 700
/// times a second (woken at once by its drains' timer), with a `membarrier` each time, which
/// interrupts every CPU the engine runs on.
///
/// 3 unpinned shards on this 2-core machine, traced by `strace` (a real one: `.ci/run` installs
/// it; without it, or without the right to trace, the test says it skipped) while each runs
/// another 300 ms: no `membarrier` at all.
#[test]
fn unpinned_shards_spin_when_asked_to() {
    let (engine, _sink) = start(&["--cores", "0,1,2", "--no-pin", "--poll", "spin"]);
    assert_eq!(
        engine.preamble,
        ["shard 0 unpinned", "shard 1 unpinned", "shard 2 unpinned"]
    );
    let all = allowed_cpus_of_this_process();
    for (name, cpus) in shard_threads(engine.pid()) {
        assert_eq!(cpus, all, "{name} is restricted");
    }
    let log = std::env::temp_dir().join(format!("bettong-spin-{}.strace", std::process::id()));
    let strace = std::process::Command::new("strace")
        .args(["-f", "-e", "trace=membarrier", "-o"])
        .arg(&log)
        .args(["-p", &engine.pid().to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut strace) = strace else {
        eprintln!("skipped: strace is not installed");
        assert!(engine.stop().0.success());
        return;
    };
    // strace says it attached (one line per thread) before it traces anything.
    let mut attached = String::new();
    let mut err = std::io::BufReader::new(strace.stderr.take().unwrap());
    std::io::BufRead::read_line(&mut err, &mut attached).unwrap();
    if !attached.contains("attached") {
        eprintln!(
            "skipped: strace cannot trace the engine: {}",
            attached.trim()
        );
        let _ = strace.wait();
        assert!(engine.stop().0.success());
        return;
    }
    let before = shard_cpu_ns(engine.pid());
    assert_eq!(before.len(), 3, "{before:?}");
    common::wait_until("every idle shard to run another 300 ms", || {
        let now = shard_cpu_ns(engine.pid());
        before
            .iter()
            .all(|(name, ns)| now.get(name).is_some_and(|n| n - ns >= 300_000_000))
    });
    // SAFETY: `kill` with a child's pid and a signal number has no memory effects.
    unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
    strace.wait().unwrap();
    let trace = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let barriers = trace.lines().filter(|l| l.contains("membarrier(")).count();
    assert_eq!(
        barriers, 0,
        "idle shards asked to spin went to park:\n{trace}"
    );
    assert!(engine.stop().0.success());
}
