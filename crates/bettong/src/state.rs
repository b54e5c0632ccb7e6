//! Keyed state and key groups.
//!
//! A key belongs to one of [`KEY_GROUPS`] groups (`stable_hash(key) % KEY_GROUPS`), and each
//! shard owns a contiguous range of groups. State is kept (and will be snapshotted) per
//! operator, and can be grouped by key group, so a checkpoint restores onto any shard count:
//! only the group → shard assignment changes.
//!
//! ```
//! use bettong::state::{key_group, shard_of_group, KEY_GROUPS};
//! let g = key_group(12345);
//! assert!(g < KEY_GROUPS);
//! // Groups are split into contiguous ranges: the first group is on shard 0, the last on the last.
//! assert_eq!(shard_of_group(0, 4), 0);
//! assert_eq!(shard_of_group(KEY_GROUPS - 1, 4), 3);
//! ```

use std::cell::RefCell;
use std::collections::HashMap;

use crate::hasher::BuildStateHasher;
use crate::Key;

/// The fixed number of key groups. A power of two above any sensible shard count; changing
/// it changes where every key lives, so it is part of the checkpoint format.
pub const KEY_GROUPS: usize = 4096;

/// The key group of a key's stable hash.
#[inline]
pub fn key_group(hash: u64) -> usize {
    (hash % KEY_GROUPS as u64) as usize
}

/// The shard that owns `group` when the engine runs `shards` shards: groups are split into
/// `shards` contiguous ranges of (nearly) equal size.
#[inline]
pub fn shard_of_group(group: usize, shards: usize) -> usize {
    group * shards.max(1) / KEY_GROUPS
}

/// The shard that owns a key with stable hash `hash` (its group's shard).
///
/// ```
/// use bettong::Key;
/// let s = bettong::state::shard_for("IBM".stable_hash(), 2);
/// assert!(s < 2);
/// ```
#[inline]
pub fn shard_for(hash: u64, shards: usize) -> usize {
    shard_of_group(key_group(hash), shards)
}

/// What a state entity must be: created with `Default` when its key is first seen, and
/// serializable (serde), so that checkpoints can write it and recovery read it back.
///
/// ```
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// struct Balance { total: i64 }
/// fn takes<S: bettong::state::StateEntity>() {}
/// takes::<Balance>();
/// takes::<u64>();
/// ```
pub trait StateEntity: Default + serde::Serialize + serde::de::DeserializeOwned + 'static {}

impl<T: Default + serde::Serialize + serde::de::DeserializeOwned + 'static> StateEntity for T {}

/// The map of one operator's entities on one shard, by key (hashed with the state maps' own
/// hasher, not the stable hash that places keys in groups).
pub(crate) type EntityMap<K, S> = HashMap<<K as ToOwned>::Owned, S, BuildStateHasher>;

/// The state entities of one state operator on one shard, one per key, created with
/// `S::default()` when the key is first seen.
pub(crate) struct KeyedState<K: Key + ?Sized, S> {
    pub(crate) map: RefCell<EntityMap<K, S>>,
}

impl<K: Key + ?Sized, S> Default for KeyedState<K, S> {
    fn default() -> Self {
        KeyedState {
            map: RefCell::new(HashMap::default()),
        }
    }
}

/// What the runtime sees of an operator's keyed state, without knowing its types.
pub(crate) trait StateView {
    /// Every entity, encoded (postcard) and grouped by key group: what a checkpoint writes.
    fn snapshot(&self) -> Vec<(u16, crate::checkpoint::format::Entries)>;
    /// Loads entities a checkpoint wrote (replacing those with the same key).
    fn restore(&self, entries: &crate::checkpoint::format::Entries) -> Result<usize, String>;
    /// How many state entities the operator holds on this shard.
    fn entities(&self) -> usize;
    /// How many entities fall in each key group (the unit a checkpoint is written in).
    #[cfg_attr(not(test), allow(dead_code))]
    fn entities_by_group(&self) -> Vec<(usize, usize)>;
}

