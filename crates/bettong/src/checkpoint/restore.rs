//! Finding the checkpoint to restore from, checking it whole, and reading it back onto any
//! number of shards.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::error::CheckpointError;
use super::format::{Damage, GroupState, Kind, Reader, Record};
use super::manifest::{Manifest, PartInfo};
use super::store::{CheckpointStore, MANIFEST};
use crate::state::shard_of_group;

/// A complete, validated checkpoint: its manifest, and why any newer ones were passed over.
///
/// ```
/// use bettong::checkpoint::{CheckpointStore, Manifest};
/// let dir = std::env::temp_dir().join(format!("bettong-doc-chk-{}", std::process::id()));
/// let store = CheckpointStore::open(&dir).unwrap();
/// let chk = store.begin(1).unwrap();
/// let mut part = chk.part(0).unwrap();
/// part.write_group("count", 7, vec![(b"k".to_vec(), b"v".to_vec())]).unwrap();
/// store.commit(1, Manifest::new(1, 1, vec![part.finish().unwrap()])).unwrap();
///
/// let restored = store.latest_complete().unwrap().unwrap();
/// assert_eq!(restored.id(), 1);
/// assert!(restored.fallback_message().is_none());
/// assert_eq!(restored.records().count(), 1);
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    manifest: Manifest,
    rejected: Vec<String>,
}

impl CheckpointStore {
    /// The newest committed checkpoint whose manifest and every part check out: sizes and
    /// whole-file checksums as in the manifest, every record intact and decodable. A damaged
    /// newer checkpoint is skipped with a warning naming the file, the record and the fault
    /// (also kept in [`Checkpoint::rejected`]). `Ok(None)`: nothing was ever committed.
    /// An error when checkpoints were committed but none is usable.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("bettong-doc-latest-{}", std::process::id()));
    /// let store = bettong::checkpoint::CheckpointStore::open(&dir).unwrap();
    /// assert!(store.latest_complete().unwrap().is_none());
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn latest_complete(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let committed = self.committed()?;
        if committed.is_empty() {
            return Ok(None);
        }
        let mut rejected = Vec::new();
        for &id in committed.iter().rev() {
            let dir = self.checkpoint_dir(id);
            match validate(&dir, id) {
                Ok(manifest) => {
                    let chk = Checkpoint {
                        dir,
                        manifest,
                        rejected,
                    };
                    if let Some(m) = chk.fallback_message() {
                        tracing::warn!("{m}");
                    }
                    return Ok(Some(chk));
                }
                Err(why) => rejected.push(format!("checkpoint {id}: {why}")),
            }
        }
        for r in &rejected {
            tracing::error!("{r}");
        }
        Err(CheckpointError::NoValidCheckpoint(rejected))
    }
}

