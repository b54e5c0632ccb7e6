//! A sink that writes through Wallaroo's connector protocol with two-phase commit: the address
//! `--out NAME@2pc:HOST:PORT` turns a [`TcpSink`](crate::TcpSink) into one. Each shard keeps
//! its own connection and its own output stream (instance `bettong-shard-N`), and follows
//! Wallaroo's sink side (`../shared/reference/connector-protocol.md` §3.3):
//!
//! 1. On connecting it says Hello (`v0.0.1`, `Dragons-Love-Tacos`), Notify (stream 1, named
//!    `bettong-w-bettong-shard-N-id-SINK`) and ListUncommitted; the sink answers Ok, NotifyAck
//!    and ReplyUncommitted. An uncommitted transaction listed there is resolved first: commit
//!    if its checkpoint is the one the engine restored (or one that committed since), abort
//!    otherwise.
//! 2. Outputs go out as Messages on stream 1 whose id is the byte offset of their payload in
//!    the shard's output since the start; the sink appends a message only at its current
//!    offset.
//! 3. At a checkpoint barrier: Phase1 for the range of offsets since the last transaction, and
//!    no more data until Phase2. The sink makes the range durable and votes; a yes pre-commits
//!    the shard's part of the checkpoint (with the range's end as the sink's position), a no
//!    gives the checkpoint up.
//! 4. Once the checkpoint commits or is given up: Phase2 commit or abort. On abort the sink cuts
//!    its output back to the range's start and the engine sends the range again (it keeps every
//!    byte until a commit covers it), so an abort loses nothing while the engine runs on.
//!
//! After a crash the engine restarts from its last complete checkpoint: the sink's transaction
//! for that checkpoint commits, a later one aborts, and a sink drops whatever it received after
//! its last transaction when a connection for the same instance begins, so the output that the
//! replayed sources make again is appended exactly once. A sink going away is no loss either:
//! the shard reconnects, resolves, and resends from where the sink is.
//!
//! Shrinking the shard count across a restart leaves the vanished shards' instances with
//! whatever they had; a transaction they voted for and never resolved stays uncommitted at the
//! sink (grow, or keep the count, when restarting onto a 2PC sink).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::codec::{Encoder, FrameReader};
use crate::connect::protocol::{message_header, set_len, Frame, TwoPc, SINK_COOKIE, SINK_VERSION};
use crate::connect::{CheckpointOutcomes, SinkContext, SinkInput, SinkShard};
use crate::event::{Control, Stamp};
use crate::net::source::read_some;
use crate::runtime::shard::{Gauge, Notify};

/// The checkpoint id of the final transaction a stop leaves voted and unresolved (checkpoint
/// ids start at 1, so no restart ever restores it: the next start aborts it and makes its range
/// again from the restored checkpoint).
const FINAL: u64 = 0;

/// Bytes of output per Message frame at most.
const CHUNK: usize = 64 * 1024;

/// The longest wait between two attempts to connect.
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Output kept on the shard until a committed transaction covers it.
struct Held {
    /// The bytes from offset `base` on.
    buf: RefCell<Vec<u8>>,
    base: Cell<u64>,
    /// The offset sent on the current connection.
    sent: Cell<u64>,
    /// Checkpoint barriers seen and the offset each ends at, oldest first.
    barriers: RefCell<VecDeque<(u64, u64)>>,
    /// Where each output held ends (to count what a stop that gives up leaves undelivered).
    ends: RefCell<VecDeque<u64>>,
    gauge: Gauge,
    limit: usize,
    wake: Notify,
}

impl Held {
    fn end(&self) -> u64 {
        self.base.get() + self.buf.borrow().len() as u64
    }

    fn unsent(&self) -> u64 {
        self.end().saturating_sub(self.sent.get())
    }
}

struct Input<E> {
    held: Rc<Held>,
    encoder: Arc<E>,
}

impl<T, E: Encoder<T>> SinkInput<T> for Input<E> {
    #[inline]
    fn write(&self, msg: T, _stamp: Stamp) {
        let mut buf = self.held.buf.borrow_mut();
        let was = buf.len();
        self.encoder.encode(&msg, &mut buf);
        let end = self.held.base.get() + buf.len() as u64;
        drop(buf);
        self.held.ends.borrow_mut().push_back(end);
        if was == 0 || self.held.unsent() as usize >= self.held.limit {
            if self.held.unsent() as usize >= self.held.limit {
                self.held.gauge.set(true);
            }
            self.held.wake.notify();
        }
    }

