//! The TCP connectors: a source that listens (one listener per shard on the same port,
//! SO_REUSEPORT, so the kernel spreads connections over the shards) and reads
//! `[u32 BE len][payload]` frames, and a sink that keeps one connection per shard and writes
//! the encoder's bytes to it in batches. The socket work is in `crate::net`; this module fits
//! it to the [`Source`] and [`Sink`] traits like any other connector.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;

use crate::codec::{Decoder, Encoder};
use crate::connect::{Opened, Sink, SinkContext, SinkInput, SinkShard, Source, SourceContext};
use crate::error::Error;
use crate::event::Stamp;
use crate::net::sink::SinkBuffer;
use crate::net::source::{accept_loop, fd_reserve, Connections};
use crate::runtime::config::parse_addr;
use crate::runtime::shard::SourceRuntime;

/// A TCP source: a listener (one per shard, same port) taking `[u32 BE len][payload]` frames,
/// each decoded into one message by the decoder. Its address comes from `--in NAME@HOST:PORT`.
///
/// ```
/// use bettong::{DecodeError, TcpSource};
/// let text = TcpSource::new(|b: &[u8]| -> Result<String, DecodeError> {
///     String::from_utf8(b.to_vec()).map_err(|_| DecodeError::new("not UTF-8"))
/// });
/// # let _ = text;
/// ```
pub struct TcpSource<D> {
    decoder: Arc<D>,
}

impl<D: Decoder> TcpSource<D> {
    /// A TCP source that decodes each frame with `decoder`.
    pub fn new(decoder: D) -> Self {
        TcpSource {
            decoder: Arc::new(decoder),
        }
    }
}

impl<D: Decoder> Source for TcpSource<D> {
    type Out = D::Out;
    type Part = std::net::TcpListener;

    fn takes_address(&self) -> bool {
        true
    }

    /// Binds one listener per shard on the address (SO_REUSEPORT), here on the starting
    /// thread so that port 0 resolves to one real port that all shards share.
    fn open(
        &self,
        name: &str,
        address: Option<&str>,
        shards: usize,
    ) -> Result<Opened<std::net::TcpListener>, Error> {
        let connector = |message: String| Error::Connector {
            name: format!("source {name}"),
            message,
        };
        let address = address.ok_or_else(|| connector("no address given".to_string()))?;
        let mut bound = parse_addr(address).map_err(connector)?;
        crate::runtime::probe_port(bound)
            .map_err(|e| connector(format!("cannot listen on {bound}: {e}")))?;
        let mut parts = Vec::with_capacity(shards);
        for _ in 0..shards {
            let l = crate::runtime::bind_reuseport(bound)
                .map_err(|e| connector(format!("cannot listen on {bound}: {e}")))?;
            bound = l.local_addr().map_err(|e| connector(e.to_string()))?;
            parts.push(l);
        }
        Ok(Opened {
            parts,
            endpoint: Some(bound.to_string()),
        })
    }

    fn run(
        &self,
        listener: std::net::TcpListener,
        ctx: SourceContext<D::Out>,
    ) -> impl Future<Output = ()> + 'static {
        let decoder = self.decoder.clone();
        async move {
            let core = ctx.core().clone();
            let emit = ctx.clone();
            let source = Rc::new(SourceRuntime {
                name: ctx.name().to_string(),
                on_frame: Box::new(move |payload, ingest| {
                    emit.emit(decoder.decode(payload)?, Stamp::at(ingest));
                    Ok(())
                }),
                gauges: ctx.gauges().clone(),
                counters: core.metrics.source(ctx.name()),
            });
            let conns = Rc::new(Connections::default());
            let fd = listener.into_raw_fd();
            // SAFETY: into_raw_fd gave up ownership of the open listening socket; the glommio
            // listener takes it over and closes it on drop.
            let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
            let counters = source.counters.clone();
            let accept = glommio::spawn_local(accept_loop(
                listener,
                fd,
                source,
                core.clone(),
                conns.clone(),
                core.config.max_frame,
                fd_reserve(core.shards, core.config.outputs.len()),
            ));
            ctx.stopping().await;
            conns.stop();
            accept.await;
            // Read every open connection to its end, or until the drain timeout cuts the ones
            // still open (an idle client must not hold the stop forever).
            let cut = async {
                ctx.drain_deadline().await;
                let cut = conns.cut();
                if cut > 0 {
                    tracing::warn!(
                        "shard {}: source {}: drain timeout: cutting {cut} open connection(s)",
                        core.index,
                        ctx.name()
                    );
                }
                core.metrics.cut_connections(cut as u64);
                counters.cut.add(cut as u64);
                conns.until_all_closed().await;
            };
            futures_lite::future::or(conns.until_all_closed(), cut).await;
        }
    }
}

/// A TCP sink: every shard keeps one connection to the `--out NAME@HOST:PORT` address and
/// writes the encoder's bytes to it in batches.
///
/// ```
/// use bettong::TcpSink;
/// let lines = TcpSink::new(|s: &String, out: &mut Vec<u8>| {
///     out.extend_from_slice(s.as_bytes());
///     out.push(b'\n');
/// });
/// # let _ = lines;
/// ```
pub struct TcpSink<E> {
    encoder: Arc<E>,
}

impl<E> TcpSink<E> {
    /// A TCP sink that writes each output as `encoder` encodes it.
    pub fn new(encoder: E) -> Self {
        TcpSink {
            encoder: Arc::new(encoder),
        }
    }
}

impl<T: Send + 'static, E: Encoder<T>> Sink<T> for TcpSink<E> {
    type Part = SocketAddr;

    fn takes_address(&self) -> bool {
        true
    }

    fn open(
        &self,
        name: &str,
        address: Option<&str>,
        shards: usize,
    ) -> Result<Opened<SocketAddr>, Error> {
        let connector = |message: String| Error::Connector {
            name: format!("sink {name}"),
            message,
        };
        let address = address.ok_or_else(|| connector("no address given".to_string()))?;
        let addr = parse_addr(address).map_err(connector)?;
        Ok(Opened {
            parts: vec![addr; shards],
            endpoint: Some(addr.to_string()),
        })
    }

    fn start(&self, addr: SocketAddr, ctx: SinkContext) -> SinkShard<T> {
        let core = ctx.core().clone();
        let buffer = Rc::new(
            SinkBuffer::new(core.config.sink_buffer).counted(core.metrics.sink(ctx.name())),
        );
        ctx.add_gauge(buffer.gauge.clone());
        let writer = buffer.clone().writer(addr, core.index, core.relief.clone());
        let b = buffer.clone();
        let task = async move {
            let finishing = async {
                ctx.finishing().await;
                b.finish();
            };
            // At the drain deadline the writer gives up (cuts a pending write, counts what the
            // peer has not acknowledged as undelivered) and ends.
            let give_up = async {
                ctx.drain_deadline().await;
                b.abandon(&core.relief);
                std::future::pending::<((), ())>().await
            };
            futures_lite::future::or(futures_lite::future::zip(writer, finishing), give_up).await;
            core.metrics.sink_report(b.report());
        };
        SinkShard::new(TcpSinkInput {
            buffer,
            encoder: self.encoder.clone(),
        })
        .with_task(task)
    }
}

struct TcpSinkInput<E> {
    buffer: Rc<SinkBuffer>,
    encoder: Arc<E>,
}

impl<T, E: Encoder<T>> SinkInput<T> for TcpSinkInput<E> {
    #[inline]
    fn write(&self, msg: T, _stamp: Stamp) {
        self.buffer.append(|out| self.encoder.encode(&msg, out));
    }
}
