//! Framing, decoders and encoders.
//!
//! On the wire every source message is a frame `[u32 big-endian payload length][payload]`, the
//! format of Wallaroo's TCP sources and of the giles sender. A [`Decoder`] turns one frame's
//! payload into a message, borrowing the bytes (fixed layouts are read in place with
//! `bytemuck`); an [`Encoder`] appends an output message to the sink's outgoing buffer, so
//! encoding never allocates per message. [`Frames`] reads the payloads of a buffer of frames
//! already in memory (a capture replayed through an [`IterSource`](crate::IterSource)).

use std::borrow::Cow;
use std::fmt;

mod frames;

pub use frames::Frames;

/// Why a payload could not be decoded. The engine logs it, counts it, and goes on with the
/// connection's next frame.
///
/// ```
/// let e = bettong::DecodeError::new("not UTF-8");
/// assert_eq!(e.to_string(), "not UTF-8");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(Cow<'static, str>);

impl DecodeError {
    /// An error with a message for the operator.
    pub fn new(message: impl Into<Cow<'static, str>>) -> Self {
        DecodeError(message.into())
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Turns the payload of one frame into one message.
///
/// Any `Fn(&[u8]) -> Result<T, DecodeError>` is a decoder:
///
/// ```
/// use bettong::{DecodeError, Decoder};
/// let decode = |bytes: &[u8]| -> Result<u64, DecodeError> {
///     let b: [u8; 8] = bytes.try_into().map_err(|_| DecodeError::new("need 8 bytes"))?;
///     Ok(u64::from_be_bytes(b))
/// };
/// assert_eq!(decode.decode(&7u64.to_be_bytes()), Ok(7));
/// assert!(decode.decode(b"short").is_err());
/// ```
pub trait Decoder: Send + Sync + 'static {
    /// The message type this decoder produces.
    type Out: Send + 'static;
    /// Decodes one payload (the frame without its length header).
    fn decode(&self, payload: &[u8]) -> Result<Self::Out, DecodeError>;
}

impl<F, T> Decoder for F
where
    F: Fn(&[u8]) -> Result<T, DecodeError> + Send + Sync + 'static,
    T: Send + 'static,
{
    type Out = T;
    fn decode(&self, payload: &[u8]) -> Result<T, DecodeError> {
        self(payload)
    }
}

/// Appends the bytes of one output message to a sink's buffer. The encoder writes the whole
/// wire form, framing included if the receiver expects frames.
///
/// Any `Fn(&T, &mut Vec<u8>)` is an encoder:
///
/// ```
/// use bettong::Encoder;
/// let encode = |n: &u64, out: &mut Vec<u8>| out.extend_from_slice(format!("{n}\n").as_bytes());
/// let mut buf = Vec::new();
/// encode.encode(&42, &mut buf);
/// assert_eq!(buf, b"42\n");
/// ```
pub trait Encoder<T>: Send + Sync + 'static {
    /// Appends `msg` to `out`.
    fn encode(&self, msg: &T, out: &mut Vec<u8>);
}

impl<F, T> Encoder<T> for F
where
    F: Fn(&T, &mut Vec<u8>) + Send + Sync + 'static,
{
    fn encode(&self, msg: &T, out: &mut Vec<u8>) {
        self(msg, out)
    }
}