    fn control(&self, event: Control) {
        if let Control::Barrier(id) = event {
            let at = self.held.end();
            self.held.barriers.borrow_mut().push_back((id, at));
            self.held.wake.notify();
        }
    }
}

/// The transaction of one checkpoint on this shard's stream.
#[derive(Clone, Debug)]
struct Txn {
    checkpoint: u64,
    start: u64,
    end: u64,
    /// The sink voted yes (and the shard pre-committed).
    voted: bool,
}

/// Starts the two-phase-commit sink on one shard.
pub(crate) fn sink<T: 'static, E: Encoder<T>>(
    addr: SocketAddr,
    encoder: Arc<E>,
    ctx: SinkContext,
) -> SinkShard<T> {
    let base = ctx.restored_position().unwrap_or(0);
    let held = Rc::new(Held {
        buf: RefCell::new(Vec::new()),
        base: Cell::new(base),
        sent: Cell::new(base),
        barriers: RefCell::new(VecDeque::new()),
        ends: RefCell::new(VecDeque::new()),
        gauge: ctx.gauge(),
        limit: ctx.core().config.sink_buffer,
        wake: Notify::default(),
    });
    let outcomes = ctx.checkpoint_outcomes();
    let task = Writer {
        addr,
        held: held.clone(),
        stream_name: format!("bettong-w-bettong-shard-{}-id-{}", ctx.shard(), ctx.name()),
        known: RefCell::new(VecDeque::new()),
        txn: RefCell::new(None),
        next_start: Cell::new(base),
        finished: Cell::new(false),
        ctx,
    }
    .run(outcomes);
    SinkShard::new(Input { held, encoder })
        .with_task(task)
        .with_precommit()
}

/// What woke the writer.
enum Woke {
    Read(std::io::Result<usize>),
    Wake,
    Outcome((u64, bool)),
    Finishing,
    Deadline,
}

struct Writer {
    addr: SocketAddr,
    held: Rc<Held>,
    stream_name: String,
    ctx: SinkContext,
    /// Outcomes heard, newest last (a few).
    known: RefCell<VecDeque<(u64, bool)>>,
    txn: RefCell<Option<Txn>>,
    /// Where the next transaction starts: the end of the last one not aborted.
    next_start: Cell<u64>,
    finished: Cell<bool>,
}

impl Writer {
    fn txn_name(&self, checkpoint: u64) -> String {
        format!("{}:c_id={checkpoint}", self.stream_name)
    }

    fn outcome(&self, checkpoint: u64) -> Option<bool> {
        if self.ctx.restored_checkpoint() == Some(checkpoint) {
            return Some(true);
        }
        self.known
            .borrow()
            .iter()
            .find(|(id, _)| *id == checkpoint)
            .map(|(_, c)| *c)
    }

    fn heard(&self, o: (u64, bool)) {
        let mut known = self.known.borrow_mut();
        known.push_back(o);
        while known.len() > 16 {
            known.pop_front();
        }
    }

    /// Finished: everything is sent, and what followed the last checkpoint is in the final
    /// transaction, which the sink has voted for (or there was nothing after it).
    fn done(&self) -> bool {
        self.finished.get()
            && self.held.barriers.borrow().is_empty()
            && self.held.unsent() == 0
            && self
                .txn
                .borrow()
                .as_ref()
                .is_none_or(|t| t.checkpoint == FINAL && t.voted)
            && (self.txn.borrow().is_some() || self.next_start.get() == self.held.end())
    }

    async fn run(self, mut outcomes: CheckpointOutcomes) {
        let shard = self.ctx.shard();
        let name = self.ctx.name().to_string();
        let mut delay = Duration::from_millis(10);
        loop {
            if self.done() {
                return;
            }
            let stream = futures_lite::future::or(
                async { TcpStream::connect(self.addr).await.ok() },
                async {
                    self.ctx.drain_deadline().await;
                    None
                },
            )
            .await;
            let Some(mut stream) = stream else {
                if self.ctx.is_stopping() && deadline_passed(&self.ctx) {
                    self.give_up(shard, &name);
                    return;
                }
                tracing::debug!(
                    "shard {shard}: sink {name}: cannot connect to {}",
                    self.addr
                );
                futures_lite::future::or(glommio::timer::sleep(delay), async {
                    self.ctx.drain_deadline().await;
                })
                .await;
                delay = (delay * 2).min(RETRY_MAX);
                continue;
            };
            let _ = stream.set_nodelay(true);
            match self.session(&mut stream, &mut outcomes).await {
                Ok(()) => {
                    let _ = stream.flush().await;
                    let _ = stream.close().await;
                    return;
                }
                Err(e) => {
                    if deadline_passed(&self.ctx) {
                        self.give_up(shard, &name);
                        return;
                    }
                    tracing::warn!(
                        "shard {shard}: sink {name} ({}): {e}; reconnecting",
                        self.addr
                    );
                    delay = Duration::from_millis(10);
                }
            }
        }
    }

