//! End-to-end tests of `bettong passthrough` (1 and 2 shards) and of the engine-free relay
//! baseline, over real sockets: what comes out is exactly what went in.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use bettong_giles::bench::{self, BenchArgs};
use bettong_giles::relay::Relay;
use common::{frame, send, summary_count, Engine, Sink};

/// Splits a byte stream into frame payloads; panics if it does not end on a frame boundary.
fn payloads(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 4, "torn header at the end of the stream");
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        assert!(
            bytes.len() >= 4 + len,
            "torn frame at the end of the stream"
        );
        out.push(bytes[4..4 + len].to_vec());
        bytes = &bytes[4 + len..];
    }
    out
}

/// Distinct payloads for connection `conn`: `[conn][seq u32 BE]` padded with a pattern to
/// every length from 5 to 64 bytes, so lengths and contents both vary.
fn payloads_for(conn: u8, n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|seq| {
            let len = 5 + (seq as usize * 7 + conn as usize) % 60;
            let mut p = vec![conn];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend((5..len).map(|i| (i as u32 * 31 + seq) as u8));
            p
        })
        .collect()
}

fn engine(cores: &str, sink: &Sink) -> Engine {
    let out = sink.addr.to_string();
    Engine::start(&[
        "passthrough",
        "--in",
        "127.0.0.1:0",
        "--out",
        &out,
        "--cores",
        cores,
        "--no-pin",
    ])
}

fn frames_in_equal_frames_out(cores: &str) {
    let sink = Sink::bind();
    let engine = engine(cores, &sink);
    let addr = engine.addr("Frames");
    // An empty payload is a frame too.
    let mut per_conn: Vec<Vec<Vec<u8>>> = (0..6).map(|c| payloads_for(c, 3000)).collect();
    per_conn[0].push(Vec::new());
    std::thread::scope(|s| {
        for msgs in &per_conn {
            s.spawn(move || {
                let bytes: Vec<u8> = msgs.iter().flat_map(|m| frame(m)).collect();
                send(addr, &bytes);
            });
        }
    });
    let (status, stderr) = engine.stop();
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");

    let outputs: Vec<Vec<Vec<u8>>> = sink.finish().iter().map(|b| payloads(b)).collect();
    // Without key_by a frame stays on the shard of its connection, so each input connection's
    // frames come out in order on one sink connection.
    for out in &outputs {
        let mut last_seq = [None::<u32>; 6];
        for p in out.iter().filter(|p| p.len() >= 5) {
            let seq = u32::from_be_bytes([p[1], p[2], p[3], p[4]]);
            let last = &mut last_seq[p[0] as usize];
            assert!(
                last.is_none_or(|l| l < seq),
                "connection {} reordered",
                p[0]
            );
            *last = Some(seq);
        }
    }
    let mut got: Vec<Vec<u8>> = outputs.concat();
    let mut sent: Vec<Vec<u8>> = per_conn.concat();
    assert_eq!(got.len(), sent.len(), "frames out vs frames in");
    got.sort_unstable();
    sent.sort_unstable();
    assert!(got == sent, "the frames out are not the frames in");
    assert_eq!(summary_count(&stderr, "messages in"), sent.len() as u64);
    assert_eq!(summary_count(&stderr, "out"), sent.len() as u64);
}

#[test]
fn frames_in_equal_frames_out_on_one_shard() {
    frames_in_equal_frames_out("0");
}

#[test]
fn frames_in_equal_frames_out_on_two_shards() {
    frames_in_equal_frames_out("0,1");
}

/// A payload over 64 bytes is a decode error: logged, counted, skipped; the connection goes on.
#[test]
fn payload_over_64_bytes_is_a_decode_error() {
    let sink = Sink::bind();
    let engine = engine("0", &sink);
    let mut bytes = frame(b"before");
    bytes.extend(frame(&[b'x'; 65]));
    bytes.extend(frame(&[b'y'; 64]));
    send(engine.addr("Frames"), &bytes);
    let (status, stderr) = engine.stop();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("passthrough carries frames of at most 64 bytes"),
        "{stderr}"
    );
    assert_eq!(summary_count(&stderr, "decode"), 1);
    let got: Vec<Vec<u8>> = sink.finish().iter().flat_map(|b| payloads(b)).collect();
    assert_eq!(got, [b"before".to_vec(), vec![b'y'; 64]]);
}