/// Appends `payload` as one frame: `[u32 BE length][payload]`.
///
/// ```
/// let mut out = Vec::new();
/// bettong::codec::write_frame(&mut out, b"hi");
/// assert_eq!(out, [0, 0, 0, 2, b'h', b'i']);
/// ```
pub fn write_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Where the whole frames at the start of a buffer end; the result of [`scan_frames`].
///
/// ```
/// use bettong::codec::{scan_frames, write_frame, FrameScan};
/// let mut buf = Vec::new();
/// write_frame(&mut buf, b"abc");
/// assert_eq!(
///     scan_frames(&buf, 16, u64::MAX),
///     FrameScan { end: 7, frames: 1, need: None, oversized: None }
/// );
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameScan {
    /// Bytes taken by the whole frames, headers included: `buf[..end]` can be forwarded as is.
    pub end: usize,
    /// How many whole frames `buf[..end]` holds.
    pub frames: u64,
    /// Total size (header included) of the next, incomplete frame, once its whole header has
    /// arrived, so a caller can grow its buffer for a frame larger than it. `None` when the
    /// scan stopped for another reason (end of data inside a header, `limit`, or an oversized
    /// header).
    pub need: Option<usize>,
    /// The length announced by a header over `max_frame` that follows the whole frames. The
    /// stream cannot be resynchronised after it, so callers close the connection (after
    /// delivering `buf[..end]` if they wish).
    pub oversized: Option<usize>,
}

/// Walks the `[u32 BE len][payload]` frames at the start of `buf`, counting at most `limit`
/// whole frames, without copying or allocating.
///
/// This is for callers that handle frames in bulk (forward or write `buf[..end]` with one
/// syscall) rather than one payload at a time as [`FrameReader`] does. The scan stops at the
/// first of: `limit` frames, a header announcing more than `max_frame` bytes (reported in
/// [`FrameScan::oversized`]), an incomplete frame (its size in [`FrameScan::need`] when the
/// header is complete), or the end of `buf`. Any bytes are accepted: a peer cannot make it
/// panic.
///
/// ```
/// use bettong::codec::{scan_frames, write_frame};
/// let mut buf = Vec::new();
/// write_frame(&mut buf, b"ab");
/// write_frame(&mut buf, b"");
/// buf.extend_from_slice(&[0, 0, 0, 5, b'x']); // the start of a 5-byte frame
/// let scan = scan_frames(&buf, 1024, u64::MAX);
/// assert_eq!((scan.end, scan.frames, scan.need), (10, 2, Some(9)));
/// assert_eq!(scan_frames(&buf, 1024, 1).end, 6);
/// assert_eq!(scan_frames(&buf, 4, u64::MAX).oversized, Some(5));
/// ```
pub fn scan_frames(buf: &[u8], max_frame: usize, limit: u64) -> FrameScan {
    let mut scan = FrameScan::default();
    while scan.frames < limit {
        let rest = &buf[scan.end..];
        let Some(&[a, b, c, d]) = rest.get(..4) else {
            break;
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if len > max_frame {
            scan.oversized = Some(len);
            break;
        }
        // Compared as `rest - 4 < len` (not `4 + len`) so no length can overflow.
        if rest.len() - 4 < len {
            scan.need = Some(len.saturating_add(4));
            break;
        }
        scan.end += 4 + len;
        scan.frames += 1;
    }
    scan
}

/// A frame header announced more bytes than the source accepts (`--max-frame`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTooLarge {
    /// The length the header announced.
    pub len: usize,
    /// The largest payload accepted.
    pub max: usize,
}

impl fmt::Display for FrameTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frame of {} bytes is over the limit of {} (--max-frame)",
            self.len, self.max
        )
    }
}

/// A shard's stock of large read buffers, lent to the connections that are busy right now.
///
/// A connection that is idle holds no read buffer at all, and one with a little traffic holds a
/// small one; only a connection whose reads fill its buffer borrows a large one, and gives it
/// back as soon as its socket has nothing more to read (see [`FrameReader::idle`]). So memory
/// follows the traffic, not the number of connections, and a burst of busy connections reuses
/// the same few buffers instead of allocating (and zeroing) new ones. Not `Send`: one per shard.
///
/// ```
/// use bettong::codec::ReadBuffers;
/// let pool = ReadBuffers::new(1024, 2);
/// assert_eq!(pool.size(), 1024);
/// assert_eq!(pool.free(), 0);
/// ```
#[derive(Debug)]
pub struct ReadBuffers {
    size: usize,
    keep: usize,
    free: std::cell::RefCell<Vec<Vec<u8>>>,
}

