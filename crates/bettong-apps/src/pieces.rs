//! Values built in registers and stored 16 bytes at a time.
//!
//! A message is moved a few times between its decoder and its sink (out of a `Result`, into
//! the graph's calls), each move in 16-byte loads. A load can take its bytes from an earlier
//! store still on its way to the cache only when that one store holds all of them; a load
//! that straddles two stores, or a smaller one, waits until they have reached the cache (a
//! failed store-to-load forward, 5-10 ns on this machine's vCPUs). So the apps build the
//! 16-byte pieces of what they write in registers and store each whole.

/// Sixteen bytes as one little-endian value (`bytes` is exactly 16 long).
#[inline(always)]
pub(crate) fn load16(bytes: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(bytes);
    u128::from_le_bytes(b)
}

/// The bytes of `v`, made in a vector register so that they are stored with one 16-byte
/// store. Left to itself LLVM stored a `u128` it had computed (shifted) as two 8-byte halves,
/// and the next 16-byte load of a passthrough frame straddled them: the same failed forward
/// again.
#[inline(always)]
pub(crate) fn whole(v: u128) -> [u8; 16] {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use std::arch::x86_64::_mm_set_epi64x;
        // SAFETY: the intrinsic needs SSE2, which this build enables (the `cfg` above; SSE2
        // is part of every x86_64 target). The tests below, passthrough's
        // `round_trips_every_length_up_to_the_limit` and word count's encoding tests run
        // through here.
        bytemuck::cast(unsafe { _mm_set_epi64x((v >> 64) as i64, v as i64) })
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        v.to_le_bytes()
    }
}

/// Fewer than 16 bytes as a little-endian value, zero above them: two loads that overlap in
/// the middle (as `memcpy` does for short copies), combined in a register.
#[inline(always)]
pub(crate) fn short(bytes: &[u8]) -> u128 {
    let n = bytes.len();
    let word = |at: usize, width: usize| -> u128 {
        let mut b = [0u8; 16];
        b[..width].copy_from_slice(&bytes[at..at + width]);
        u128::from_le_bytes(b)
    };
    match n {
        // The first 8 bytes, then the last 8 moved up to end at byte n (over the overlap,
        // both hold the same bytes, so OR-ing them is exact).
        8..=15 => word(0, 8) | (word(n - 8, 8) << ((n - 8) * 8)),
        4..=7 => word(0, 4) | (word(n - 4, 4) << ((n - 4) * 8)),
        _ => bytes
            .iter()
            .enumerate()
            .fold(0, |v, (i, b)| v | (u128::from(*b) << (8 * i))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_hold_their_bytes() {
        let bytes: Vec<u8> = (1..=16).collect();
        let v = load16(&bytes);
        assert_eq!(whole(v).as_slice(), bytes.as_slice());
        for n in 0..16 {
            let mut want = [0u8; 16];
            want[..n].copy_from_slice(&bytes[..n]);
            assert_eq!(whole(short(&bytes[..n])), want, "length {n}");
        }
    }
}
