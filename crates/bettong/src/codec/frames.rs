//! [`Frames`]: the payloads of a buffer of frames held in memory, such as a capture replayed
//! for a back-test, read ahead of use.
//!
//! Why the read-ahead: where a frame starts is known only once the length of the one before
//! it has been read, so a reader over a buffer that is not in the cache walks a chain of
//! loads, one cache line after another. The hardware's prefetcher follows the stream, but
//! not far enough ahead of a reader that reads in bursts: an
//! [`IterSource`](crate::IterSource) feeding a `key_by` exchange on more than one shard pulls
//! 256 messages before any of them is handled, so each burst waited on memory for the lines
//! it walked. Asking for the line `AHEAD` bytes on at every frame lets those loads find
//! their lines in the cache. One shard, which handles each message as it reads it, waits
//! less (the next read overlaps the last message's work) and gains little.
//!
//! perf/peer, `bettong-peer run bettong-iter --data DIR` over 24 M Market Spread messages
//! (1.2 GB), 10 rounds alternating, per-round ratio of msgs/s with the read-ahead to without:
//! 2 shards 1.14× (8 of 10 rounds above 1), 1 shard 1.04× (7 of 10); timely dataflow's 2
//! workers reading through this same iterator 1.18× (8 of 10). The distance: every one tried
//! from 512 B to 16 KiB gained on 2 shards (1.09–1.31×, 8 rounds each) and none stood out of
//! this machine's noise; 2 KiB was the steadiest over two runs (1.21× and 1.17×, 8 and 7 of 8
//! rounds above 1), and the shorter the distance, the less a line can be evicted before it is
//! read.
//!
//! **Invariant:** `rest` is a suffix of the buffer that starts at a frame's header (or is
//! empty); every payload handed out lies before it.

use std::iter::FusedIterator;

/// How many bytes ahead of the frame being read its reader asks for the cache line: about
/// 40 of Market Spread's 51-byte frames, a small part of the L1 data cache (48 KiB here), so
/// a line asked for is still there when it is read (the module's docs have the measurement).
const AHEAD: usize = 2048;

/// An iterator over the payloads of `[u32 big-endian length][payload]` frames in one buffer
/// (the format of the giles sender and of Wallaroo's TCP sources), in order, without copying.
///
/// It stops at the end of the buffer or at a frame that is cut short; [`rest`](Self::rest)
/// then holds what was not read (empty after the last whole frame). Any bytes are accepted:
/// a length past the buffer's end stops it, it never panics.
///
/// ```
/// use bettong::codec::{write_frame, Frames};
/// use bettong::IterSource;
///
/// let mut capture = Vec::new();
/// for n in 0u32..10 {
///     write_frame(&mut capture, &n.to_be_bytes());
/// }
/// capture.extend_from_slice(&[0, 0, 0, 4, 9]); // a frame cut short
/// let mut frames = Frames::new(&capture);
/// assert_eq!(frames.by_ref().count(), 10);
/// assert_eq!(frames.rest(), [0, 0, 0, 4, 9]);
///
/// // A replay on every shard: shard s of n decodes every n-th frame from the s-th (each
/// // shard walks the whole capture; for a large one, cut it into shares at frame starts).
/// let capture: &'static [u8] = capture.leak();
/// let numbers = IterSource::new(move |s, n| {
///     Frames::new(capture)
///         .skip(s)
///         .step_by(n)
///         .filter_map(|p| Some(u32::from_be_bytes(p.try_into().ok()?)))
/// });
/// # let _ = numbers;
/// ```
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Frames<'a> {
    /// The frames of `bytes`, from its first byte (a frame's header).
    pub fn new(bytes: &'a [u8]) -> Self {
        Frames { rest: bytes }
    }

    /// The bytes not read yet: from the next frame's header on, or, once the iterator has
    /// ended, what follows the last whole frame (empty, or a frame cut short).
    ///
    /// ```
    /// let bytes = [0, 0, 0, 1, 7, 0, 0];
    /// let mut frames = bettong::codec::Frames::new(&bytes);
    /// assert_eq!(frames.next(), Some(&[7u8][..]));
    /// assert_eq!(frames.rest(), [0, 0]);
    /// ```
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        prefetch(self.rest.get(AHEAD));
        let (header, after) = self.rest.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*header) as usize;
        let payload = after.get(..len)?;
        // By the invariant: `after[len..]` starts at the next frame's header (or is empty).
        self.rest = &after[len..];
        Some(payload)
    }
}

/// Once it has ended it stays ended: `rest` no longer moves.
impl FusedIterator for Frames<'_> {}

/// Asks for the cache line of `byte`, if any, to be brought into the L1 data cache.
#[inline(always)]
fn prefetch(byte: Option<&u8>) {
    #[cfg(target_arch = "x86_64")]
    if let Some(byte) = byte {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: `_mm_prefetch` needs SSE, which is in the x86_64 target's baseline (every
        // x86_64 CPU has it). A prefetch is a hint: it never faults and changes no memory,
        // and the address is a byte of a live slice.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(byte).cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = byte;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{scan_frames, write_frame};

    /// Frames of every length from 0 to 300, in a buffer far longer than the read-ahead (so
    /// the prefetch runs with a byte to ask for, then without one near the end): every
    /// payload comes back, in order, and nothing is left.
    #[test]
    fn every_payload_comes_back_in_order() {
        let payloads: Vec<Vec<u8>> = (0..3_000u32)
            .map(|i| (0..i % 301).map(|b| (b ^ i) as u8).collect())
            .collect();
        let mut buf = Vec::new();
        for p in &payloads {
            write_frame(&mut buf, p);
        }
        assert!(buf.len() > 100 * AHEAD);
        let mut frames = Frames::new(&buf);
        let read: Vec<&[u8]> = frames.by_ref().collect();
        assert_eq!(read.len(), payloads.len());
        for (i, (r, p)) in read.iter().zip(&payloads).enumerate() {
            assert_eq!(r, p, "frame {i}");
        }
        assert!(frames.rest().is_empty());
        assert_eq!(scan_frames(&buf, usize::MAX, u64::MAX).frames, 3_000);
    }

    /// A capture that ends inside a header or inside a payload stops before it, leaves it in
    /// `rest`, and stays stopped; a length of `u32::MAX` stops it without a panic.
    #[test]
    fn a_frame_cut_short_stops_it() {
        let mut whole = Vec::new();
        write_frame(&mut whole, b"abc");
        write_frame(&mut whole, b"");
        for tail in [
            &[0u8, 0][..],
            &[0, 0, 0, 5, b'x'],
            &[0xff, 0xff, 0xff, 0xff, 1, 2],
        ] {
            let mut buf = whole.clone();
            buf.extend_from_slice(tail);
            let mut frames = Frames::new(&buf);
            assert_eq!(frames.next(), Some(&b"abc"[..]));
            assert_eq!(frames.next(), Some(&b""[..]));
            assert_eq!(frames.next(), None, "tail {tail:?}");
            assert_eq!(frames.rest(), tail);
            assert_eq!(frames.next(), None);
            assert_eq!(frames.rest(), tail);
        }
        assert_eq!(Frames::new(&[]).next(), None);
    }
}