impl ReadBuffers {
    /// A pool of `size`-byte buffers that keeps at most `keep` of them while they are unused
    /// (the rest are freed, so a burst does not pin its memory).
    pub fn new(size: usize, keep: usize) -> std::rc::Rc<Self> {
        std::rc::Rc::new(ReadBuffers {
            size,
            keep,
            free: std::cell::RefCell::new(Vec::new()),
        })
    }

    /// The size of the buffers this pool lends.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How many unused buffers the pool holds now.
    pub fn free(&self) -> usize {
        self.free.borrow().len()
    }

    fn take(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; self.size])
    }

    fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        if buf.len() == self.size && free.len() < self.keep {
            free.push(buf);
        }
    }
}

/// Reassembles frames from the byte stream of one connection, reading straight into its own
/// buffer and handing out payloads that borrow it, so a frame is never copied.
///
/// ```
/// use bettong::codec::FrameReader;
/// let mut r = FrameReader::new(64, 16);
/// let spare = r.spare();
/// spare[..7].copy_from_slice(&[0, 0, 0, 3, b'a', b'b', b'c']);
/// r.filled(7);
/// assert_eq!(r.next_frame(), Ok(Some(&b"abc"[..])));
/// assert_eq!(r.next_frame(), Ok(None));
/// ```
///
/// A reader made with [`FrameReader::adaptive`] sizes its buffer to the traffic: none while
/// the connection is idle, a small one for the first read, a large one (borrowed from the
/// shard's [`ReadBuffers`]) once a read fills the buffer, and one that fits a frame larger
/// than that.
///
/// ```
/// use bettong::codec::{FrameReader, ReadBuffers};
/// let pool = ReadBuffers::new(1024, 4);
/// let mut r = FrameReader::adaptive(64, pool.clone(), 16);
/// assert_eq!(r.capacity(), 0); // nothing until the first read
/// let n = r.spare().len();
/// assert_eq!(n, 64);
/// r.filled(n); // the read filled the buffer: the next one gets a large buffer
/// assert_eq!(r.spare().len() + r.buffered(), 1024);
/// while let Ok(Some(_)) = r.next_frame() {}
/// r.idle(); // the socket had nothing more: the large buffer goes back to the pool
/// assert_eq!((r.capacity(), pool.free()), (0, 1));
/// ```
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_frame: usize,
    /// The first buffer's size (all sizes are the same for a fixed reader).
    small: usize,
    /// Where large buffers come from; `None` for a fixed-size reader.
    pool: Option<std::rc::Rc<ReadBuffers>>,
    /// Total size (header included) of the incomplete frame at `start`, when its header is in.
    need: usize,
    /// The last read filled all the space it was given: more is probably waiting.
    grow: bool,
    /// Start the next fresh buffer large (the traffic that went idle was heavy).
    hint_large: bool,
    /// The length of the last slice [`spare`](Self::spare) handed out.
    last_spare: usize,
    /// The last read filled all the space it was given (see [`was_full`](Self::was_full)).
    full: bool,
}

impl FrameReader {
    /// A reader with a fixed `capacity`-byte buffer (grown to fit a frame of `max_frame` bytes).
    pub fn new(capacity: usize, max_frame: usize) -> Self {
        let size = capacity.max(max_frame.saturating_add(4));
        FrameReader {
            buf: vec![0; size],
            start: 0,
            end: 0,
            max_frame,
            small: size,
            pool: None,
            need: 0,
            grow: false,
            hint_large: false,
            last_spare: 0,
            full: false,
        }
    }

