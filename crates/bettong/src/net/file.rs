//! Framed records from a file (`--in NAME@file:PATH`): a capture replayed for a back-test.
//! The file is read in large chunks on glommio's blocking pool (a shard never waits on the
//! disk), and each chunk's frames go through the source like a TCP read's.

use std::cell::Cell;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::rc::Rc;

use crate::event::Stamp;
use crate::metrics::now_ns;
use crate::runtime::shard::{any_over, yield_after_batch, ShardCore, SourceRuntime};

/// Bytes read per chunk.
const CHUNK: usize = 256 * 1024;

/// Reads `path` from byte `from` to its end through `source`, or until the engine stops,
/// keeping `offset` at the end of the last frame emitted (what a checkpoint records). Returns
/// the event time of the last message (for the source's final watermark).
pub(crate) async fn read_framed_file(
    path: PathBuf,
    from: u64,
    offset: Rc<Cell<u64>>,
    source: &SourceRuntime,
    core: &ShardCore,
    max_frame: usize,
    watermark: &dyn Fn(u64),
) -> u64 {
    let metrics = &core.metrics;
    let file =
        std::fs::File::open(&path).and_then(|mut f| f.seek(SeekFrom::Start(from)).map(|_| f));
    let file = match file {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("source {}: {}: {e}", source.name, path.display());
            return 0;
        }
    };
    offset.set(from);
    // The file offset of `buf[0]`.
    let mut base = from;
    let mut file = Some(file);
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + max_frame);
    let mut start = 0;
    let mut event_time = 0;
    let mut errors = 0u64;
    loop {
        if core.stop.is_set() {
            break;
        }
        // Read the next chunk off the shard.
        let Some(mut f) = file.take() else { break };
        let (f, chunk) = glommio::executor()
            .spawn_blocking(move || {
                let mut chunk = vec![0u8; CHUNK];
                let n = f.read(&mut chunk);
                (
                    f,
                    n.map(|n| {
                        chunk.truncate(n);
                        chunk
                    }),
                )
            })
            .await;
        let chunk = match chunk {
            Ok(c) if c.is_empty() => break,
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    "source {}: {}: read failed: {e}",
                    source.name,
                    path.display()
                );
                break;
            }
        };
        file = Some(f);
        buf.drain(..start);
        base += start as u64;
        start = 0;
        buf.extend_from_slice(&chunk);
        let stamp = Stamp::at(now_ns());
        while buf.len() - start >= 4 {
            let len =
                u32::from_be_bytes([buf[start], buf[start + 1], buf[start + 2], buf[start + 3]])
                    as usize;
            if len > max_frame {
                metrics.frame_error_from(&source.counters);
                tracing::warn!(
                    "source {}: {}: a {len}-byte frame is over --max-frame ({max_frame}); the rest of the file is not read",
                    source.name,
                    path.display()
                );
                core.flush();
                return event_time;
            }
            if buf.len() - start < 4 + len {
                break;
            }
            let payload = &buf[start + 4..start + 4 + len];
            start += 4 + len;
            metrics.message_in_from(&source.counters);
            let decoded = source.on_frame.frame(payload, stamp);
            offset.set(base + start as u64);
            match decoded {
                Ok(t) => event_time = event_time.max(t),
                Err(e) => {
                    metrics.decode_error_from(&source.counters);
                    errors += 1;
                    if errors <= 10 {
                        tracing::warn!(
                            "source {}: {}: decode error: {e}",
                            source.name,
                            path.display()
                        );
                    }
                }
            }
            if any_over(&source.gauges) {
                core.backpressure(&source.gauges).await;
            }
        }
        // The event time reached, once per chunk (the file is one ordered input).
        if event_time > 0 {
            watermark(event_time);
        }
        core.flush();
        // Every chunk: a file always has data, so this task never runs dry.
        yield_after_batch().await;
    }
    if buf.len() > start && !core.stop.is_set() {
        metrics.truncated_from(&source.counters);
        tracing::warn!(
            "source {}: {}: the file ends in the middle of a frame ({} bytes dropped)",
            source.name,
            path.display(),
            buf.len() - start
        );
    }
    core.flush();
    event_time
}
