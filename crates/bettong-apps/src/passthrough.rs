//! Passthrough: every frame that comes in goes out again, unchanged. It measures what the
//! engine itself costs (sockets, framing, the shard loop, sink batching) with no application
//! work on top, and is what `bench passthrough` compares with the engine-free `bench relay`.
//!
//! The source "Frames" takes `[u32 BE len][payload]` frames of at most [`MAX_PAYLOAD`] bytes;
//! the decoder copies each payload into a [`Frame`], a small fixed-size value (no heap
//! allocation per message); there is no `key_by`, so a frame stays on the shard whose
//! connection it arrived on; the sink writes it back as `[u32 BE len][payload]`.
//!
//! ```
//! use bettong_apps::passthrough::{decode, encode};
//! let frame = decode(b"hello").unwrap();
//! let mut out = Vec::new();
//! encode(&frame, &mut out);
//! assert_eq!(out, b"\0\0\0\x05hello");
//! ```

use std::fmt;

use bettong::codec::DecodeError;
use bettong::{Application, Pipeline, TcpSink, TcpSource};

use crate::pieces::{load16, short, whole};

/// The application's only source.
pub const SOURCE: &str = "Frames";

/// The longest payload a [`Frame`] carries. Small records are what a per-message engine cost
/// shows up on; larger ones would measure memory bandwidth instead.
pub const MAX_PAYLOAD: usize = 64;

/// One frame's payload, held inline: a passthrough message costs an 80-byte copy, never an
/// allocation.
///
/// ```
/// use bettong_apps::passthrough::Frame;
/// let f = Frame::new(b"abc").unwrap();
/// assert_eq!(f.payload(), b"abc");
/// assert!(Frame::new(&[0u8; 65]).is_err());
/// ```
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub struct Frame {
    // Bytes first and the whole value 16-byte aligned, so that every move of a frame (into
    // the decoder's `Result`, into the call that passes it on) copies the same aligned 16-byte
    // pieces and each load reads exactly what one store wrote. With `len` first and align 1,
    // the frame sat at offset 1 of its `Result` and the moves mixed 4-, 8- and 16-byte pieces
    // at odd offsets: two loads that straddled earlier stores (store-forwarding stalls) had
    // 65% of the TCP source closure's samples. `bench passthrough --shards 1`, 30 M messages,
    // 4 alternating runs (perf, cpu-clock at 4 kHz): the closure's samples 3358-3499 ->
    // 2174-2408, about 9 ns a message. The copy out of the decoder's memcpy still stalled
    // once, until `Frame::new` built the pieces in registers (see there).
    bytes: [u8; MAX_PAYLOAD],
    /// The payload's length in byte 0, zeros after it: the last 16 bytes of the value, stored
    /// with one 16-byte store like the payload's pieces. As a `u8` field the length was a
    /// 1-byte store that the next move's 16-byte load of that piece straddled: a failed
    /// forward on every frame, 56% of `DecodeEmit::frames`' samples in `bench passthrough
    /// --shards 2 --connections 8` (perf, cpu-clock).
    meta: [u8; 16],
}

impl Frame {
    /// Copies `payload` into a frame; fails when it is longer than [`MAX_PAYLOAD`].
    #[inline]
    pub fn new(payload: &[u8]) -> Result<Frame, DecodeError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(DecodeError::new(
                "passthrough carries frames of at most 64 bytes",
            ));
        }
        let mut frame = Frame {
            bytes: [0u8; MAX_PAYLOAD],
            meta: whole(payload.len() as u128),
        };
        // Each 16-byte piece is built in a register and stored whole, at the offset where
        // every later move of the frame loads it, so each of those loads reads exactly one
        // store. A `copy_from_slice` of the payload's own length was a `memcpy` whose
        // overlapping stores (two of 32 bytes for a 50-byte payload) the next 16-byte load
        // straddled: a failed store-to-load forward on every frame, 61% of the TCP source's
        // samples and 15% of all of `bench passthrough --shards 2 --connections 8` (perf,
        // cpu-clock, the shards, sender and receiver together).
        let n = payload.len();
        if n < 16 {
            frame.bytes[..16].copy_from_slice(&whole(short(payload)));
            return Ok(frame);
        }
        // The payload's last 16 bytes: the piece that the payload ends in is these, shifted
        // down to the bytes that belong to it (one load instead of a byte-by-byte copy).
        let last = load16(&payload[n - 16..]);
        // Piece by piece, each index a constant once the loop is unrolled, so each piece is a
        // whole load, the shifted `last`, or zeros, chosen by two compares. The first form, a
        // loop over `payload.chunks(16)`, took 3 instructions more per message (callgrind,
        // `bench passthrough --shards 1`: 217.7 -> 214.3).
        for i in 0..MAX_PAYLOAD / 16 {
            let start = 16 * i;
            let piece = if start + 16 <= n {
                load16(&payload[start..start + 16])
            } else if start < n {
                last >> ((start + 16 - n) * 8)
            } else {
                0
            };
            frame.bytes[start..start + 16].copy_from_slice(&whole(piece));
        }
        Ok(frame)
    }

    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[..self.len()]
    }

    /// The payload's length.
    #[inline(always)]
    fn len(&self) -> usize {
        usize::from(self.meta[0])
    }
}