    /// A reader that holds no buffer until its first read, then one of `small` bytes, and
    /// borrows one from `pool` while reads fill its buffer (or a frame needs the room); a frame
    /// larger than the pool's buffers gets a buffer of its own size. [`idle`](Self::idle) gives
    /// the memory back.
    pub fn adaptive(small: usize, pool: std::rc::Rc<ReadBuffers>, max_frame: usize) -> Self {
        FrameReader {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_frame,
            // At least a header and a little more, so the space handed out is never empty.
            small: small.max(16),
            pool: Some(pool),
            need: 0,
            grow: false,
            hint_large: false,
            last_spare: 0,
            full: false,
        }
    }

    /// The size of the buffer held now (0 for an idle adaptive reader).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// The buffer size class that holds `bytes`: small, the pool's size, or exactly `bytes`.
    fn class(&self, bytes: usize) -> usize {
        match &self.pool {
            None => self.small,
            Some(_) if bytes <= self.small => self.small,
            Some(pool) => bytes.max(pool.size()),
        }
    }

    /// Moves the buffered bytes into a buffer of `size` bytes and releases the old one.
    fn resize(&mut self, size: usize) {
        let mut new = match &self.pool {
            Some(pool) if size == pool.size() => pool.take(),
            _ => vec![0; size],
        };
        let data = self.end - self.start;
        new[..data].copy_from_slice(&self.buf[self.start..self.end]);
        let old = std::mem::replace(&mut self.buf, new);
        if let Some(pool) = &self.pool {
            pool.give(old);
        }
        self.start = 0;
        self.end = data;
    }

    /// The free space to read into. Grows the buffer when the last read filled it or the frame
    /// being received does not fit, and moves a partial frame to the front when that makes
    /// room, so the space is never empty.
    pub fn spare(&mut self) -> &mut [u8] {
        let mut want = if self.buf.is_empty() {
            if self.hint_large {
                self.class(self.small + 1)
            } else {
                self.small
            }
        } else {
            self.buf.len()
        };
        if self.grow {
            // The pool's size (a fixed reader's class is its one size, so it never grows).
            want = want.max(self.class(self.small + 1));
            self.grow = false;
        }
        want = self.class(want.max(self.need));
        if want > self.buf.len() {
            self.resize(want);
        } else if self.start > 0
            && (self.start == self.end
                || self.buf.len() - self.end < 4096
                || self.start + self.need > self.buf.len())
        {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        self.last_spare = self.buf.len() - self.end;
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`spare`](Self::spare).
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
        self.full = n > 0 && n == self.last_spare;
        if self.pool.is_some() {
            // A read that fills all it was given leaves more in the socket: read more per call.
            self.grow = self.full;
            if self.grow {
                self.hint_large = true;
            } else if n <= self.small / 4 {
                self.hint_large = false;
            }
        }
    }

    /// True when the last [`filled`](Self::filled) read took all the space it was given: the
    /// socket probably holds more.
    ///
    /// ```
    /// let mut r = bettong::codec::FrameReader::new(64, 16);
    /// let room = r.spare().len();
    /// r.filled(room);
    /// assert!(r.was_full());
    /// let _ = r.spare();
    /// r.filled(1);
    /// assert!(!r.was_full());
    /// ```
    pub fn was_full(&self) -> bool {
        self.full
    }

    /// Tells the reader that its socket has nothing more to read for now. An adaptive reader
    /// gives its memory back: all of it when no partial frame is buffered, else all but a
    /// buffer that fits the partial frame. (A fixed reader keeps its buffer.)
    pub fn idle(&mut self) {
        if self.pool.is_none() {
            return;
        }
        self.grow = false;
        let data = self.end - self.start;
        if data == 0 {
            let old = std::mem::take(&mut self.buf);
            if let Some(pool) = &self.pool {
                pool.give(old);
            }
            self.start = 0;
            self.end = 0;
            return;
        }
        let keep = self.class(data.max(self.need));
        if keep < self.buf.len() {
            self.resize(keep);
        }
    }

