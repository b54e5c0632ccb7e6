//! The hasher of the shards' state maps: rustc-hash's multiply-and-rotate, with a write of up to
//! eight bytes taken as one word.
//!
//! Why: a state computation looks its entity up once per message, and the lookup cannot start
//! before the hash is done. rustc-hash 2 (`FxHasher`) hashes a byte string (a `[u8; 4]` symbol,
//! a short `String`) through its `hash_bytes`, a 128-bit multiply and a fold before its own
//! add-and-multiply: about 14 cycles of dependent work for Market Spread's 4-byte keys, against
//! 5 here (a load, an add, a multiply, the final rotate). The map's hash never leaves the shard
//! (which shard owns a key is [`Key::stable_hash`](crate::Key::stable_hash)'s business), so
//! it may change freely; like `FxHasher` it is not meant for keys chosen to collide.
//! perf/peer `bettong-iter`, 1 worker, 16 M messages, 4 runs alternating: median 41.7 -> 44.0 M
//! msgs/s; callgrind 225.0 -> 216.9 instructions per message.
//!
//! Invariant: equal keys hash equally (every write is folded in, in order), which is all a
//! `HashMap` needs.

use std::hash::{BuildHasherDefault, Hasher};

/// rustc-hash 2's multiplier.
const K: u64 = 0xf135_7aea_2e62_a9c5;

/// See the module's documentation.
#[derive(Default, Clone, Copy)]
pub(crate) struct StateHasher(u64);

/// What a state map is built with.
pub(crate) type BuildStateHasher = BuildHasherDefault<StateHasher>;

impl StateHasher {
    #[inline(always)]
    fn add(&mut self, word: u64) {
        self.0 = self.0.wrapping_add(word).wrapping_mul(K);
    }
}

impl Hasher for StateHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length keeps "a" and "a\0" apart when a string's length is not written.
            self.add(u64::from_le_bytes(w) ^ (rest.len() as u64) << 59);
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // The multiply leaves its best bits at the top; hashbrown indexes with the bottom ones.
        self.0.rotate_left(26)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::hash::BuildHasher;

    /// Equal keys hash alike whatever their form, short strings that differ only in trailing
    /// zeros differ, and 350 four-byte symbols spread over a map's buckets.
    #[test]
    fn equal_keys_agree_and_short_keys_spread() {
        let b = BuildStateHasher::default();
        assert_eq!(b.hash_one(*b"  GE"), b.hash_one(*b"  GE"));
        assert_eq!(b.hash_one("MSFT"), b.hash_one(String::from("MSFT")));
        assert_ne!(b.hash_one([b'a']), b.hash_one([b'a', 0]));
        assert_ne!(b.hash_one(&b"a"[..]), b.hash_one(&b"a\0"[..]));
        assert_ne!(
            b.hash_one("a long key of more than eight bytes"),
            b.hash_one("a long key of more than eight bytez")
        );
        // Symbols as Market Spread's data has them: 1 to 4 capitals, right-aligned.
        let symbols: Vec<[u8; 4]> = (0..350u32)
            .map(|i| {
                let mut s = *b"    ";
                let (mut n, mut at) = (i + 1, 3);
                while n > 0 {
                    s[at] = b'A' + ((n - 1) % 26) as u8;
                    n = (n - 1) / 26;
                    at -= 1;
                }
                s
            })
            .collect();
        // The low 9 bits pick one of 512 buckets (350 keys at hashbrown's 7/8 load).
        let buckets: HashSet<u64> = symbols.iter().map(|s| b.hash_one(s) & 511).collect();
        assert!(
            buckets.len() > 250,
            "{} distinct buckets of 350 keys",
            buckets.len()
        );
        // And the map works with it.
        let mut map: HashMap<[u8; 4], usize, BuildStateHasher> = HashMap::default();
        for (i, s) in symbols.iter().enumerate() {
            map.insert(*s, i);
        }
        assert!(symbols.iter().enumerate().all(|(i, s)| map[s] == i));
    }
}
