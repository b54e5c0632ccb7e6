//! Asynchronous barrier checkpoints on disk: the format, the store, and recovery.
//!
//! A coordinator injects barrier `id` at every source; when it has passed a shard, the shard
//! hands its state (by [key group](crate::state::key_group)), source offsets and sink
//! pre-commit positions, as owned bytes, to a [`PartWriter`] running off the shard. When
//! every shard's part is finished, [`CheckpointStore::commit`] writes the [`Manifest`] last,
//! atomically; only then does the checkpoint exist. One checkpoint is in flight at a time and
//! the newest [`KEEP_COMPLETE`] complete ones are kept.
//!
//! At start, [`CheckpointStore::latest_complete`] finds the newest checkpoint whose every
//! byte checks out, falling back to an older one with a message saying why the newer was
//! rejected; [`Checkpoint::groups_for`] gives each shard the groups it owns under the new
//! shard count, which need not be the old one.
//!
//! ```
//! use bettong::checkpoint::{CheckpointStore, Manifest};
//! use bettong::checkpoint::format::{Record, SourceOffset};
//!
//! let dir = std::env::temp_dir().join(format!("bettong-doc-checkpoint-{}", std::process::id()));
//! let store = CheckpointStore::open(&dir).unwrap();
//!
//! // Taking checkpoint 1 on 2 shards (each part could be written on its own thread).
//! let chk = store.begin(1).unwrap();
//! let mut parts = Vec::new();
//! for shard in 0..2u32 {
//!     let mut part = chk.part(shard).unwrap();
//!     let group = if shard == 0 { 10 } else { 3000 };
//!     part.write_group("count", group, vec![(b"IBM".to_vec(), 7u64.to_le_bytes().to_vec())]).unwrap();
//!     part.write(Record::SourceOffset(SourceOffset { source: "Orders".into(), shard, offset: 100 })).unwrap();
//!     parts.push(part.finish().unwrap());
//! }
//! store.commit(1, Manifest::new(1, 2, parts)).unwrap();
//!
//! // Restarting on 1 shard: it loads every group.
//! let restored = store.latest_complete().unwrap().expect("a checkpoint");
//! let groups: Vec<u16> = restored.groups_for(0, 1).map(|g| g.unwrap().group).collect();
//! assert_eq!(groups, [10, 3000]);
//! assert_eq!(restored.positions().unwrap().len(), 2);
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```
//!
//! The byte layout is in [`format`](mod@format).

mod error;
pub mod format;
mod manifest;
mod restore;
mod store;

pub use error::CheckpointError;
pub use manifest::{part_file_name, Manifest, PartInfo};
pub use restore::{Checkpoint, Records};
pub use store::{CheckpointStore, CheckpointWriter, PartWriter, KEEP_COMPLETE};

#[cfg(test)]
mod tests;