impl Checkpoint {
    /// The checkpoint's id.
    ///
    /// ```
    /// # use bettong::checkpoint::{CheckpointStore, Manifest};
    /// # let dir = std::env::temp_dir().join(format!("bettong-doc-cid-{}", std::process::id()));
    /// # let store = CheckpointStore::open(&dir).unwrap();
    /// # let chk = store.begin(3).unwrap();
    /// # store.commit(3, Manifest::new(3, 1, vec![chk.part(0).unwrap().finish().unwrap()])).unwrap();
    /// assert_eq!(store.latest_complete().unwrap().unwrap().id(), 3);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn id(&self) -> u64 {
        self.manifest.checkpoint
    }

    /// Its manifest (shard count, parts, time).
    ///
    /// ```
    /// # use bettong::checkpoint::{CheckpointStore, Manifest};
    /// # let dir = std::env::temp_dir().join(format!("bettong-doc-cman-{}", std::process::id()));
    /// # let store = CheckpointStore::open(&dir).unwrap();
    /// # let chk = store.begin(1).unwrap();
    /// # let parts = vec![chk.part(0).unwrap().finish().unwrap(), chk.part(1).unwrap().finish().unwrap()];
    /// # store.commit(1, Manifest::new(1, 2, parts)).unwrap();
    /// assert_eq!(store.latest_complete().unwrap().unwrap().manifest().shards, 2);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Why newer committed checkpoints were rejected, newest first (empty when this is the
    /// newest), e.g. `checkpoint 7: shard-1.bin: record 12 at byte 4410: checksum mismatch (…)`.
    ///
    /// ```
    /// # use bettong::checkpoint::{CheckpointStore, Manifest};
    /// # let dir = std::env::temp_dir().join(format!("bettong-doc-crej-{}", std::process::id()));
    /// # let store = CheckpointStore::open(&dir).unwrap();
    /// # let chk = store.begin(1).unwrap();
    /// # store.commit(1, Manifest::new(1, 1, vec![chk.part(0).unwrap().finish().unwrap()])).unwrap();
    /// assert!(store.latest_complete().unwrap().unwrap().rejected().is_empty());
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn rejected(&self) -> &[String] {
        &self.rejected
    }

    /// The line to log when newer checkpoints were rejected: each reason, then
    /// `using checkpoint <id>`.
    ///
    /// ```
    /// # use bettong::checkpoint::{CheckpointStore, Manifest};
    /// # let dir = std::env::temp_dir().join(format!("bettong-doc-cfb-{}", std::process::id()));
    /// # let store = CheckpointStore::open(&dir).unwrap();
    /// # let chk = store.begin(1).unwrap();
    /// # store.commit(1, Manifest::new(1, 1, vec![chk.part(0).unwrap().finish().unwrap()])).unwrap();
    /// assert_eq!(store.latest_complete().unwrap().unwrap().fallback_message(), None);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn fallback_message(&self) -> Option<String> {
        if self.rejected.is_empty() {
            return None;
        }
        Some(format!(
            "{}; using checkpoint {}",
            self.rejected.join("; "),
            self.id()
        ))
    }

    /// Every record of every part, in shard order, with the shard that wrote it.
    ///
    /// ```
    /// # use bettong::checkpoint::{CheckpointStore, Manifest};
    /// # use bettong::checkpoint::format::{Record, SourceOffset};
    /// # let dir = std::env::temp_dir().join(format!("bettong-doc-crec-{}", std::process::id()));
    /// # let store = CheckpointStore::open(&dir).unwrap();
    /// # let chk = store.begin(1).unwrap();
    /// # let mut part = chk.part(0).unwrap();
    /// # part.write(Record::SourceOffset(SourceOffset { source: "Orders".into(), shard: 0, offset: 9 })).unwrap();
    /// # store.commit(1, Manifest::new(1, 1, vec![part.finish().unwrap()])).unwrap();
    /// let chk = store.latest_complete().unwrap().unwrap();
    /// for r in chk.records() {
    ///     let (shard, record) = r.unwrap();
    ///     assert!(matches!(record, Record::SourceOffset(ref o) if o.offset == 9 && shard == 0));
    /// }
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn records(&self) -> Records {
        Records::new(&self.dir, self.manifest.parts.clone())
    }

    /// The source offsets and sink positions (every record but key-group state), for the
    /// connectors to resume from.
    ///
    /// ```
    /// # use bettong::checkpoint::{CheckpointStore, Manifest};
    /// # let dir = std::env::temp_dir().join(format!("bettong-doc-cpos-{}", std::process::id()));
    /// # let store = CheckpointStore::open(&dir).unwrap();
    /// # let chk = store.begin(1).unwrap();
    /// # let mut part = chk.part(0).unwrap();
    /// # part.write_group("count", 1, vec![]).unwrap();
    /// # store.commit(1, Manifest::new(1, 1, vec![part.finish().unwrap()])).unwrap();
    /// assert!(store.latest_complete().unwrap().unwrap().positions().unwrap().is_empty());
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn positions(&self) -> Result<Vec<Record>, CheckpointError> {
        self.records()
            .filter_map(|r| match r {
                Ok((_, Record::Group(_))) => None,
                Ok((_, other)) => Some(Ok(other)),
                Err(e) => Some(Err(e)),
            })
            .collect()
    }

    /// The key-group state that shard `shard` of `shards` must load after a restart: every
    /// group record whose group [`shard_of_group`] assigns to it. Works for any shard count,
    /// whatever the count the checkpoint was taken with; parts holding none of the shard's
    /// groups are not read.
    ///
    /// ```
    /// # use bettong::checkpoint::{CheckpointStore, Manifest};
    /// # let dir = std::env::temp_dir().join(format!("bettong-doc-cgrp-{}", std::process::id()));
    /// # let store = CheckpointStore::open(&dir).unwrap();
    /// # let chk = store.begin(1).unwrap();
    /// # let mut part = chk.part(0).unwrap();
    /// # part.write_group("count", 0, vec![]).unwrap();
    /// # part.write_group("count", 4095, vec![]).unwrap();
    /// # store.commit(1, Manifest::new(1, 1, vec![part.finish().unwrap()])).unwrap();
    /// let chk = store.latest_complete().unwrap().unwrap();
    /// // Taken on 1 shard, restored on 2: group 0 goes to shard 0, group 4095 to shard 1.
    /// let on1: Vec<u16> = chk.groups_for(1, 2).map(|g| g.unwrap().group).collect();
    /// assert_eq!(on1, [4095]);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn groups_for(
        &self,
        shard: usize,
        shards: usize,
    ) -> impl Iterator<Item = Result<GroupState, CheckpointError>> {
        let parts: Vec<PartInfo> = self
            .manifest
            .parts
            .iter()
            .filter(|p| {
                p.groups.is_some_and(|(lo, hi)| {
                    shard_of_group(lo as usize, shards) <= shard
                        && shard <= shard_of_group(hi as usize, shards)
                })
            })
            .cloned()
            .collect();
        Records::new(&self.dir, parts).filter_map(move |r| match r {
            Ok((_, Record::Group(g))) if shard_of_group(g.group as usize, shards) == shard => {
                Some(Ok(g))
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
    }
}

/// The records of a checkpoint's parts, read one part at a time, each with its shard. Stops
/// after the first error (the files were validated, so one means they changed since).
///
/// ```
/// # use bettong::checkpoint::{CheckpointStore, Manifest};
/// # let dir = std::env::temp_dir().join(format!("bettong-doc-recs-{}", std::process::id()));
/// # let store = CheckpointStore::open(&dir).unwrap();
/// # let chk = store.begin(1).unwrap();
/// # store.commit(1, Manifest::new(1, 1, vec![chk.part(0).unwrap().finish().unwrap()])).unwrap();
/// let records: bettong::checkpoint::Records = store.latest_complete().unwrap().unwrap().records();
/// assert_eq!(records.count(), 0);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub struct Records {
    dir: PathBuf,
    parts: std::vec::IntoIter<PartInfo>,
    current: Option<(PartInfo, Reader<BufReader<File>>)>,
    failed: bool,
}

impl Records {
    fn new(dir: &Path, parts: Vec<PartInfo>) -> Records {
        Records {
            dir: dir.to_path_buf(),
            parts: parts.into_iter(),
            current: None,
            failed: false,
        }
    }

    fn fail(&mut self, message: String) -> Option<Result<(u32, Record), CheckpointError>> {
        self.failed = true;
        Some(Err(CheckpointError::Damaged(message)))
    }
}

impl Iterator for Records {
    type Item = Result<(u32, Record), CheckpointError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            if let Some((part, reader)) = &mut self.current {
                match reader.next() {
                    Some(Ok(r)) => return Some(Ok((part.shard, r))),
                    Some(Err(e)) => {
                        let m = format!("{}: {}: {e}", self.dir.display(), part.file);
                        return self.fail(m);
                    }
                    None => self.current = None,
                }
            }
            let part = self.parts.next()?;
            let path = self.dir.join(&part.file);
            match File::open(&path)
                .map_err(Damage::Io)
                .and_then(|f| Reader::new(BufReader::with_capacity(1 << 20, f)))
            {
                Ok(r) => self.current = Some((part, r)),
                Err(d) => return self.fail(format!("{}: {d}", path.display())),
            }
        }
    }
}