    /// The drain timeout ran out: counts the outputs the sink has not made durable (past its
    /// last committed or voted transaction) as undelivered, which makes the stop exit 1.
    fn give_up(&self, shard: usize, name: &str) {
        let durable = match self.txn.borrow().as_ref() {
            Some(t) if t.voted => t.end,
            _ => self.next_start.get(),
        };
        let undelivered = self
            .held
            .ends
            .borrow()
            .iter()
            .filter(|&&e| e > durable)
            .count() as u64;
        tracing::error!(
            "shard {shard}: sink {name} ({}): drain timeout: {undelivered} output(s) not made durable at the sink",
            self.addr
        );
        self.ctx
            .core()
            .metrics
            .sink_report(crate::net::sink::SinkReport {
                undelivered,
                ..Default::default()
            });
    }

    /// One connection: handshake, resolve, then stream until done (Ok) or the connection
    /// fails (Err).
    async fn session(
        &self,
        stream: &mut TcpStream,
        outcomes: &mut CheckpointOutcomes,
    ) -> Result<(), String> {
        let mut frames = FrameReader::new(64 * 1024, 16 * 1024 * 1024);
        let mut out = Vec::new();
        Frame::Hello {
            version: SINK_VERSION.into(),
            cookie: SINK_COOKIE.into(),
            program: "bettong".into(),
            instance: format!("bettong-shard-{}", self.ctx.shard()),
        }
        .encode(&mut out);
        Frame::Notify {
            stream: 1,
            name: self.stream_name.clone(),
            por: self.next_start.get(),
        }
        .encode(&mut out);
        TwoPc::ListUncommitted { rtag: 1 }.frame(&mut out);
        write(stream, &mut out).await?;
        // The sink's answers, in any order.
        let (mut ok, mut notified, mut listed) = (false, false, None);
        while !(ok && notified && listed.is_some()) {
            let n = futures_lite::future::or(read(stream, &mut frames), async {
                self.ctx.drain_deadline().await;
                Err("the drain timeout ran out before the sink answered".to_string())
            })
            .await?;
            frames.filled(n);
            while let Some(payload) = frames.next_frame().map_err(|e| e.to_string())? {
                match Frame::decode(payload).map_err(|e| e.to_string())? {
                    Frame::Ok { credits } if credits >= 2 => ok = true,
                    Frame::Ok { credits } => {
                        return Err(format!("the sink gave {credits} credit(s); 2 are needed"))
                    }
                    Frame::NotifyAck { success: true, .. } => notified = true,
                    Frame::NotifyAck { .. } => return Err("the sink refused the stream".into()),
                    Frame::Message {
                        stream: 0, payload, ..
                    } => match TwoPc::decode(&payload).map_err(|e| e.to_string())? {
                        TwoPc::ReplyUncommitted { txns, .. } => listed = Some(txns),
                        other => {
                            return Err(format!("unexpected {other:?} before the stream began"))
                        }
                    },
                    Frame::Error(e) => return Err(format!("the sink says: {e}")),
                    other => return Err(format!("unexpected {other:?} from the sink")),
                }
            }
        }
        self.resolve_listed(listed.unwrap_or_default(), &mut out);
        write(stream, &mut out).await?;
        loop {
            self.step(&mut out);
            write(stream, &mut out).await?;
            self.relieve();
            if self.done() {
                return Ok(());
            }
            let woke = self.wait(stream, &mut frames, outcomes).await;
            match woke {
                Woke::Read(Ok(0)) => return Err("the sink closed the connection".into()),
                Woke::Read(Err(e)) => return Err(e.to_string()),
                Woke::Read(Ok(n)) => {
                    frames.filled(n);
                    while let Some(payload) = frames.next_frame().map_err(|e| e.to_string())? {
                        self.on_sink_frame(payload)?;
                    }
                }
                Woke::Wake => {}
                Woke::Outcome(o) => self.heard(o),
                Woke::Finishing => self.finished.set(true),
                Woke::Deadline => {
                    return Err("the drain timeout ran out".into());
                }
            }
        }
    }

