//! The TCP sink of one shard: outputs are encoded into one buffer, which a writer task sends to
//! the sink's connection.
//!
//! Batching adapts to load without a timer: the writer is woken when the first output lands in
//! an empty buffer, but runs only after the tasks already ready (the sources and drains that
//! are still producing), then takes the whole buffer in one write. Under light load that is one
//! message per write, with no added latency; under heavy load the buffer fills up between writes.
//! Two buffers swap places, so encoding continues while a write is in flight.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::runtime::shard::{Gauge, Notify, WaitList};

/// One shard's outgoing buffer for one sink.
pub(crate) struct SinkBuffer {
    buf: RefCell<Vec<u8>>,
    limit: usize,
    pub(crate) gauge: Gauge,
    wake_writer: Notify,
    finishing: Cell<bool>,
}

impl SinkBuffer {
    pub(crate) fn new(limit: usize) -> Self {
        SinkBuffer {
            buf: RefCell::new(Vec::with_capacity(limit + limit / 4)),
            limit,
            gauge: Gauge::default(),
            wake_writer: Notify::default(),
            finishing: Cell::new(false),
        }
    }

    /// Lets `encode` append to the buffer, then raises the gauge if the buffer is over its
    /// limit (the source that is producing will stop reading until the writer catches up).
    #[inline]
    pub(crate) fn append(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        let mut buf = self.buf.borrow_mut();
        let was_empty = buf.is_empty();
        encode(&mut buf);
        if buf.len() >= self.limit {
            self.gauge.set(true);
        }
        if was_empty {
            self.wake_writer.notify();
        }
    }

    /// Asks the writer to send what is left and end.
    pub(crate) fn finish(&self) {
        self.finishing.set(true);
        self.wake_writer.notify();
    }

    /// Sends the buffer to `addr` until [`finish`](Self::finish) is called and everything is
    /// written. Connects (and reconnects after an error) with back-off, so a sink that is not
    /// listening yet, or restarts, only delays output: while it is away the buffer fills to its
    /// limit and backpressure stops the sources.
    pub(crate) async fn writer(
        self: Rc<Self>,
        addr: SocketAddr,
        shard: usize,
        relief: Rc<WaitList>,
    ) {
        let mut out: Vec<u8> = Vec::with_capacity(self.limit + self.limit / 4);
        let mut conn: Option<TcpStream> = None;
        loop {
            if self.buf.borrow().is_empty() {
                if self.finishing.get() {
                    break;
                }
                self.wake_writer.notified().await;
                // Let the tasks that are still producing run first, so this write carries
                // everything they add.
                glommio::executor().yield_now().await;
                continue;
            }
            std::mem::swap(&mut *self.buf.borrow_mut(), &mut out);
            if self.gauge.is_over() {
                self.gauge.set(false);
                relief.wake_all();
            }
            loop {
                let stream = match conn.as_mut() {
                    Some(s) => s,
                    None => conn.insert(connect(addr, shard).await),
                };
                match stream.write_all(&out).await {
                    Ok(()) => break,
                    Err(e) => {
                        // The batch is resent whole on the new connection: it holds whole
                        // messages, so the receiver never sees a torn frame (but may see a
                        // message twice if the old peer got part of the batch).
                        eprintln!(
                            "bettong: shard {shard}: sink {addr}: write failed ({e}); reconnecting"
                        );
                        conn = None;
                    }
                }
            }
            out.clear();
        }
        if let Some(mut c) = conn {
            let _ = c.flush().await;
            let _ = c.shutdown(std::net::Shutdown::Write).await;
        }
    }
}

/// Connects to the sink, retrying with back-off (10 ms doubling to 1 s) until it listens.
async fn connect(addr: SocketAddr, shard: usize) -> TcpStream {
    let mut delay = Duration::from_millis(10);
    let mut reported = false;
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                if let Err(e) = s.set_nodelay(true) {
                    eprintln!("bettong: shard {shard}: sink {addr}: cannot set TCP_NODELAY: {e}");
                }
                if reported {
                    eprintln!("bettong: shard {shard}: sink {addr}: connected");
                }
                return s;
            }
            Err(e) => {
                if !reported {
                    eprintln!(
                        "bettong: shard {shard}: sink {addr}: {}; retrying",
                        describe(&e)
                    );
                    reported = true;
                }
                glommio::timer::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn describe(e: &glommio::GlommioError<()>) -> String {
    match e {
        glommio::GlommioError::IoError(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
            "not listening yet (connection refused)".to_string()
        }
        other => other.to_string(),
    }
}
