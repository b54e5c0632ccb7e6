//! A shard's cache of the owning shard of small keys, in front of the stable hash.
//!
//! Why: routing Market Spread's 4-byte symbols on 2 shards, the exchange's branch "is this key
//! mine?" goes either way at random, and it is resolved only after the stable hash (FNV-1a over
//! the bytes, then murmur3's finaliser: about 35 cycles of dependent multiplies), so each
//! misprediction waited for all of it. A hit here is one multiply and one load. perf/peer
//! `bettong-iter`, 2 workers, 16 M messages, 5 runs alternating: median 24.2 -> 26.1 M msgs/s
//! (callgrind: 340.9 -> 327.0 instructions per message); `bench market-spread` (TCP, 2
//! shards), 4 rounds: 13.9 -> 15.0 M.
//!
//! The cache maps a key's [`small_bits`](crate::Key::small_bits) to the shard that
//! [`shard_for`](crate::state::shard_for) gives, and is filled from it, so a hit and a miss
//! route a key alike: the key → shard mapping stays the stable hash's (checkpoints depend on it).
//!
//! **Invariant:** every entry is 0 (empty) or `(bits + 1) << SHARD_BITS | shard_for(bits' key)`
//! for a key whose `small_bits` is `bits`. `small_bits` is one-to-one per key type and below
//! 2^53, so `bits + 1` fits above the shard and a tag match means the same key.

use std::cell::Cell;

/// Bits of an entry that hold the shard: shards are numbered below 1024 (one per core, and
/// cores are numbered up to [`MAX_CORE`](crate::runtime::config::MAX_CORE)).
const SHARD_BITS: u32 = 10;

/// Sets of two entries: 16 KiB, at most a quarter of it touched by a few hundred keys. With
/// 350 keys (Market Spread's symbols) about 1 set in 200 has more than two and evicts.
const SETS: usize = 1024;

/// The most shards a cache can name.
pub(crate) const MAX_SHARDS: usize = 1 << SHARD_BITS;

/// The largest `small_bits` a key may have (one below 2^53).
pub(crate) const MAX_BITS: u64 = (1 << 53) - 1;

/// The set of the key whose `small_bits` is `bits`, below [`SETS`]. Fibonacci hashing: the
/// multiply's top bits depend on every bit of the key.
#[inline(always)]
fn set_of(bits: u64) -> usize {
    (bits.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SETS.ilog2())) as usize
}

/// A two-way set-associative cache from small keys to their shard, for one shard's thread
/// (it is not `Sync`).
pub(crate) struct RouteCache {
    /// An array rather than a slice: its length is in the type, so the set index (the top
    /// bits of a multiply, always below `SETS`) needs no bounds check.
    sets: Box<[[Cell<u64>; 2]; SETS]>,
}

impl RouteCache {
    /// An empty cache for an engine of `shards` shards; `None` when they are too many to
    /// name in an entry.
    pub(crate) fn new(shards: usize) -> Option<Self> {
        (shards <= MAX_SHARDS).then(|| RouteCache {
            sets: Box::new(std::array::from_fn(|_| [Cell::new(0), Cell::new(0)])),
        })
    }