    /// Resolves the transactions the sink still holds, and sets where sending resumes.
    fn resolve_listed(&self, listed: Vec<String>, out: &mut Vec<u8>) {
        let mut ours = self.txn.borrow_mut();
        let mut ours_listed = false;
        for name in listed {
            let checkpoint = name
                .strip_prefix(&self.stream_name)
                .and_then(|rest| rest.strip_prefix(":c_id="))
                .and_then(|id| id.parse::<u64>().ok());
            match (checkpoint, ours.as_mut()) {
                (Some(c), Some(t)) if t.checkpoint == c => {
                    // The sink voted for our transaction in flight (the answer may have been
                    // lost with the old connection).
                    ours_listed = true;
                    if !t.voted {
                        t.voted = true;
                        if c != FINAL {
                            self.ctx.precommit(c, Some(t.end));
                        }
                    }
                }
                (Some(c), _) => {
                    let commit = self.outcome(c) == Some(true);
                    TwoPc::Phase2 { txn: name, commit }.frame(out);
                }
                (None, _) => {
                    tracing::warn!(
                        "sink {}: the sink lists a transaction {name:?} that is not this shard's; aborting it",
                        self.ctx.name()
                    );
                    TwoPc::Phase2 {
                        txn: name,
                        commit: false,
                    }
                    .frame(out);
                }
            }
        }
        // Everything after the last resolved transaction was dropped by the sink.
        let resume = match ours.as_mut() {
            Some(t) if ours_listed => t.end,
            Some(t) => {
                // It never voted: the range goes again, then Phase1 again (a final one is
                // opened again by `step`).
                let start = t.start;
                let t = ours.take().unwrap_or_else(|| unreachable!());
                if t.checkpoint != FINAL {
                    self.held
                        .barriers
                        .borrow_mut()
                        .push_front((t.checkpoint, t.end));
                }
                start
            }
            None => self.next_start.get(),
        };
        self.held.sent.set(resume);
    }

    /// Resolves the transaction in flight if its checkpoint's outcome is known, sends data up
    /// to the next barrier, and opens the next transaction there.
    fn step(&self, out: &mut Vec<u8>) {
        // Phase 2.
        let resolved = {
            let txn = self.txn.borrow();
            txn.as_ref()
                .and_then(|t| self.outcome(t.checkpoint).map(|c| (t.clone(), c)))
        };
        if let Some((t, commit)) = resolved {
            TwoPc::Phase2 {
                txn: self.txn_name(t.checkpoint),
                commit,
            }
            .frame(out);
            *self.txn.borrow_mut() = None;
            if commit {
                let mut buf = self.held.buf.borrow_mut();
                let covered = ((t.end - self.held.base.get()) as usize).min(buf.len());
                buf.drain(..covered);
                let mut ends = self.held.ends.borrow_mut();
                let done = ends.iter().take_while(|&&e| e <= t.end).count();
                ends.drain(..done);
                self.held.base.set(t.end);
                self.next_start.set(t.end);
            } else {
                // The sink cut its output back to the start: send the range again.
                self.held.sent.set(t.start);
                self.next_start.set(t.start);
            }
        }
        if self.txn.borrow().is_some() {
            return; // no data between Phase 1 and Phase 2
        }
        // Barriers of checkpoints already given up open no transaction.
        let barrier = {
            let mut barriers = self.held.barriers.borrow_mut();
            while barriers
                .front()
                .is_some_and(|(id, _)| self.outcome(*id) == Some(false))
            {
                barriers.pop_front();
            }
            barriers.front().copied()
        };
        let upto = barrier.map_or(self.held.end(), |(_, at)| at);
        self.send_data(upto, out);
        // A stop: what followed the last checkpoint goes into a final transaction, so that the
        // stop ends only once the sink has it all (its vote says so). It is never committed:
        // only a checkpoint can say the state and the sources' positions match it.
        let barrier = match barrier {
            None if self.finished.get() && self.next_start.get() < self.held.end() => {
                Some((FINAL, self.held.end()))
            }
            b => b,
        };
        if let Some((checkpoint, at)) = barrier {
            if self.held.sent.get() == at {
                if checkpoint != FINAL {
                    self.held.barriers.borrow_mut().pop_front();
                }
                let start = self.next_start.get();
                TwoPc::Phase1 {
                    txn: self.txn_name(checkpoint),
                    ranges: vec![(1, start, at)],
                }
                .frame(out);
                *self.txn.borrow_mut() = Some(Txn {
                    checkpoint,
                    start,
                    end: at,
                    voted: false,
                });
            }
        }
    }