/// Checks a committed checkpoint whole; the reason it is unusable otherwise.
fn validate(dir: &Path, id: u64) -> Result<Manifest, String> {
    let manifest =
        read_manifest(&dir.join(MANIFEST), id).map_err(|m| format!("{MANIFEST}: {m}"))?;
    manifest.check().map_err(|m| format!("{MANIFEST}: {m}"))?;
    for part in &manifest.parts {
        validate_part(dir, id, part).map_err(|m| format!("{}: {m}", part.file))?;
    }
    Ok(manifest)
}

fn read_manifest(path: &Path, id: u64) -> Result<Manifest, String> {
    let f = File::open(path).map_err(|e| e.to_string())?;
    let mut r = Reader::new(BufReader::new(f)).map_err(|d| format!("header: {d}"))?;
    let h = *r.header();
    if h.kind != Kind::Manifest || h.checkpoint != id {
        return Err(format!(
            "header is for a {:?} of checkpoint {}, expected the manifest of {id}",
            h.kind, h.checkpoint
        ));
    }
    let manifest = match r.next_as::<Manifest>() {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Err(e.to_string()),
        None => return Err("empty".into()),
    };
    if r.next_as::<Manifest>().is_some() {
        return Err("data after the manifest".into());
    }
    if manifest.checkpoint != id {
        return Err(format!("lists checkpoint {}", manifest.checkpoint));
    }
    Ok(manifest)
}

fn validate_part(dir: &Path, id: u64, part: &PartInfo) -> Result<(), String> {
    let f = File::open(dir.join(&part.file)).map_err(|e| e.to_string())?;
    let hashing = Hashing {
        inner: f,
        hasher: crc32fast::Hasher::new(),
        bytes: 0,
    };
    let mut r = Reader::new(BufReader::with_capacity(1 << 20, hashing))
        .map_err(|d| format!("header: {d}"))?;
    let h = *r.header();
    if h.kind != Kind::Part || h.checkpoint != id || h.shard != part.shard {
        return Err(format!(
            "header is for a {:?} of checkpoint {} shard {}, expected shard {} of {id}",
            h.kind, h.checkpoint, h.shard, part.shard
        ));
    }
    for rec in r.by_ref() {
        rec.map_err(|e| e.to_string())?;
    }
    let (records, read) = (r.frames_read(), r.bytes_read());
    let hashing = r.into_inner().into_inner();
    if read != part.bytes || hashing.bytes != part.bytes {
        return Err(format!(
            "{} bytes, the manifest says {} (cut short or appended to)",
            hashing.bytes, part.bytes
        ));
    }
    if records != part.records {
        return Err(format!(
            "{records} records, the manifest says {}",
            part.records
        ));
    }
    let crc = hashing.hasher.finalize();
    if crc != part.crc32 {
        return Err(format!(
            "file checksum mismatch (manifest {:#010x}, file {crc:#010x})",
            part.crc32
        ));
    }
    Ok(())
}

/// A reader that checksums and counts what passes through it.
struct Hashing {
    inner: File,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl Read for Hashing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}