    /// The shard of the key whose `small_bits` is `bits`: from the cache, or from `slow` (the
    /// stable hash's answer) on a miss, which the cache then keeps. Bits over [`MAX_BITS`] are
    /// never cached.
    #[inline]
    pub(crate) fn shard(&self, bits: u64, slow: impl FnOnce() -> usize) -> usize {
        if bits > MAX_BITS {
            // A `Key` implementation outside its contract: not cached, still routed right.
            return slow();
        }
        let tag = bits + 1;
        let set = &self.sets[set_of(bits)];
        let (a, b) = (set[0].get(), set[1].get());
        // No branch on which way holds the key: an entry xor the key's would-be tag is the
        // entry's shard exactly when its tag is the key's (the invariant: the tag fills the
        // bits above the shard's), and something of `MAX_SHARDS` or more when it is not. So
        // the smaller of the two is the shard on a hit in either way, and the one branch,
        // "hit?", goes the same way for every hot key.
        //
        // Why: a branch on the first way's hit, as this had, went either way at random for
        // the keys that share a set (about 0.2 mispredictions per message on Market Spread),
        // and each one was resolved only once the entry's load had come back; in perf samples
        // 45% of the exchange's route pass sat on those two loads. perf/peer `bettong-iter`,
        // 2 shards, 24 M messages, 12 rounds alternating: 1.09× (10 of 12 rounds above 1).
        let want = tag << SHARD_BITS;
        let nearest = (a ^ want).min(b ^ want);
        if nearest < MAX_SHARDS as u64 {
            return nearest as usize;
        }
        let shard = slow();
        debug_assert!(shard < MAX_SHARDS);
        // The newest key takes the first way, the one it displaces the second.
        set[1].set(a);
        set[0].set(tag << SHARD_BITS | shard as u64);
        shard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::shard_for;
    use crate::Key;

    /// Routed through the cache or not, every key goes to the same shard: with far more keys
    /// than entries (evictions), twice over (hits), for shard counts up to the most allowed.
    #[test]
    fn a_cached_route_is_the_stable_hash_route() {
        for shards in [2, 3, 4, 16, 64, MAX_SHARDS] {
            let cache = RouteCache::new(shards).expect("fits");
            for round in 0..2 {
                for i in 0..5_000u32 {
                    let key = i.wrapping_mul(2_654_435_761).to_le_bytes();
                    let bits = key.small_bits().expect("4 bytes are small");
                    let want = shard_for(key.stable_hash(), shards);
                    assert_eq!(
                        cache.shard(bits, || want),
                        want,
                        "key {key:?}, {shards} shards, round {round}"
                    );
                }
            }
        }
        assert!(RouteCache::new(MAX_SHARDS + 1).is_none());
    }

    /// A hot set of keys stays cached: the second pass never asks the slow path.
    #[test]
    fn a_few_hundred_keys_mostly_hit() {
        let cache = RouteCache::new(2).expect("fits");
        let keys: Vec<[u8; 4]> = (0..350u32).map(|i| (i * 7919).to_be_bytes()).collect();
        for k in &keys {
            cache.shard(k.small_bits().expect("small"), || {
                shard_for(k.stable_hash(), 2)
            });
        }
        let misses = Cell::new(0);
        for k in &keys {
            cache.shard(k.small_bits().expect("small"), || {
                misses.set(misses.get() + 1);
                shard_for(k.stable_hash(), 2)
            });
        }
        assert!(misses.get() <= 10, "{} of 350 missed", misses.get());
    }

    /// Keys that share a set: two are both found, in either way, with their own shards; a
    /// third evicts the older of them; and an empty entry (0) never matches, not even key 0
    /// going to shard 0.
    #[test]
    fn both_ways_hit_and_a_third_key_evicts() {
        let mut same: Vec<u64> = (1..).filter(|&b| set_of(b) == set_of(0)).take(3).collect();
        same.insert(0, 0);
        let cache = RouteCache::new(MAX_SHARDS).expect("fits");
        let shards = [0, MAX_SHARDS - 1, 5, 6];
        for (&bits, &shard) in same.iter().zip(&shards).take(2) {
            assert_eq!(cache.shard(bits, || shard), shard, "first sight of {bits}");
        }
        for _ in 0..2 {
            for (&bits, &shard) in same.iter().zip(&shards).take(2) {
                assert_eq!(
                    cache.shard(bits, || unreachable!("{bits} is cached")),
                    shard
                );
            }
        }
        // Key 0 now sits in the second way: a third key takes the first and pushes it out.
        assert_eq!(cache.shard(same[2], || shards[2]), shards[2]);
        assert_eq!(
            cache.shard(same[1], || unreachable!("still cached")),
            shards[1]
        );
        let asked = Cell::new(false);
        assert_eq!(
            cache.shard(same[0], || {
                asked.set(true);
                shards[0]
            }),
            shards[0]
        );
        assert!(asked.get(), "key 0 was evicted, so it is asked for again");
    }

    /// The largest bits and the largest shard share an entry without overflowing into each
    /// other.
    #[test]
    fn the_extremes_fit_an_entry() {
        let cache = RouteCache::new(MAX_SHARDS).expect("fits");
        assert_eq!(cache.shard(MAX_BITS, || MAX_SHARDS - 1), MAX_SHARDS - 1);
        assert_eq!(cache.shard(MAX_BITS, || unreachable!()), MAX_SHARDS - 1);
        assert_eq!(cache.shard(0, || 0), 0);
        assert_eq!(cache.shard(0, || unreachable!()), 0);
    }
}