/// Reads every connection `listener` gets, `n` of them, each to its end.
fn collect(listener: TcpListener, n: usize) -> Vec<Vec<u8>> {
    let readers: Vec<_> = (0..n)
        .map(|_| {
            let (mut s, _) = listener.accept().unwrap();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                s.read_to_end(&mut got).unwrap();
                got
            })
        })
        .collect();
    readers.into_iter().map(|r| r.join().unwrap()).collect()
}

/// Writes `bytes` in pieces of awkward sizes, so that frames and headers straddle reads.
fn send_in_pieces(addr: SocketAddr, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    for (i, piece) in bytes.chunks(4093).enumerate() {
        let cut = (i * 3) % piece.len().max(1);
        s.write_all(&piece[..cut]).unwrap();
        s.write_all(&piece[cut..]).unwrap();
    }
}

/// The relay forwards every connection byte for byte, one outgoing connection per input.
#[test]
fn relay_forwards_exactly_what_it_gets() {
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = Relay::start(target.local_addr().unwrap()).unwrap();
    let addr = relay.local_addr();
    let inputs: Vec<Vec<u8>> = (0..3)
        .map(|c| {
            let mut msgs = payloads_for(c, 20_000);
            // One frame far larger than a read, which the relay must grow its buffer for.
            msgs.push(vec![c; 600_000]);
            msgs.iter().flat_map(|m| frame(m)).collect()
        })
        .collect();
    let outputs = std::thread::scope(|s| {
        for bytes in &inputs {
            s.spawn(move || send_in_pieces(addr, bytes));
        }
        collect(target, inputs.len())
    });
    relay.stop();
    let report = relay.join().unwrap();
    let mut sorted_in = inputs.clone();
    let mut sorted_out = outputs;
    sorted_in.sort_unstable();
    sorted_out.sort_unstable();
    assert!(
        sorted_in == sorted_out,
        "an output connection differs from its input"
    );
    assert_eq!(report.frames_in, 3 * 20_001);
    assert_eq!(report.frames_out, 3 * 20_001);
    assert_eq!((report.connections, report.errors), (3, 0));
}

/// Input cut in the middle of a frame: the whole frames before it are forwarded, the torn one
/// is counted as an error and dropped.
#[test]
fn relay_drops_only_a_torn_last_frame() {
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = Relay::start(target.local_addr().unwrap()).unwrap();
    let mut bytes = frame(b"one");
    bytes.extend(frame(b"two"));
    bytes.extend_from_slice(&[0, 0, 0, 9, b't']);
    send(relay.local_addr(), &bytes);
    let outputs = collect(target, 1);
    relay.stop();
    let report = relay.join().unwrap();
    assert_eq!(payloads(&outputs[0]), [b"one".to_vec(), b"two".to_vec()]);
    assert_eq!((report.frames_out, report.errors), (2, 1));
}

/// A relay stopped with no connection at all stops at once.
#[test]
fn idle_relay_stops() {
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = Relay::start(target.local_addr().unwrap()).unwrap();
    relay.stop();
    assert_eq!(relay.join().unwrap().connections, 0);
}

/// The bench runs end to end for the passthrough app and the relay, blasting and paced, with
/// every frame accounted for and one JSON object each.
#[test]
fn bench_passthrough_and_relay_account_for_every_frame() {
    let dir = std::env::temp_dir().join(format!("bettong-pt-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, rate) in [("blast", None), ("paced", Some(400_000))] {
        let mut args = BenchArgs::new(40_000);
        args.cores = Some(bettong::runtime::config::CoreList(vec![0, 1]));
        args.no_pin = true;
        args.connections = Some(4);
        args.rate = rate;
        args.json = Some(dir.join(format!("pt-{name}.json")));
        let report = bench::passthrough(&args).unwrap();
        assert_eq!((report.messages_in, report.messages_out), (40_000, 40_000));
        assert_eq!(report.shards, 2);
        assert!(report.summary.latency_at(0.5) > 0);
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("pt-{name}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(json["app"], "passthrough");
        assert_eq!(
            json["rate"],
            rate.map_or(serde_json::Value::Null, Into::into)
        );

        args.cores = None;
        args.shards = Some(1);
        args.json = Some(dir.join(format!("relay-{name}.json")));
        let report = bench::relay(&args).unwrap();
        assert_eq!((report.messages_in, report.messages_out), (40_000, 40_000));
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("relay-{name}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(json["app"], "relay");
        assert_eq!(json["shards"], 0);
        assert_eq!(json["latency_ns"]["p99"], 0);
    }
    let mut args = BenchArgs::new(10);
    args.shards = Some(2);
    assert!(bench::relay(&args).is_err(), "the relay has no shards");
    let _ = std::fs::remove_dir_all(&dir);
}
