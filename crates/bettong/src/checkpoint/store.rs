//! The checkpoint directory: beginning a checkpoint, writing shards' parts, committing the
//! manifest atomically, and removing old checkpoints.
//!
//! Layout under the store's directory:
//!
//! ```text
//! chk-<id>/shard-<n>.bin   one part per shard (header + records)
//! chk-<id>/MANIFEST        written last: temp file, fsync, rename, fsync of the directory
//! ```
//!
//! Nothing here runs on a shard's hot path: a [`PartWriter`] takes owned records and does
//! blocking file I/O, so it belongs on a plain thread (or a blocking executor) fed by the shard.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::error::CheckpointError;
use super::format::{encode_frame, Entries, GroupState, Header, Kind, Record, FORMAT_VERSION};
use super::manifest::{part_file_name, Manifest, PartInfo};
use crate::state::KEY_GROUPS;

/// How many complete checkpoints [`CheckpointStore::commit`] keeps.
///
/// ```
/// assert_eq!(bettong::checkpoint::KEEP_COMPLETE, 2);
/// ```
pub const KEEP_COMPLETE: usize = 2;

/// The manifest's file name in a checkpoint directory.
pub(crate) const MANIFEST: &str = "MANIFEST";
/// The manifest's name while it is written; a leftover one is ignored.
pub(crate) const MANIFEST_TMP: &str = "MANIFEST.tmp";

/// A directory of checkpoints. Cheap to clone and usable from any thread; one checkpoint is
/// in flight at a time. One process should own a directory.
///
/// ```
/// use bettong::checkpoint::{CheckpointStore, Manifest};
/// let dir = std::env::temp_dir().join(format!("bettong-doc-store-{}", std::process::id()));
/// let store = CheckpointStore::open(&dir).unwrap();
/// let chk = store.begin(1).unwrap();
/// let part = chk.part(0).unwrap().finish().unwrap();
/// store.commit(1, Manifest::new(1, 1, vec![part])).unwrap();
/// assert_eq!(store.committed().unwrap(), [1]);
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    in_flight: Mutex<Option<u64>>,
}

