//! Framing, decoders and encoders.
//!
//! On the wire every source message is a frame `[u32 big-endian payload length][payload]`, the
//! format of Wallaroo's TCP sources and of the giles sender. A [`Decoder`] turns one frame's
//! payload into a message, borrowing the bytes (fixed layouts are read in place with
//! `bytemuck`); an [`Encoder`] appends an output message to the sink's outgoing buffer, so
//! encoding never allocates per message.

use std::borrow::Cow;
use std::fmt;

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
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_frame: usize,
}

impl FrameReader {
    /// A reader with a `capacity`-byte buffer (grown to fit a frame of `max_frame` bytes).
    pub fn new(capacity: usize, max_frame: usize) -> Self {
        FrameReader {
            buf: vec![0; capacity.max(max_frame + 4)],
            start: 0,
            end: 0,
            max_frame,
        }
    }

    /// The free space to read into. Moves a partial frame to the front first when that makes
    /// room, so the space is never empty.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 && (self.start == self.end || self.buf.len() - self.end < 4096) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`spare`](Self::spare).
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next whole frame's payload, `None` if the buffer holds only part of one, or an error
    /// if the header announces more than `max_frame` bytes (the stream cannot be resynchronised
    /// after that, so the caller closes the connection).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameTooLarge> {
        let avail = self.end - self.start;
        if avail < 4 {
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
        if avail < 4 + len {
            return Ok(None);
        }
        let payload = self.start + 4..self.start + 4 + len;
        self.start += 4 + len;
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
}
