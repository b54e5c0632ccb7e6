//! The HTTP endpoint of `--metrics-addr`: `GET /metrics` (the Prometheus text format) and
//! `GET /health`, served by one plain thread with blocking std sockets, off the shards.
//!
//! A scrape reads the shards' [`LiveCounters`] (single-writer atomics): the shards never wait
//! for it and take no lock. Requests are served one at a time (a scraper or two, not a web
//! site), each with a read and write timeout so that a stuck client cannot hold the endpoint.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::live::LiveCounters;

/// How long a client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest request read (the request line and headers; a body is not expected).
const MAX_REQUEST: usize = 8 * 1024;

/// What the endpoint serves from, shared with the engine that fills it in.
pub(crate) struct Exported {
    pub(crate) app: String,
    /// Every shard's counters, once the shards have started.
    pub(crate) shards: Mutex<Vec<Arc<LiveCounters>>>,
    /// Answers `/health`: true while the engine runs (not stopping).
    pub(crate) healthy: Box<dyn Fn() -> bool + Send + Sync>,
}

/// A running endpoint; [`shutdown`](Exporter::shutdown) ends its thread.
pub(crate) struct Exporter {
    addr: SocketAddr,
    quit: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Exporter {
    /// Binds `addr` (port 0: any free port) and serves on a thread named `bettong-exporter`.
    pub(crate) fn start(addr: SocketAddr, exported: Arc<Exported>) -> std::io::Result<Exporter> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let quit = Arc::new(AtomicBool::new(false));
        let q = quit.clone();
        let thread = std::thread::Builder::new()
            .name("bettong-exporter".to_string())
            .spawn(move || serve(listener, &exported, &q))?;
        Ok(Exporter {
            addr,
            quit,
            thread: Some(thread),
        })
    }

    /// The address it listens on (with the real port when 0 was asked).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread.
    pub(crate) fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.quit.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok() {
            let _ = thread.join();
        }
        // Otherwise the thread is left blocked in accept; it ends with the process.
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(listener: TcpListener, exported: &Exported, quit: &AtomicBool) {
    for conn in listener.incoming() {
        if quit.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            Ok(stream) => {
                if let Err(e) = answer(stream, exported) {
                    tracing::debug!("metrics endpoint: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("metrics endpoint: accept failed: {e}");
                // Out of descriptors, typically: do not spin.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Reads one request and writes its answer; the connection is closed after it.
fn answer(mut stream: TcpStream, exported: &Exported) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && !request.windows(2).any(|w| w == b"\n\n")
    {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
        if request.len() > MAX_REQUEST {
            return respond(&mut stream, "431 Request Header Fields Too Large", "", b"");
        }
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method.is_empty() {
        return Ok(());
    }
    let path = target.split('?').next().unwrap_or("");
    let head = method == "HEAD";
    if method != "GET" && !head {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
        );
    }
    let (status, kind, body) = match path {
        "/metrics" => {
            let shards = exported
                .shards
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            (
                "200 OK",
                super::prometheus::CONTENT_TYPE,
                super::prometheus::encode(&exported.app, &shards).into_bytes(),
            )
        }
        "/health" => {
            if (exported.healthy)() {
                ("200 OK", "text/plain", b"ok\n".to_vec())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    b"stopping\n".to_vec(),
                )
            }
        }
        "/" => (
            "200 OK",
            "text/plain",
            format!(
                "bettong {}: /metrics (Prometheus text format), /health\n",
                exported.app
            )
            .into_bytes(),
        ),
        _ => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
    };
    if head {
        stream.write_all(header(status, kind, body.len()).as_bytes())?;
        return stream.flush();
    }
    respond(&mut stream, status, kind, &body)
}

fn header(status: &str, kind: &str, len: usize) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &[u8]) -> std::io::Result<()> {
    let mut out = header(status, kind, body.len()).into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out)?;
    stream.flush()
}