impl CheckpointStore {
    /// Opens (creating if needed) the store at `dir`.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-open-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// assert_eq!(store.dir(), dir);
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn open(dir: impl AsRef<Path>) -> Result<CheckpointStore, CheckpointError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| CheckpointError::io(&dir, e))?;
        Ok(CheckpointStore {
            inner: Arc::new(Inner {
                dir,
                in_flight: Mutex::new(None),
            }),
        })
    }

    /// The store's directory.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-dir-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// assert!(store.dir().is_dir());
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The directory of checkpoint `id`.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-cdir-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// assert!(store.checkpoint_dir(7).ends_with("chk-7"));
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn checkpoint_dir(&self, id: u64) -> PathBuf {
        self.inner.dir.join(format!("chk-{id}"))
    }

    /// Every checkpoint directory's id, committed or not, ascending.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-ids-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// store.begin(4).unwrap();
    /// assert_eq!(store.ids().unwrap(), [4]);
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn ids(&self) -> Result<Vec<u64>, CheckpointError> {
        let dir = &self.inner.dir;
        let mut ids = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| CheckpointError::io(dir, e))? {
            let entry = entry.map_err(|e| CheckpointError::io(dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(id) = name
                .strip_prefix("chk-")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if name == format!("chk-{id}") && entry.path().is_dir() {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// The ids of the checkpoints that have a manifest (committed; not yet validated),
    /// ascending. A leftover `MANIFEST.tmp` does not count.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-committed-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// store.begin(1).unwrap(); // never committed
    /// assert!(store.committed().unwrap().is_empty());
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn committed(&self) -> Result<Vec<u64>, CheckpointError> {
        Ok(self
            .ids()?
            .into_iter()
            .filter(|&id| self.checkpoint_dir(id).join(MANIFEST).is_file())
            .collect())
    }

    /// One above the highest checkpoint id in the directory (committed or not): the id to
    /// use for the next barrier after a restart.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-next-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// assert_eq!(store.next_id().unwrap(), 1);
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn next_id(&self) -> Result<u64, CheckpointError> {
        Ok(self.ids()?.last().map_or(1, |id| id + 1))
    }

    /// The checkpoint in flight, if any.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-flight-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// let _chk = store.begin(2).unwrap();
    /// assert_eq!(store.in_flight(), Some(2));
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn in_flight(&self) -> Option<u64> {
        *self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Starts checkpoint `id`: creates `chk-<id>/` (replacing an unfinished attempt with that
    /// id left by a crash) and returns the handle the shards write their parts through.
    /// Fails while another checkpoint is in flight or if `id` is not above every committed id.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-begin-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// let chk = store.begin(1).unwrap();
    /// assert!(store.begin(2).is_err(), "one checkpoint in flight at a time");
    /// store.abort(chk.id()).unwrap();
    /// assert!(store.begin(2).is_ok());
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn begin(&self, id: u64) -> Result<CheckpointWriter, CheckpointError> {
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(running) = *in_flight {
            return Err(CheckpointError::InFlight {
                running,
                requested: id,
            });
        }
        if let Some(&latest) = self.committed()?.last() {
            if id <= latest {
                return Err(CheckpointError::NotNewer {
                    requested: id,
                    latest,
                });
            }
        }
        let dir = self.checkpoint_dir(id);
        if dir.exists() {
            // No manifest (checked above), so an attempt that never committed.
            fs::remove_dir_all(&dir).map_err(|e| CheckpointError::io(&dir, e))?;
        }
        fs::create_dir(&dir).map_err(|e| CheckpointError::io(&dir, e))?;
        sync_dir(&self.inner.dir)?;
        *in_flight = Some(id);
        Ok(CheckpointWriter { id, dir })
    }

    /// Abandons checkpoint `id` (a shard failed, a timeout): removes its directory and lets
    /// the next one begin.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-abort-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// store.begin(3).unwrap();
    /// store.abort(3).unwrap();
    /// assert!(store.ids().unwrap().is_empty());
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn abort(&self, id: u64) -> Result<(), CheckpointError> {
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *in_flight != Some(id) {
            return Err(CheckpointError::NotInFlight(id));
        }
        let dir = self.checkpoint_dir(id);
        fs::remove_dir_all(&dir).map_err(|e| CheckpointError::io(&dir, e))?;
        *in_flight = None;
        Ok(())
    }

    /// Completes checkpoint `id`: checks `manifest` against the parts on disk (one per shard,
    /// sizes as written), makes the parts' directory entries durable, writes `MANIFEST`
    /// atomically (temp file, fsync, rename, fsync of the directory), then removes complete
    /// checkpoints beyond the newest [`KEEP_COMPLETE`] and unfinished older attempts.
    ///
    /// ```
    /// use bettong::checkpoint::{CheckpointStore, Manifest};
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-commit-{}", std::process::id()));
    /// let store = CheckpointStore::open(&dir).unwrap();
    /// let chk = store.begin(1).unwrap();
    /// let parts = vec![chk.part(0).unwrap().finish().unwrap(), chk.part(1).unwrap().finish().unwrap()];
    /// assert!(store.commit(1, Manifest::new(1, 3, parts.clone())).is_err(), "3 shards, 2 parts");
    /// store.commit(1, Manifest::new(1, 2, parts)).unwrap();
    /// assert!(store.checkpoint_dir(1).join("MANIFEST").is_file());
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn commit(&self, id: u64, manifest: Manifest) -> Result<(), CheckpointError> {
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *in_flight != Some(id) {
            return Err(CheckpointError::NotInFlight(id));
        }
        if manifest.checkpoint != id {
            return Err(CheckpointError::BadManifest(format!(
                "manifest is for checkpoint {}, committing {id}",
                manifest.checkpoint
            )));
        }
        manifest
            .check()
            .map_err(|m| CheckpointError::BadManifest(format!("checkpoint {id}: {m}")))?;
        let dir = self.checkpoint_dir(id);
        for p in &manifest.parts {
            let path = dir.join(&p.file);
            let len = fs::metadata(&path)
                .map_err(|e| CheckpointError::io(&path, e))?
                .len();
            if len != p.bytes {
                return Err(CheckpointError::BadManifest(format!(
                    "checkpoint {id}: {} is {len} bytes, the manifest says {}",
                    p.file, p.bytes
                )));
            }
        }
        // The parts' data is synced by their writers; their names must be durable before the
        // manifest can point at them.
        sync_dir(&dir)?;

        let mut bytes = Header {
            version: FORMAT_VERSION,
            checkpoint: id,
            shard: 0,
            kind: Kind::Manifest,
        }
        .encode()
        .to_vec();
        encode_frame(&manifest, &mut bytes).map_err(|d| CheckpointError::Encode(d.to_string()))?;
        let tmp = dir.join(MANIFEST_TMP);
        let mut f = File::create(&tmp).map_err(|e| CheckpointError::io(&tmp, e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| CheckpointError::io(&tmp, e))?;
        drop(f);
        let path = dir.join(MANIFEST);
        fs::rename(&tmp, &path).map_err(|e| CheckpointError::io(&path, e))?;
        sync_dir(&dir)?;
        *in_flight = None;
        drop(in_flight);

        if let Err(e) = self.prune() {
            // The checkpoint is committed; failing to delete an old one only costs space.
            tracing::warn!("checkpoint {id} committed, but removing old checkpoints failed: {e}");
        }
        Ok(())
    }

    /// Removes complete checkpoints older than the newest [`KEEP_COMPLETE`], and unfinished
    /// attempts older than the newest complete one. A complete checkpoint loses its manifest
    /// first, so one half-removed by a crash reads as unfinished, never as complete.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-prune-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// store.prune().unwrap(); // nothing to do
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn prune(&self) -> Result<(), CheckpointError> {
        let in_flight = self.in_flight();
        let committed = self.committed()?;
        let Some(&newest) = committed.last() else {
            return Ok(());
        };
        let keep_from = committed.len().saturating_sub(KEEP_COMPLETE);
        let kept = &committed[keep_from..];
        for id in self.ids()? {
            if kept.contains(&id) || Some(id) == in_flight || id > newest {
                continue;
            }
            let dir = self.checkpoint_dir(id);
            let manifest = dir.join(MANIFEST);
            if manifest.exists() {
                fs::remove_file(&manifest).map_err(|e| CheckpointError::io(&manifest, e))?;
                sync_dir(&dir)?;
            }
            fs::remove_dir_all(&dir).map_err(|e| CheckpointError::io(&dir, e))?;
        }
        sync_dir(&self.inner.dir)
    }
}

/// The handle of a checkpoint in flight: each shard opens its part through it. Clone it (or
/// share it) across threads.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("bettong-doc-writer-{}", std::process::id()));
/// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
/// let chk = store.begin(9).unwrap();
/// let other = chk.clone();
/// let t = std::thread::spawn(move || other.part(1).unwrap().finish().unwrap());
/// assert_eq!(t.join().unwrap().shard, 1);
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct CheckpointWriter {
    id: u64,
    dir: PathBuf,
}

impl CheckpointWriter {
    /// The checkpoint's id.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-wid-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// assert_eq!(store.begin(5).unwrap().id(), 5);
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Creates shard `shard`'s part file and writes its header. Fails if the part exists.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-part-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// let chk = store.begin(1).unwrap();
    /// let p = chk.part(0).unwrap();
    /// assert!(chk.part(0).is_err(), "one writer per shard");
    /// assert_eq!(p.finish().unwrap().file, "shard-0.bin");
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn part(&self, shard: u32) -> Result<PartWriter, CheckpointError> {
        let file = part_file_name(shard);
        let path = self.dir.join(&file);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| CheckpointError::io(&path, e))?;
        let mut w = PartWriter {
            out: BufWriter::with_capacity(1 << 20, f),
            path,
            info: PartInfo {
                file,
                shard,
                bytes: 0,
                crc32: 0,
                records: 0,
                groups: None,
            },
            hasher: crc32fast::Hasher::new(),
            scratch: Vec::new(),
        };
        let header = Header {
            version: FORMAT_VERSION,
            checkpoint: self.id,
            shard,
            kind: Kind::Part,
        }
        .encode();
        w.put(&header)?;
        Ok(w)
    }
}

/// Writes one shard's part: buffered, records framed and checksummed as they come, synced
/// to disk by [`finish`](PartWriter::finish). `Send`, so it can live on a writer thread.
///
/// ```
/// use bettong::checkpoint::format::{Record, SourceOffset};
/// let dir = std::env::temp_dir().join(format!("bettong-doc-pw-{}", std::process::id()));
/// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
/// let mut part = store.begin(1).unwrap().part(0).unwrap();
/// part.write_group("count", 12, vec![(b"IBM".to_vec(), 3u64.to_le_bytes().to_vec())]).unwrap();
/// part.write(Record::SourceOffset(SourceOffset { source: "Orders".into(), shard: 0, offset: 100 })).unwrap();
/// let info = part.finish().unwrap();
/// assert_eq!((info.records, info.groups), (2, Some((12, 12))));
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Debug)]
pub struct PartWriter {
    out: BufWriter<File>,
    path: PathBuf,
    info: PartInfo,
    hasher: crc32fast::Hasher,
    scratch: Vec<u8>,
}

impl PartWriter {
    /// Appends a record. A [`Record::Group`]'s group must be below [`KEY_GROUPS`].
    ///
    /// ```
    /// use bettong::checkpoint::format::{Record, SinkPosition};
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-pww-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// let mut part = store.begin(1).unwrap().part(0).unwrap();
    /// part.write(Record::SinkPosition(SinkPosition { sink: "Out".into(), shard: 0, position: 5 })).unwrap();
    /// assert_eq!(part.finish().unwrap().groups, None);
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn write(&mut self, record: Record) -> Result<(), CheckpointError> {
        self.write_ref(&record)
    }

    /// Appends a record the caller keeps (to reuse its buffers, or to free them elsewhere).
    ///
    /// ```
    /// use bettong::checkpoint::format::{Record, SinkPosition};
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-pwr-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// let mut part = store.begin(1).unwrap().part(0).unwrap();
    /// let mut rec = Record::SinkPosition(SinkPosition { sink: "Out".into(), shard: 0, position: 5 });
    /// part.write_ref(&rec).unwrap();
    /// if let Record::SinkPosition(p) = &mut rec { p.position = 6 }
    /// part.write_ref(&rec).unwrap();
    /// assert_eq!(part.finish().unwrap().records, 2);
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn write_ref(&mut self, record: &Record) -> Result<(), CheckpointError> {
        if let Record::Group(g) = record {
            if g.group as usize >= KEY_GROUPS {
                return Err(CheckpointError::Encode(format!(
                    "{}: key group {} of operator {} is not below {KEY_GROUPS}",
                    self.path.display(),
                    g.group,
                    g.operator
                )));
            }
            self.info.groups = Some(match self.info.groups {
                None => (g.group, g.group),
                Some((lo, hi)) => (lo.min(g.group), hi.max(g.group)),
            });
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let r = encode_frame(record, &mut buf)
            .map_err(|d| CheckpointError::Encode(format!("{}: {d}", self.path.display())));
        let r = r.and_then(|_| self.put(&buf));
        self.scratch = buf;
        r?;
        self.info.records += 1;
        Ok(())
    }

    /// Appends an operator's state for one key group: `(key, value)` byte pairs the operator
    /// serialized.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-pwg-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// let mut part = store.begin(1).unwrap().part(0).unwrap();
    /// assert!(part.write_group("count", 4096, vec![]).is_err(), "groups are below 4096");
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn write_group(
        &mut self,
        operator: &str,
        group: u16,
        entries: Entries,
    ) -> Result<(), CheckpointError> {
        self.write(Record::Group(GroupState {
            operator: operator.to_string(),
            group,
            entries,
        }))
    }

    /// Flushes and fsyncs the file, and returns its [`PartInfo`] for the manifest.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-pwf-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// let info = store.begin(1).unwrap().part(0).unwrap().finish().unwrap();
    /// assert_eq!(info.bytes, 24, "just the header");
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn finish(mut self) -> Result<PartInfo, CheckpointError> {
        self.out
            .flush()
            .and_then(|()| self.out.get_ref().sync_all())
            .map_err(|e| CheckpointError::io(&self.path, e))?;
        self.info.crc32 = self.hasher.clone().finalize();
        Ok(self.info)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), CheckpointError> {
        self.out
            .write_all(bytes)
            .map_err(|e| CheckpointError::io(&self.path, e))?;
        self.hasher.update(bytes);
        self.info.bytes += bytes.len() as u64;
        Ok(())
    }
}

/// Fsyncs a directory, making the creation, renaming and removal of its entries durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CheckpointError::io(dir, e))
}