    /// The next whole frame's payload, `None` if the buffer holds only part of one, or an error
    /// if the header announces more than `max_frame` bytes (the stream cannot be resynchronised
    /// after that, so the caller closes the connection).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameTooLarge> {
        let avail = self.end - self.start;
        if avail < 4 {
            self.need = 0;
            return Ok(None);
        }
        let h = &self.buf[self.start..self.start + 4];
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len > self.max_frame {
            return Err(FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        // `len <= max_frame`, which callers bound (the engine: 64 MiB), so this cannot overflow.
        let total = len.saturating_add(4);
        if avail < total {
            self.need = total;
            return Ok(None);
        }
        self.need = 0;
        let payload = self.start + 4..self.start + total;
        self.start += total;
        Ok(Some(&self.buf[payload]))
    }

    /// Bytes received that are not yet a whole frame (non-zero at end of stream means the
    /// peer cut a frame short).
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(r: &mut FrameReader, bytes: &[u8]) {
        let s = r.spare();
        s[..bytes.len()].copy_from_slice(bytes);
        r.filled(bytes.len());
    }

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            write_frame(&mut out, p);
        }
        out
    }

    #[test]
    fn scan_finds_whole_frames_and_the_size_of_the_next() {
        let mut data = framed(&[b"ab", b"", b"cde"]);
        let whole = data.len();
        data.extend_from_slice(&[0, 0, 0, 9, 1, 2]);
        let scan = scan_frames(&data, 100, u64::MAX);
        assert_eq!(
            scan,
            FrameScan {
                end: whole,
                frames: 3,
                need: Some(13),
                oversized: None
            }
        );
        assert_eq!(scan_frames(&data, 100, 2).end, 6 + 4);
        // A partial header is simply incomplete.
        assert_eq!(scan_frames(&[0, 0], 100, u64::MAX).need, None);
        assert_eq!(scan_frames(&data[..whole + 2], 100, u64::MAX).need, None);
        assert_eq!(scan_frames(&[], 100, u64::MAX).frames, 0);
    }

    #[test]
    fn scan_stops_at_an_oversized_header() {
        let mut data = framed(&[b"ok"]);
        data.extend_from_slice(&1001u32.to_be_bytes());
        let scan = scan_frames(&data, 1000, u64::MAX);
        assert_eq!((scan.end, scan.frames, scan.oversized), (6, 1, Some(1001)));
    }

    #[test]
    fn scan_flags_a_header_just_over_a_large_limit() {
        // The relay's limit (16 MiB): the header right above it is refused, not waited for.
        const MAX: usize = 16 * 1024 * 1024;
        let mut data = framed(&[b"ok"]);
        data.extend_from_slice(&(MAX as u32 + 1).to_be_bytes());
        let scan = scan_frames(&data, MAX, u64::MAX);
        assert_eq!((scan.end, scan.frames), (6, 1));
        assert_eq!(scan.oversized, Some(MAX + 1));
        assert_eq!(scan.need, None);
    }

    #[test]
    fn scan_of_a_frame_at_the_limit_asks_for_its_size() {
        let mut data = 10u32.to_be_bytes().to_vec();
        data.push(1);
        assert_eq!(scan_frames(&data, 10, u64::MAX).need, Some(14));
        assert_eq!(scan_frames(&data, 10, 0), FrameScan::default());
    }

    #[test]
    fn frames_split_across_reads() {
        let mut wire = Vec::new();
        for p in [&b"one"[..], b"", b"three"] {
            write_frame(&mut wire, p);
        }
        let mut r = FrameReader::new(8, 16);
        let mut got = Vec::new();
        for b in wire.chunks(3) {
            feed(&mut r, b);
            while let Some(p) = r.next_frame().unwrap() {
                got.push(p.to_vec());
            }
        }
        assert_eq!(got, vec![b"one".to_vec(), vec![], b"three".to_vec()]);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn oversized_header_is_an_error() {
        let mut r = FrameReader::new(64, 10);
        feed(&mut r, &[0, 0, 0, 11]);
        assert_eq!(r.next_frame(), Err(FrameTooLarge { len: 11, max: 10 }));
    }

    #[test]
    fn partial_frame_is_reported() {
        let mut r = FrameReader::new(64, 10);
        feed(&mut r, &[0, 0, 0, 5, 1, 2]);
        assert_eq!(r.next_frame(), Ok(None));
        assert_eq!(r.buffered(), 6);
    }

    fn pool() -> std::rc::Rc<ReadBuffers> {
        ReadBuffers::new(256, 2)
    }

    #[test]
    fn adaptive_reader_grows_on_full_reads_and_returns_memory_when_idle() {
        let pool = pool();
        let mut r = FrameReader::adaptive(32, pool.clone(), 100);
        assert_eq!(r.capacity(), 0);
        // A small read: the buffer stays small.
        feed(&mut r, &framed(&[b"abc"]));
        assert_eq!(r.capacity(), 32);
        assert_eq!(r.next_frame(), Ok(Some(&b"abc"[..])));
        r.idle();
        assert_eq!(r.capacity(), 0, "an idle connection holds no buffer");
        // Reads that fill the buffer: the next read gets a pool buffer.
        let wire = framed(&[&[7u8; 26][..]; 40]);
        let mut got = 0;
        let mut chunks = wire.as_slice();
        while !chunks.is_empty() {
            let spare = r.spare();
            let n = spare.len().min(chunks.len());
            spare[..n].copy_from_slice(&chunks[..n]);
            r.filled(n);
            chunks = &chunks[n..];
            while let Some(p) = r.next_frame().unwrap() {
                assert_eq!(p, &[7u8; 26][..]);
                got += 1;
            }
        }
        assert_eq!(got, 40);
        assert_eq!(r.capacity(), 256);
        r.idle();
        assert_eq!((r.capacity(), pool.free()), (0, 1));
        // The next burst starts large again (the hint), from the pool.
        assert_eq!(r.spare().len(), 256);
        assert_eq!(pool.free(), 0);
    }

    #[test]
    fn adaptive_reader_grows_for_a_large_frame_and_shrinks_to_a_partial_one() {
        let pool = pool();
        let mut r = FrameReader::adaptive(32, pool.clone(), 1000);
        let big = vec![9u8; 600];
        let wire = framed(&[&big, b"tail"]);
        let mut got = Vec::new();
        let mut rest = wire.as_slice();
        while !rest.is_empty() {
            // Reads of at most 20 bytes, and no more than the space handed out.
            let spare = r.spare();
            let n = spare.len().min(rest.len()).min(20);
            spare[..n].copy_from_slice(&rest[..n]);
            r.filled(n);
            rest = &rest[n..];
            while let Some(p) = r.next_frame().unwrap() {
                got.push(p.to_vec());
            }
        }
        assert_eq!(got, vec![big, b"tail".to_vec()]);
        assert!(
            r.capacity() >= 604,
            "grew to fit the frame: {}",
            r.capacity()
        );
        // A partial small frame, then idle: the big buffer is released, the partial kept.
        feed(&mut r, &[0, 0, 0, 5, b'x']);
        r.idle();
        assert_eq!((r.capacity(), r.buffered()), (32, 5));
        feed(&mut r, b"yzwv");
        assert_eq!(r.next_frame(), Ok(Some(&b"xyzwv"[..])));
    }

    #[test]
    fn pool_keeps_a_bounded_number_of_buffers() {
        let pool = ReadBuffers::new(64, 2);
        let bufs: Vec<_> = (0..5).map(|_| pool.take()).collect();
        for b in bufs {
            pool.give(b);
        }
        assert_eq!(pool.free(), 2);
        pool.give(vec![0; 10]); // not the pool's size: dropped
        assert_eq!(pool.free(), 2);
    }

    #[test]
    fn fixed_reader_keeps_its_buffer_when_idle() {
        let mut r = FrameReader::new(64, 16);
        r.idle();
        assert_eq!(r.capacity(), 64);
    }
}
