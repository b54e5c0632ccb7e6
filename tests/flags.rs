//! Every engine flag is checked at start: a bad value ends the real `bettong` binary with exit
//! status 2 (a usage error, as clap's own) and a message that names the flag, never a panic;
//! a shard that cannot start says why; SIGHUP stops the engine as cleanly as SIGTERM.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{frame, send, summary_count, Engine, Sink, DEADLINE};

/// Runs `bettong ARGS` to its end (killing it, and failing, if it runs past the deadline:
/// a bad flag that is accepted starts an engine that would never exit).
fn run(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bettong");
    let until = Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("bettong {cmd:?} did not exit: a bad flag was accepted");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

fn bettong(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bettong"));
    cmd.args(args);
    cmd
}

/// Asserts exit status 2, a message naming `flag`, and no panic.
fn assert_usage_error(args: &[&str], flag: &str) {
    let out = run(bettong(args));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "bettong {args:?}: {}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains(flag),
        "bettong {args:?}: the message does not name {flag}:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "bettong {args:?} panicked:\n{stderr}"
    );
}

/// `passthrough` with `flags` added to a valid command line.
fn passthrough_with(flags: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "passthrough",
        "--in",
        "127.0.0.1:0",
        "--out",
        "127.0.0.1:9",
        "--cores",
        "0",
        "--no-pin",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(flags.iter().map(|s| s.to_string()));
    args
}

#[test]
fn out_of_range_values_are_usage_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["--max-frame", "0"], "--max-frame"),
        (&["--max-frame", "100000000000000"], "--max-frame"),
        (&["--max-frame", "9223372036854775807"], "--max-frame"),
        (&["--max-frame", "18446744073709551615"], "--max-frame"),
        (&["--max-frame", "67108865"], "--max-frame"),
        (&["--metrics-interval", "1ns"], "--metrics-interval"),
        (&["--metrics-interval", "999us"], "--metrics-interval"),
        (
            &["--metrics-interval", "100000000000000s"],
            "--metrics-interval",
        ),
        (&["--ring-capacity", "0"], "--ring-capacity"),
        (
            &["--ring-capacity", "18446744073709551615"],
            "--ring-capacity",
        ),
        (&["--sink-buffer", "0"], "--sink-buffer"),
        (&["--sink-buffer", "18446744073709551615"], "--sink-buffer"),
        (&["--cores", "0-99999999999"], "--cores"),
        (&["--poll", "spin:x"], "--poll"),
    ];
    for (flags, flag) in cases {
        // The last --cores given wins, so the case's own --cores is the one checked.
        let args = passthrough_with(flags);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_usage_error(&args, flag);
    }
}

/// `bench` takes the engine's `--ring-capacity` with the same bounds.
#[test]
fn bench_ring_capacity_out_of_range_is_a_usage_error() {
    for value in ["0", "16777217", "x"] {
        assert_usage_error(
            &["bench", "market-spread", "--ring-capacity", value],
            "--ring-capacity",
        );
    }
}

#[test]
fn a_source_given_twice_is_a_usage_error() {
    let out = "127.0.0.1:9";
    // The same name twice (two addresses for one source).
    assert_usage_error(
        &[
            "market-spread",
            "--in",
            "Orders@127.0.0.1:0,Orders@127.0.0.1:0,Nbbo@127.0.0.1:0",
            "--out",
            out,
            "--no-pin",
        ],
        "--in",
    );
    // Two unnamed addresses for a one-source application.
    assert_usage_error(
        &[
            "passthrough",
            "--in",
            "127.0.0.1:0,127.0.0.1:0",
            "--out",
            out,
            "--no-pin",
        ],
        "--in",
    );
    // One address for two sources (SO_REUSEPORT would split its connections between them).
    assert_usage_error(
        &[
            "market-spread",
            "--in",
            "Orders@127.0.0.1:7311,Nbbo@127.0.0.1:7311",
            "--out",
            out,
            "--no-pin",
        ],
        "--in",
    );
    // A source the application does not have.
    assert_usage_error(
        &[
            "passthrough",
            "--in",
            "Nope@127.0.0.1:0",
            "--out",
            out,
            "--no-pin",
        ],
        "--in",
    );
}

/// A second engine on the port of a running one is refused (both set SO_REUSEPORT, which
/// would otherwise let them share it); so is a port that a plain listener holds.
#[test]
fn a_port_in_use_is_refused() {
    let sink = Sink::bind();
    let out = sink.addr.to_string();
    let first = Engine::start(&[
        "passthrough",
        "--in",
        "127.0.0.1:0",
        "--out",
        &out,
        "--cores",
        "0",
        "--no-pin",
    ]);
    let taken = first.addr("Frames").to_string();
    assert_usage_error(
        &[
            "passthrough",
            "--in",
            &taken,
            "--out",
            &out,
            "--cores",
            "0",
            "--no-pin",
        ],
        "--in",
    );
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = plain.local_addr().unwrap().to_string();
    assert_usage_error(
        &[
            "passthrough",
            "--in",
            &held,
            "--out",
            &out,
            "--cores",
            "0",
            "--no-pin",
        ],
        "--in",
    );
    // The first engine still gets every connection.
    send(first.addr("Frames"), &frame(b"still mine"));
    let (status, stderr) = first.stop();
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    assert_eq!(summary_count(&stderr, "messages in"), 1);
}

/// With a locked-memory limit too low for io_uring, the engine says so and how to raise it,
/// instead of only "a shard exited during start-up".
#[test]
fn a_shard_that_cannot_start_names_the_cause() {
    let mut cmd = bettong(
        &passthrough_with(&[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit, which
    // is async-signal-safe, on a value on its own stack.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("locked-memory limit"), "{stderr}");
    assert!(stderr.contains("ulimit -l"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// SIGHUP (the operator's terminal closed) drains like SIGTERM: everything sent comes out and
/// the exit status is 0.
#[test]
fn sighup_stops_cleanly() {
    let sink = Sink::bind();
    let out = sink.addr.to_string();
    let engine = Engine::start(&[
        "passthrough",
        "--in",
        "127.0.0.1:0",
        "--out",
        &out,
        "--cores",
        "0-1",
        "--no-pin",
    ]);
    let bytes: Vec<u8> = (0..1000u32).flat_map(|i| frame(&i.to_be_bytes())).collect();
    send(engine.addr("Frames"), &bytes);
    let (status, stderr) = engine.signal_and_wait(libc::SIGHUP);
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    assert!(stderr.contains("stopping: draining"), "{stderr}");
    assert_eq!(summary_count(&stderr, "messages in"), 1000);
    let got: usize = sink.finish().iter().map(Vec::len).sum();
    assert_eq!(got, bytes.len());
}
