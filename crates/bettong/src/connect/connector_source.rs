//! A source that speaks Wallaroo's connector protocol (v0.0.1) to its clients: the address
//! `--in NAME@HOST:PORT:COOKIE:MAX_CREDITS:REFILL_CREDITS` turns a [`TcpSource`](crate::TcpSource)'s listener
//! into one (the application does not change). The facts it follows are in
//! `../shared/reference/connector-protocol.md`; in short:
//!
//! - A connector says Hello (version `0.0.1`, the cookie) and gets `Ok(MAX_CREDITS)`; every
//!   frame it sends costs a credit, and an `Ack` refills them once `REFILL_CREDITS` or fewer
//!   are left.
//! - It Notifies each of its streams and gets `NotifyAck` with the stream's point of
//!   reference: the id of the last message that the last complete checkpoint holds, or
//!   `u64::MAX` for a stream never seen. A stream is active on one connection at a time: a
//!   Notify for a stream active elsewhere, or one whose last data is not yet in a committed
//!   checkpoint, is refused (`success = false`), and the connector asks again later.
//! - Messages carry strictly increasing ids per stream; one at or below the last id seen is a
//!   replay of something already processed and is dropped.
//! - When a checkpoint commits, each connection gets an `Ack` with the points of reference of
//!   its streams that checkpoint holds: the connector may forget what precedes them. After a
//!   crash the engine restores the last complete checkpoint and the connectors resend from
//!   the points of reference it gives back, so nothing is lost and nothing counted twice.
//! - `EosMessage` ends a stream: it is acknowledged once the checkpoint after its last
//!   message commits (at once without checkpoints).
//! - When the engine stops, each connection gets `Restart` (the address to reconnect to) and is
//!   closed: anything after its last acknowledged point must be resent to the next engine.
//!
//! # Who records what in a checkpoint
//! The points of reference of a checkpoint must match the state it holds: a stream's record
//! is the last id processed before the barrier *on the shard that owns it*. A stream moves
//! between shards when its connector reconnects, so the registry (one per source, shared by the
//! shards) keeps a stream that left a connection owned by its old shard until the checkpoint
//! that records its last message commits; only then can another connection take it. Each shard
//! records the streams it owns at its barrier, and shard 0 also records every stream's
//! *floor* (its point of reference in the last committed checkpoint), so streams that no shard
//! owns stay in every checkpoint. Recovery takes, per stream, the highest record.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::codec::FrameReader;
use crate::connect::protocol::{Body, Frame, NONE_SEEN, SOURCE_VERSION};
use crate::event::Stamp;
use crate::metrics::now_ns;
use crate::net::source::read_some;
use crate::runtime::config::ConnectorAddress;
use crate::runtime::shard::{any_over, yield_after_batch, Notify, ShardCore, SourceRuntime};

/// Who holds a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    /// No shard: a connection may take it.
    Free,
    /// A shard owns it (a connection there streams it, or its last data waits for a
    /// checkpoint to commit).
    Shard(usize),
}

struct Entry {
    holder: Holder,
    /// Its point of reference in the last committed checkpoint (or, without checkpoints, the
    /// last id seen when it was released); [`NONE_SEEN`] if none.
    floor: u64,
}

/// The streams of one connector source, shared by every shard.
pub(crate) struct Registry {
    streams: Mutex<HashMap<u64, Entry>>,
}