    /// Frames the held bytes from the sent offset up to `upto` as Messages into `out`.
    fn send_data(&self, upto: u64, out: &mut Vec<u8>) {
        let buf = self.held.buf.borrow();
        let base = self.held.base.get();
        let mut at = self.held.sent.get();
        while at < upto {
            let from = (at - base) as usize;
            let len = ((upto - at) as usize).min(CHUNK);
            let start = out.len();
            out.extend_from_slice(&[0; 4]);
            message_header(out, 1, at, 0, &[]);
            out.extend_from_slice(&buf[from..from + len]);
            set_len(out, start);
            at += len as u64;
        }
        self.held.sent.set(at);
    }

    /// A frame from the sink while streaming: a vote, or an error.
    fn on_sink_frame(&self, payload: &[u8]) -> Result<(), String> {
        match Frame::decode(payload).map_err(|e| e.to_string())? {
            Frame::Message {
                stream: 0, payload, ..
            } => match TwoPc::decode(&payload).map_err(|e| e.to_string())? {
                TwoPc::Reply { txn, commit } => {
                    let mut ours = self.txn.borrow_mut();
                    match ours.as_mut() {
                        Some(t) if self.txn_name(t.checkpoint) == txn && !t.voted => {
                            if t.checkpoint == FINAL {
                                t.voted = commit;
                                if !commit {
                                    return Err(format!("the sink voted no on {txn}"));
                                }
                            } else if commit {
                                t.voted = true;
                                self.ctx.precommit(t.checkpoint, Some(t.end));
                            } else {
                                self.ctx
                                    .refuse(t.checkpoint, &format!("the sink voted no on {txn}"));
                            }
                        }
                        _ => tracing::warn!(
                            "sink {}: a vote on {txn}, which is not in flight",
                            self.ctx.name()
                        ),
                    }
                    Ok(())
                }
                TwoPc::WorkersLeft { .. } => Ok(()),
                other => Err(format!("unexpected {other:?} from the sink")),
            },
            Frame::Ack { .. } => Ok(()), // credits: TCP's flow control is what holds us back
            Frame::Error(e) => Err(format!("the sink says: {e}")),
            other => Err(format!("unexpected {other:?} from the sink")),
        }
    }

    fn relieve(&self) {
        if self.held.gauge.is_over() && (self.held.unsent() as usize) < self.held.limit {
            self.held.gauge.set(false);
            self.ctx.relieve();
        }
    }

    async fn wait(
        &self,
        stream: &mut TcpStream,
        frames: &mut FrameReader,
        outcomes: &mut CheckpointOutcomes,
    ) -> Woke {
        let read = async { Woke::Read(read_some(stream, frames).await) };
        let wake = async {
            self.held.wake.notified().await;
            Woke::Wake
        };
        let outcome = async { Woke::Outcome(outcomes.next().await) };
        let finishing = async {
            if self.finished.get() {
                std::future::pending::<()>().await;
            }
            self.ctx.finishing().await;
            Woke::Finishing
        };
        let deadline = async {
            self.ctx.drain_deadline().await;
            Woke::Deadline
        };
        use futures_lite::future::or;
        or(or(or(read, wake), or(outcome, finishing)), deadline).await
    }
}

fn deadline_passed(ctx: &SinkContext) -> bool {
    ctx.core().deadline.is_set()
}

async fn write(stream: &mut TcpStream, out: &mut Vec<u8>) -> Result<(), String> {
    if out.is_empty() {
        return Ok(());
    }
    let r = stream.write_all(out).await.map_err(|e| e.to_string());
    out.clear();
    r
}

async fn read(stream: &mut TcpStream, frames: &mut FrameReader) -> Result<usize, String> {
    let n = read_some(stream, frames).await.map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("the sink closed the connection".into());
    }
    Ok(n)
}