impl<K: Key + ?Sized, S> StateView for KeyedState<K, S>
where
    K::Owned: std::borrow::Borrow<K> + serde::Serialize + serde::de::DeserializeOwned,
    S: serde::Serialize + serde::de::DeserializeOwned,
{
    fn snapshot(&self) -> Vec<(u16, crate::checkpoint::format::Entries)> {
        let mut groups: HashMap<u16, crate::checkpoint::format::Entries> = HashMap::new();
        for (k, s) in self.map.borrow().iter() {
            let key: &K = std::borrow::Borrow::borrow(k);
            let group = key_group(key.stable_hash()) as u16;
            let (Ok(kb), Ok(vb)) = (postcard::to_allocvec(k), postcard::to_allocvec(s)) else {
                continue; // postcard only fails on types serde cannot describe
            };
            groups.entry(group).or_default().push((kb, vb));
        }
        let mut v: Vec<_> = groups.into_iter().collect();
        v.sort_unstable_by_key(|(g, _)| *g);
        v
    }

    fn restore(&self, entries: &crate::checkpoint::format::Entries) -> Result<usize, String> {
        let mut map = self.map.borrow_mut();
        for (kb, vb) in entries {
            let k: K::Owned = postcard::from_bytes(kb).map_err(|e| format!("a key: {e}"))?;
            let s: S = postcard::from_bytes(vb).map_err(|e| format!("a state entity: {e}"))?;
            map.insert(k, s);
        }
        Ok(entries.len())
    }

    fn entities(&self) -> usize {
        self.map.borrow().len()
    }

    fn entities_by_group(&self) -> Vec<(usize, usize)> {
        let mut counts: HashMap<usize, usize> = HashMap::new();
        for k in self.map.borrow().keys() {
            let k: &K = std::borrow::Borrow::borrow(k);
            *counts.entry(key_group(k.stable_hash())).or_default() += 1;
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_split_into_contiguous_equal_ranges() {
        for shards in [1, 2, 3, 4, 7, 64] {
            let mut owned = vec![0usize; shards];
            let mut last = 0;
            for g in 0..KEY_GROUPS {
                let s = shard_of_group(g, shards);
                assert!(s >= last, "ranges are contiguous");
                last = s;
                owned[s] += 1;
            }
            let (min, max) = (owned.iter().min().unwrap(), owned.iter().max().unwrap());
            assert!(max - min <= 1, "{shards} shards: {owned:?}");
        }
    }

    #[test]
    fn key_to_shard_is_stable() {
        // Values computed independently (Python: FNV-1a 64 + the murmur3 finaliser, then
        // `hash % 4096 * shards // 4096`).
        let keys = ["GE", "  GE", "IBM", "INSM", "the", "of", "", "wallaroo"];
        let groups: Vec<usize> = keys.iter().map(|k| key_group(k.stable_hash())).collect();
        let at2: Vec<usize> = keys.iter().map(|k| shard_for(k.stable_hash(), 2)).collect();
        let at4: Vec<usize> = keys.iter().map(|k| shard_for(k.stable_hash(), 4)).collect();
        assert_eq!(groups, GROUPS);
        assert_eq!(at2, AT2);
        assert_eq!(at4, AT4);
    }

    #[test]
    fn snapshot_and_restore_round_trip() {
        let a: KeyedState<str, (u64, String)> = KeyedState::default();
        a.map.borrow_mut().insert("GE".into(), (3, "x".into()));
        a.map.borrow_mut().insert("IBM".into(), (5, "y".into()));
        let b: KeyedState<str, (u64, String)> = KeyedState::default();
        for (_, entries) in a.snapshot() {
            b.restore(&entries).unwrap();
        }
        assert_eq!(*b.map.borrow(), *a.map.borrow());
        assert!(b.restore(&vec![(vec![0xff], vec![])]).is_err());
    }

    #[test]
    fn state_counts_entities_by_group() {
        let state: KeyedState<str, u64> = KeyedState::default();
        for k in ["GE", "IBM", "GE2"] {
            state.map.borrow_mut().insert(k.to_string(), 1);
        }
        assert_eq!(state.entities(), 3);
        let by_group = state.entities_by_group();
        assert_eq!(by_group.iter().map(|(_, n)| n).sum::<usize>(), 3);
        assert!(
            by_group.contains(&(1715, 1)),
            "GE is in group 1715: {by_group:?}"
        );
    }

    const GROUPS: [usize; 8] = [1715, 72, 1887, 1354, 2865, 3769, 2342, 3600];
    const AT2: [usize; 8] = [0, 0, 0, 0, 1, 1, 1, 1];
    const AT4: [usize; 8] = [1, 0, 1, 1, 2, 3, 2, 3];
}