impl Registry {
    pub(crate) fn new() -> Arc<Registry> {
        Arc::new(Registry {
            streams: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the points of reference restored from a checkpoint (every shard calls this with
    /// the same table; the first call fills it).
    fn restore(&self, restored: &HashMap<u64, u64>) {
        let mut streams = self.lock();
        for (&stream, &por) in restored {
            let e = streams.entry(stream).or_insert(Entry {
                holder: Holder::Free,
                floor: NONE_SEEN,
            });
            if e.floor == NONE_SEEN || (por != NONE_SEEN && por > e.floor) {
                e.floor = por;
            }
        }
    }
}

/// A stream a connection on this shard is streaming.
struct Owned {
    conn: u64,
    last_seen: u64,
}

/// A stream whose connection let it go (closed, or sent EOS), held until a committed
/// checkpoint records its last message.
struct Releasing {
    last_seen: u64,
    /// The connection that ended it with EOS and waits for the final Ack.
    eos: Option<u64>,
}

/// A connection's outgoing acknowledgements, written by its own task.
#[derive(Default)]
struct Outbox {
    acks: RefCell<Vec<(u64, u64)>>,
    wake: Notify,
}

/// A checkpoint id and the `(stream, point of reference)` pairs recorded for it.
type Recorded = (u64, Vec<(u64, u64)>);

/// One shard's side of a connector source.
pub(crate) struct ConnectorShard {
    settings: ConnectorAddress,
    registry: Arc<Registry>,
    shard: usize,
    /// The source's listening address, sent in `Restart`.
    listening: String,
    checkpointing: bool,
    next_conn: Cell<u64>,
    owned: RefCell<HashMap<u64, Owned>>,
    releasing: RefCell<HashMap<u64, Releasing>>,
    /// What this shard recorded at each checkpoint in flight: `(stream, point of reference)`.
    recorded: RefCell<Vec<Recorded>>,
    outboxes: RefCell<HashMap<u64, Rc<Outbox>>>,
}

impl ConnectorShard {
    pub(crate) fn new(
        settings: ConnectorAddress,
        registry: Arc<Registry>,
        shard: usize,
        listening: SocketAddr,
        checkpointing: bool,
        restored: &HashMap<u64, u64>,
    ) -> Rc<Self> {
        registry.restore(restored);
        Rc::new(ConnectorShard {
            settings,
            registry,
            shard,
            listening: listening.to_string(),
            checkpointing,
            next_conn: Cell::new(0),
            owned: RefCell::new(HashMap::new()),
            releasing: RefCell::new(HashMap::new()),
            recorded: RefCell::new(Vec::new()),
            outboxes: RefCell::new(HashMap::new()),
        })
    }

    /// The `(stream, point of reference)` pairs this shard records at checkpoint barrier
    /// `id` (see the module notes).
    pub(crate) fn at_barrier(&self, id: u64) -> Vec<(u64, u64)> {
        let mut mine: Vec<(u64, u64)> = self
            .owned
            .borrow()
            .iter()
            .map(|(&s, o)| (s, o.last_seen))
            .chain(
                self.releasing
                    .borrow()
                    .iter()
                    .map(|(&s, r)| (s, r.last_seen)),
            )
            .filter(|&(_, por)| por != NONE_SEEN)
            .collect();
        mine.sort_unstable();
        {
            let mut recorded = self.recorded.borrow_mut();
            // Only one checkpoint is in flight; older ones were given up.
            recorded.retain(|(c, _)| *c > id.saturating_sub(4));
            recorded.push((id, mine.clone()));
        }
        if self.shard == 0 {
            let streams = self.registry.lock();
            let floors = streams
                .iter()
                .filter(|(_, e)| e.floor != NONE_SEEN)
                .map(|(&s, e)| (s, e.floor));
            let all: Vec<(u64, u64)> = mine.iter().copied().chain(floors).collect();
            return all;
        }
        mine
    }

    /// Checkpoint `id` committed or was given up: on commit, raise the floors of the streams
    /// it recorded, free the released ones, and acknowledge to their connections.
    pub(crate) fn outcome(&self, id: u64, committed: bool) {
        let recorded = {
            let mut recorded = self.recorded.borrow_mut();
            let taken = recorded
                .iter()
                .position(|(c, _)| *c == id)
                .map(|i| recorded.remove(i).1);
            recorded.retain(|(c, _)| *c > id);
            taken
        };
        let (Some(recorded), true) = (recorded, committed) else {
            return;
        };
        let mut acks: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
        {
            let mut streams = self.registry.lock();
            let mut releasing = self.releasing.borrow_mut();
            let owned = self.owned.borrow();
            for (stream, por) in recorded {
                if let Some(e) = streams.get_mut(&stream) {
                    if e.floor == NONE_SEEN || por > e.floor {
                        e.floor = por;
                    }
                }
                if let Some(o) = owned.get(&stream) {
                    acks.entry(o.conn).or_default().push((stream, por));
                } else if releasing.get(&stream).is_some_and(|r| r.last_seen == por) {
                    // Its last message is in a committed checkpoint: another connection may
                    // take it now.
                    if let Some(r) = releasing.remove(&stream) {
                        if let Some(conn) = r.eos {
                            acks.entry(conn).or_default().push((stream, por));
                        }
                    }
                    if let Some(e) = streams.get_mut(&stream) {
                        e.holder = Holder::Free;
                    }
                }
            }
        }
        self.send_acks(acks);
    }

    fn send_acks(&self, acks: HashMap<u64, Vec<(u64, u64)>>) {
        let outboxes = self.outboxes.borrow();
        for (conn, list) in acks {
            if let Some(o) = outboxes.get(&conn) {
                o.acks.borrow_mut().extend(list);
                o.wake.notify();
            }
        }
    }

    /// Lets a stream go: kept until a committed checkpoint holds its last message (with
    /// checkpoints), or freed at once (without).
    fn release(&self, stream: u64, last_seen: u64, eos: Option<u64>) {
        if self.checkpointing && last_seen != NONE_SEEN {
            self.releasing
                .borrow_mut()
                .insert(stream, Releasing { last_seen, eos });
            return;
        }
        let mut streams = self.registry.lock();
        if let Some(e) = streams.get_mut(&stream) {
            e.holder = Holder::Free;
            if last_seen != NONE_SEEN && (e.floor == NONE_SEEN || last_seen > e.floor) {
                e.floor = last_seen;
            }
        }
        drop(streams);
        if let Some(conn) = eos {
            let mut acks = HashMap::new();
            acks.insert(conn, vec![(stream, last_seen)]);
            self.send_acks(acks);
        }
    }

    /// A Notify: takes the stream for connection `conn` if no shard holds it. Returns whether
    /// it did, and the stream's point of reference.
    fn take(&self, conn: u64, stream: u64) -> (bool, u64) {
        let mut streams = self.registry.lock();
        let e = streams.entry(stream).or_insert(Entry {
            holder: Holder::Free,
            floor: NONE_SEEN,
        });
        if e.holder != Holder::Free {
            return (false, e.floor);
        }
        e.holder = Holder::Shard(self.shard);
        let floor = e.floor;
        drop(streams);
        self.owned.borrow_mut().insert(
            stream,
            Owned {
                conn,
                last_seen: floor,
            },
        );
        (true, floor)
    }
}

/// Why a connection ends.
enum End {
    /// The connector closed it, or it failed.
    Closed,
    /// A protocol error: say it to the connector, then close.
    Error(String),
    /// The engine stops: say Restart, then close.
    Stopping,
}

/// Serves one connector connection until it ends.
pub(crate) async fn serve(
    mut stream: TcpStream,
    mut frames: FrameReader,
    source: &SourceRuntime,
    core: &ShardCore,
    shard: &Rc<ConnectorShard>,
) {
    let peer = stream.peer_addr().map_or_else(
        |_| "unknown peer".to_string(),
        |a: SocketAddr| a.to_string(),
    );
    let conn = shard.next_conn.get();
    shard.next_conn.set(conn + 1);
    let outbox = Rc::new(Outbox::default());
    shard.outboxes.borrow_mut().insert(conn, outbox.clone());
    let mut session = Session {
        shard,
        conn,
        hello: false,
        credits: 0,
        out: Vec::new(),
        event_time: 0,
    };
    let slot = source.watermarks.open();
    let end = loop {
        // Wait for data, an acknowledgement to send, or the stop.
        enum Woke {
            Read(std::io::Result<usize>),
            Acks,
            Stop,
        }
        let woke = futures_lite::future::or(
            futures_lite::future::or(
                async { Woke::Read(read_some(&mut stream, &mut frames).await) },
                async {
                    outbox.wake.notified().await;
                    Woke::Acks
                },
            ),
            async {
                core.stop.wait().await;
                Woke::Stop
            },
        )
        .await;
        let n = match woke {
            Woke::Stop => break End::Stopping,
            Woke::Acks => {
                let acks = std::mem::take(&mut *outbox.acks.borrow_mut());
                session.ack(acks);
                if !session.send(&mut stream, &peer, source, core).await {
                    break End::Closed;
                }
                continue;
            }
            Woke::Read(Ok(0)) => break End::Closed,
            Woke::Read(Ok(n)) => n,
            Woke::Read(Err(e)) => {
                tracing::warn!(
                    "shard {}: source {} connector {peer}: read failed: {e}",
                    core.index,
                    source.name
                );
                break End::Closed;
            }
        };
        frames.filled(n);
        let ingest = now_ns();
        let mut ended = None;
        loop {
            match frames.next_frame() {
                Ok(Some(payload)) => {
                    if let Err(e) = session.frame(payload, ingest, source, core) {
                        ended = Some(e);
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    core.metrics.frame_error_from(&source.counters);
                    ended = Some(End::Error(e.to_string()));
                    break;
                }
            }
            if any_over(&source.gauges) {
                core.backpressure(&source.gauges).await;
            }
        }
        core.flush();
        if session.event_time > 0 {
            source.watermarks.advance(slot, session.event_time, ingest);
        }
        if ended.is_none()
            && session.hello
            && session.credits <= i64::from(shard.settings.refill_credits)
        {
            // Credits are flow control only; the progress an Ack carries comes from committed
            // checkpoints (without checkpoints, from what was processed).
            let acks = if shard.checkpointing {
                std::mem::take(&mut *outbox.acks.borrow_mut())
            } else {
                shard
                    .owned
                    .borrow()
                    .iter()
                    .filter(|(_, o)| o.conn == conn && o.last_seen != NONE_SEEN)
                    .map(|(&s, o)| (s, o.last_seen))
                    .collect()
            };
            session.ack(acks);
        }
        if !session.send(&mut stream, &peer, source, core).await {
            break End::Closed;
        }
        if let Some(end) = ended {
            break end;
        }
        // After every read: a client may always have data.
        yield_after_batch().await;
    };
    source.watermarks.close(slot);
    if matches!(end, End::Closed) && frames.buffered() > 0 {
        core.metrics.truncated_from(&source.counters);
        tracing::warn!(
            "shard {}: source {} connector {peer}: closed in the middle of a frame ({} bytes dropped; the connector resends from its acknowledged point)",
            core.index,
            source.name,
            frames.buffered()
        );
    }
    let mut last = Vec::new();
    match &end {
        End::Error(e) => {
            tracing::warn!(
                "shard {}: source {} connector {peer}: {e}; closing the connection",
                core.index,
                source.name
            );
            Frame::Error(e.clone()).encode(&mut last);
        }
        End::Stopping => Frame::Restart(shard.listening.clone()).encode(&mut last),
        End::Closed => {}
    }
    if !last.is_empty() {
        let _ = stream.write_all(&last).await;
        let _ = stream.flush().await;
    }
    let _ = stream.close().await;
    // Its streams stay this shard's until a checkpoint holds their last messages.
    let mine: Vec<(u64, u64)> = shard
        .owned
        .borrow()
        .iter()
        .filter(|(_, o)| o.conn == conn)
        .map(|(&s, o)| (s, o.last_seen))
        .collect();
    for (stream, last_seen) in mine {
        shard.owned.borrow_mut().remove(&stream);
        shard.release(stream, last_seen, None);
    }
    shard.outboxes.borrow_mut().remove(&conn);
}

/// One connection's protocol state.
struct Session<'a> {
    shard: &'a ConnectorShard,
    conn: u64,
    hello: bool,
    credits: i64,
    /// Frames to send after the current batch.
    out: Vec<u8>,
    event_time: u64,
}

impl Session<'_> {
    /// Writes the frames queued; false if the connection failed.
    async fn send(
        &mut self,
        stream: &mut TcpStream,
        peer: &str,
        source: &SourceRuntime,
        core: &ShardCore,
    ) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let written = stream.write_all(&self.out).await;
        self.out.clear();
        if let Err(e) = &written {
            tracing::warn!(
                "shard {}: source {} connector {peer}: {e}",
                core.index,
                source.name
            );
        }
        written.is_ok()
    }

    /// Queues an Ack that refills the credits and carries `acks`.
    fn ack(&mut self, acks: Vec<(u64, u64)>) {
        let max = i64::from(self.shard.settings.max_credits);
        let refill = (max - self.credits.max(0)).max(0) as u32;
        Frame::Ack {
            credits: refill,
            acks,
        }
        .encode(&mut self.out);
        self.credits = max;
    }

    /// Handles one frame (its tag and body).
    fn frame(
        &mut self,
        payload: &[u8],
        ingest: u64,
        source: &SourceRuntime,
        core: &ShardCore,
    ) -> Result<(), End> {
        self.credits -= 1;
        // Messages are read in place (the hot path: no copy of the payload).
        if payload.first() == Some(&5) {
            if !self.hello {
                return Err(End::Error("a Message before Hello".into()));
            }
            let mut b = Body::new(&payload[1..], "Message");
            let bad = |e: crate::connect::protocol::WireError| End::Error(e.0);
            let stream = b.u64().map_err(bad)?;
            let id = b.u64().map_err(bad)?;
            let _event_time = b.u64().map_err(bad)?;
            let key_len = b.u16().map_err(bad)? as usize;
            let rest = b.rest();
            if rest.len() < key_len {
                return Err(End::Error(
                    "Message: the key is longer than the frame".into(),
                ));
            }
            let body = &rest[key_len..];
            {
                let mut owned = self.shard.owned.borrow_mut();
                let Some(o) = owned.get_mut(&stream).filter(|o| o.conn == self.conn) else {
                    return Err(End::Error(format!(
                        "a Message on stream {stream}, which this connection has not notified"
                    )));
                };
                if o.last_seen != NONE_SEEN && id <= o.last_seen {
                    source.counters.duplicates.inc();
                    return Ok(());
                }
                o.last_seen = id;
            }
            core.metrics.message_in_from(&source.counters);
            match source.on_frame.frame(body, Stamp::at(ingest)) {
                Ok(t) => self.event_time = self.event_time.max(t),
                Err(e) => {
                    core.metrics.decode_error_from(&source.counters);
                    tracing::warn!(
                        "shard {}: source {}: stream {stream} message {id}: decode error: {e}",
                        core.index,
                        source.name
                    );
                }
            }
            return Ok(());
        }
        let frame = Frame::decode(payload).map_err(|e| End::Error(e.0))?;
        match frame {
            Frame::Hello {
                version, cookie, ..
            } => {
                if self.hello {
                    return Err(End::Error("a second Hello".into()));
                }
                if version != SOURCE_VERSION {
                    return Err(End::Error(format!(
                        "protocol version {version:?} is not {SOURCE_VERSION:?}"
                    )));
                }
                if cookie != self.shard.settings.cookie {
                    return Err(End::Error("wrong cookie".into()));
                }
                self.hello = true;
                self.credits = i64::from(self.shard.settings.max_credits);
                Frame::Ok {
                    credits: self.shard.settings.max_credits,
                }
                .encode(&mut self.out);
            }
            _ if !self.hello => return Err(End::Error("expected Hello first".into())),
            Frame::Notify { stream, .. } => {
                let (success, por) = self.shard.take(self.conn, stream);
                Frame::NotifyAck {
                    success,
                    stream,
                    por,
                }
                .encode(&mut self.out);
            }
            Frame::Eos { stream } => {
                let owned = self.shard.owned.borrow_mut().remove(&stream);
                match owned {
                    Some(o) if o.conn == self.conn => {
                        self.shard.release(stream, o.last_seen, Some(self.conn))
                    }
                    Some(o) => {
                        self.shard.owned.borrow_mut().insert(stream, o);
                        return Err(End::Error(format!(
                            "EosMessage for stream {stream}, which this connection has not notified"
                        )));
                    }
                    None => {
                        return Err(End::Error(format!(
                            "EosMessage for stream {stream}, which this connection has not notified"
                        )))
                    }
                }
            }
            Frame::Error(text) => {
                tracing::warn!(
                    "shard {}: source {}: the connector says: {text}",
                    core.index,
                    source.name
                );
                return Err(End::Closed);
            }
            other => {
                return Err(End::Error(format!(
                    "a connector does not send {}",
                    match other {
                        Frame::Ok { .. } => "Ok",
                        Frame::NotifyAck { .. } => "NotifyAck",
                        Frame::Ack { .. } => "Ack",
                        Frame::Restart(_) => "Restart",
                        _ => "this frame",
                    }
                )))
            }
        }
        Ok(())
    }
}
