//! Which shard owns a key.
//!
//! The mapping decides where a key's state lives, so it must not change between runs, builds or
//! platforms: it uses its own hash (64-bit FNV-1a over the key's bytes, then a 64-bit finaliser
//! to spread FNV's weak low bits) rather than std's randomly seeded one.

use std::hash::Hash;

/// A key that `key_by` can route on: hashable for the shard's state map, and with a stable hash
/// that picks the owning shard.
///
/// Implemented for text and bytes (`str`, `String`, `[u8]`, `Vec<u8>`, `[u8; N]`) and for the
/// unsigned integers (hashed as big-endian bytes). Its owned form is serializable: checkpoints
/// write it.
///
/// ```
/// use bettong::Key;
/// assert_eq!("GE".stable_hash(), String::from("GE").stable_hash());
/// assert_eq!(b"GE".stable_hash(), "GE".stable_hash());
/// ```
pub trait Key:
    Hash + Eq + ToOwned<Owned: Hash + Eq + serde::Serialize + serde::de::DeserializeOwned>
{
    /// A hash that is the same on every run and platform.
    fn stable_hash(&self) -> u64;

    /// The key as an integer below 2^53, one-to-one among the keys of its type, when it is
    /// that small: the exchange then looks its shard up in a cache instead of hashing it.
    /// `None` (the default) always hashes. Implemented for the integers up to 32 bits (and
    /// wider ones below 2^53), byte arrays of up to 6 bytes, and text or bytes of up to 5.
    ///
    /// An implementation must give different keys of one type different bits (as `Hash` must
    /// agree with `Eq`): two keys that shared bits would share a cache entry, and the second
    /// would be routed to the first one's shard, away from its state. Bits of 2^53 and over
    /// are not cached.
    ///
    /// ```
    /// use bettong::Key;
    /// assert_eq!(7u32.small_bits(), Some(7));
    /// assert!(b"  GE".small_bits().is_some());
    /// assert_eq!("a much longer key".small_bits(), None);
    /// ```
    fn small_bits(&self) -> Option<u64> {
        None
    }
}

/// Up to 8 bytes as one little-endian word, zeros above them.
fn le_word(bytes: &[u8]) -> u64 {
    let mut le = [0u8; 8];
    le[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(le)
}

/// The [`Key::small_bits`] of a byte string of up to 5 bytes: the bytes, and the length above
/// them so that `"a"` and `"a\0"` differ.
fn short_bytes_bits(bytes: &[u8]) -> Option<u64> {
    (bytes.len() <= 5).then(|| le_word(bytes) | (bytes.len() as u64) << 40)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The stable hash of a byte string.
///
/// ```
/// // Fixed forever: state placement depends on it.
/// assert_eq!(bettong::runtime::router::hash_bytes(b""), 0xefd0_1f60_ba99_2926);
/// ```
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    // murmur3's fmix64: every input bit affects the low bits that `%` looks at.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The shard that owns a key: through its key group (see [`crate::state`]).
pub use crate::state::shard_for;

impl Key for [u8] {
    fn stable_hash(&self) -> u64 {
        hash_bytes(self)
    }

    fn small_bits(&self) -> Option<u64> {
        short_bytes_bits(self)
    }
}

impl Key for str {
    fn stable_hash(&self) -> u64 {
        hash_bytes(self.as_bytes())
    }

    fn small_bits(&self) -> Option<u64> {
        short_bytes_bits(self.as_bytes())
    }
}

impl Key for String {
    fn stable_hash(&self) -> u64 {
        hash_bytes(self.as_bytes())
    }

    fn small_bits(&self) -> Option<u64> {
        short_bytes_bits(self.as_bytes())
    }
}

impl Key for Vec<u8> {
    fn stable_hash(&self) -> u64 {
        hash_bytes(self)
    }

    fn small_bits(&self) -> Option<u64> {
        short_bytes_bits(self)
    }
}

// Fixed-size byte keys up to 32 bytes: the sizes serde can write (keys are checkpointed).
macro_rules! array_key {
    ($($n:literal)*) => {$(
        impl Key for [u8; $n] {
            fn stable_hash(&self) -> u64 {
                hash_bytes(self)
            }

            fn small_bits(&self) -> Option<u64> {
                // All arrays of one length: the bytes alone are one-to-one.
                (self.len() <= 6).then(|| le_word(self))
            }
        }
    )*};
}
array_key!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32);

macro_rules! int_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn stable_hash(&self) -> u64 {
                hash_bytes(&self.to_be_bytes())
            }

            fn small_bits(&self) -> Option<u64> {
                u64::try_from(*self).ok().filter(|&v| v < 1 << 53)
            }
        }
    )*};
}
int_key!(u8, u16, u32, u64, u128, usize);

#[cfg(test)]
mod tests {
    use super::*;

    /// The key → shard mapping is part of the on-disk and on-wire contract: these values must
    /// never change.
    #[test]
    fn key_to_shard_is_stable() {
        assert_eq!(hash_bytes(b"GE"), 0x29b5_8e05_dbce_36b3);
    }

    #[test]
    fn keys_spread_over_shards() {
        let mut counts = [0usize; 4];
        for i in 0..10_000u32 {
            counts[shard_for(format!("k{i}").stable_hash(), 4)] += 1;
        }
        for c in counts {
            assert!((2200..2800).contains(&c), "uneven spread {counts:?}");
        }
    }

    /// `small_bits` is one-to-one within a key type (the route cache relies on it), below
    /// 2^53, and `None` past the sizes it covers.
    #[test]
    fn small_bits_tell_keys_of_a_type_apart() {
        use std::collections::HashMap;
        let mut seen: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut strings = vec![Vec::new()];
        for len in 1..=5 {
            for fill in [0u8, 1, b'A', 0xff] {
                strings.push(vec![fill; len]);
                let mut v = vec![0u8; len];
                v[len - 1] = fill;
                strings.push(v);
            }
        }
        for s in strings {
            let bits = s.as_slice().small_bits().expect("5 bytes or fewer");
            assert!(bits < 1 << 53);
            assert_eq!(s.small_bits(), Some(bits), "Vec<u8> and [u8] agree");
            if let Some(other) = seen.insert(bits, s.clone()) {
                assert_eq!(other, s, "two byte strings share bits {bits:#x}");
            }
        }
        assert_eq!([0u8; 6].small_bits(), Some(0));
        assert_ne!([0u8, 0, 0, 0, 0, 1].small_bits(), Some(0));
        assert_eq!([0u8; 7].small_bits(), None);
        assert_eq!("123456".small_bits(), None);
        assert_eq!(u64::MAX.small_bits(), None);
        assert_eq!(((1u64 << 53) - 1).small_bits(), Some((1 << 53) - 1));
        assert_eq!(u32::MAX.small_bits(), Some(u64::from(u32::MAX)));
    }

    #[test]
    fn forms_of_a_key_agree() {
        let s = "MSFT";
        assert_eq!(s.stable_hash(), s.to_string().stable_hash());
        assert_eq!(s.stable_hash(), s.as_bytes().stable_hash());
        assert_eq!(s.stable_hash(), b"MSFT".stable_hash());
        assert_eq!(s.stable_hash(), s.as_bytes().to_vec().stable_hash());
    }
}
