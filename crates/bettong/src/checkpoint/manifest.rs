//! The manifest: what a complete checkpoint consists of. Written last, atomically; a
//! checkpoint directory without one is an unfinished attempt.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::state::KEY_GROUPS;

/// The manifest of one checkpoint: its parts, the shard and key-group counts it was taken
/// with, and when it was committed.
///
/// ```
/// use bettong::checkpoint::{Manifest, PartInfo};
/// let parts = vec![PartInfo { file: "shard-0.bin".into(), shard: 0, bytes: 24, crc32: 0, records: 0, groups: None }];
/// let m = Manifest::new(5, 1, parts);
/// assert_eq!((m.checkpoint, m.shards, m.key_groups), (5, 1, 4096));
/// assert!(m.created_unix_ms > 0);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The checkpoint (barrier) id.
    pub checkpoint: u64,
    /// How many shards took the checkpoint (one part each).
    pub shards: u32,
    /// [`KEY_GROUPS`] when it was taken; a build with another count cannot restore it.
    pub key_groups: u32,
    /// Commit time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// One entry per shard, in shard order.
    pub parts: Vec<PartInfo>,
}

/// One part file as its writer finished it: name, size, CRC-32 of the whole file, record
/// count and the key groups it holds.
///
/// ```
/// use bettong::checkpoint::PartInfo;
/// let p = PartInfo { file: "shard-2.bin".into(), shard: 2, bytes: 100, crc32: 7, records: 3, groups: Some((2048, 3071)) };
/// assert_eq!(p.groups, Some((2048, 3071)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// The file's name in the checkpoint directory (`shard-<n>.bin`).
    pub file: String,
    /// The shard that wrote it.
    pub shard: u32,
    /// Its length in bytes.
    pub bytes: u64,
    /// CRC-32 of the whole file.
    pub crc32: u32,
    /// How many records it holds.
    pub records: u64,
    /// The lowest and highest key group of its group records (`None`: it holds none), so
    /// that a restoring shard skips parts with none of its groups.
    pub groups: Option<(u16, u16)>,
}

impl Manifest {
    /// A manifest for checkpoint `checkpoint` taken by `shards` shards, stamped with this
    /// build's [`KEY_GROUPS`] and the current time. Parts are sorted by shard.
    ///
    /// ```
    /// let m = bettong::checkpoint::Manifest::new(1, 0, vec![]);
    /// assert!(m.parts.is_empty());
    /// ```
    pub fn new(checkpoint: u64, shards: u32, mut parts: Vec<PartInfo>) -> Manifest {
        parts.sort_by_key(|p| p.shard);
        Manifest {
            checkpoint,
            shards,
            key_groups: KEY_GROUPS as u32,
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            parts,
        }
    }

    /// Checks that the manifest is coherent: this build's key-group count, at least one
    /// shard, exactly one part per shard named `shard-<n>.bin`. Returns what is wrong.
    ///
    /// ```
    /// let m = bettong::checkpoint::Manifest::new(1, 2, vec![]);
    /// assert_eq!(m.check().unwrap_err(), "2 shards but 0 parts");
    /// ```
    pub fn check(&self) -> Result<(), String> {
        if self.key_groups as usize != KEY_GROUPS {
            return Err(format!(
                "taken with {} key groups, this build has {KEY_GROUPS}",
                self.key_groups
            ));
        }
        if self.shards == 0 {
            return Err("no shards".into());
        }
        if self.parts.len() != self.shards as usize {
            return Err(format!(
                "{} shards but {} parts",
                self.shards,
                self.parts.len()
            ));
        }
        for (i, p) in self.parts.iter().enumerate() {
            if p.shard as usize != i {
                return Err(format!("part {i} is for shard {}", p.shard));
            }
            if p.file != part_file_name(p.shard) {
                return Err(format!("part for shard {} is named {:?}", p.shard, p.file));
            }
            if let Some((lo, hi)) = p.groups {
                if lo > hi || hi as usize >= KEY_GROUPS {
                    return Err(format!("{}: bad group range {lo}..={hi}", p.file));
                }
            }
        }
        Ok(())
    }
}

/// The file name of shard `shard`'s part.
///
/// ```
/// assert_eq!(bettong::checkpoint::part_file_name(3), "shard-3.bin");
/// ```
pub fn part_file_name(shard: u32) -> String {
    format!("shard-{shard}.bin")
}