impl PartialEq for Frame {
    /// Frames are equal when their payloads are (the unused tail of the buffer is not part of
    /// the value).
    fn eq(&self, other: &Frame) -> bool {
        self.payload() == other.payload()
    }
}

impl Eq for Frame {}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame({:?})", self.payload())
    }
}

/// Decodes a payload into a [`Frame`].
///
/// ```
/// use bettong_apps::passthrough::decode;
/// assert_eq!(decode(b"").unwrap().payload(), b"");
/// let err = decode(&[7u8; 100]).unwrap_err();
/// assert_eq!(err.to_string(), "passthrough carries frames of at most 64 bytes");
/// ```
pub fn decode(payload: &[u8]) -> Result<Frame, DecodeError> {
    Frame::new(payload)
}

/// Writes the frame back as `[u32 BE len][payload]`, exactly as it arrived.
///
/// ```
/// use bettong_apps::passthrough::{encode, Frame};
/// let mut out = Vec::new();
/// encode(&Frame::new(b"hi").unwrap(), &mut out);
/// assert_eq!(out, [0, 0, 0, 2, b'h', b'i']);
/// ```
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    // The whole 64-byte buffer is appended and cut back to the payload: a copy of a fixed
    // size is a few vector moves, where `bettong::codec::write_frame`'s copy of the payload's
    // own length was a `memcpy` call. `bench passthrough --shards 1` under callgrind (the
    // shard's tasks, per message): 233.0 -> 226.3 instructions.
    let end = out.len() + 4 + frame.len();
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(&frame.bytes);
    out.truncate(end);
}

/// The passthrough application: source "Frames" straight to the sink.
///
/// ```
/// let app = bettong_apps::passthrough::application();
/// assert_eq!(app.source_names(), ["Frames"]);
/// ```
pub fn application() -> Application {
    let pipeline =
        Pipeline::source(SOURCE, TcpSource::new(decode)).to_sink("Out", TcpSink::new(encode));
    Application::new("passthrough", pipeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length_up_to_the_limit() {
        for len in 0..=MAX_PAYLOAD {
            let payload: Vec<u8> = (0..len as u8).collect();
            let mut out = Vec::new();
            encode(&decode(&payload).unwrap(), &mut out);
            assert_eq!(&out[..4], (len as u32).to_be_bytes());
            assert_eq!(&out[4..], payload);
        }
        assert!(decode(&[0u8; MAX_PAYLOAD + 1]).is_err());
    }

    /// The pieces built in registers hold the payload and zeros after it, for every length
    /// (each of the paths: whole pieces, the shifted last piece, the short loads).
    #[test]
    fn a_frame_holds_its_payload_then_zeros() {
        for len in 0..=MAX_PAYLOAD {
            let payload: Vec<u8> = (1..=len as u8).collect();
            let frame = Frame::new(&payload).unwrap();
            let mut want = [0u8; MAX_PAYLOAD];
            want[..len].copy_from_slice(&payload);
            assert_eq!(frame.bytes, want, "length {len}");
            assert_eq!(frame.len(), len);
            assert_eq!(frame.meta[1..], [0u8; 15], "length {len}");
        }
    }

    #[test]
    fn equality_ignores_the_unused_tail() {
        let a = Frame::new(b"ab").unwrap();
        let mut b = Frame::new(b"abz").unwrap();
        b.meta[0] = 2;
        assert_eq!(a, b);
        assert_ne!(a, Frame::new(b"a").unwrap());
    }
}
