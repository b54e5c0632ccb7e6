//! Checkpoints on real files in a temporary directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::format::{
    encode_frame, GroupState, Header, Kind, Record, SinkPosition, SourceOffset, FORMAT_VERSION,
    FRAME_PREFIX_LEN, HEADER_LEN,
};
use super::*;
use crate::state::{key_group, shard_of_group, KEY_GROUPS};
use crate::Key;

/// A fresh directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "bettong-checkpoint-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Operator state on the shard that owns each key: operator -> group -> entries.
type State = BTreeMap<String, BTreeMap<u16, Vec<(Vec<u8>, Vec<u8>)>>>;

/// Two operators' state over `keys` keys, as the engine would hold it.
fn state(keys: usize) -> State {
    let mut s = State::new();
    for i in 0..keys {
        let key = format!("key-{i}");
        let group = key_group(key.as_str().stable_hash()) as u16;
        for (op, value) in [
            ("count", (i as u64).to_le_bytes().to_vec()),
            ("last", key.clone().into_bytes()),
        ] {
            s.entry(op.to_string())
                .or_default()
                .entry(group)
                .or_default()
                .push((key.clone().into_bytes(), value));
        }
    }
    s
}

/// The records shard `shard` of `shards` writes: its groups of every operator, then its
/// source offset and sink position.
fn shard_records(state: &State, shard: usize, shards: usize, id: u64) -> Vec<Record> {
    let mut out = Vec::new();
    for (op, groups) in state {
        for (&group, entries) in groups {
            if shard_of_group(group as usize, shards) == shard {
                out.push(Record::Group(GroupState {
                    operator: op.clone(),
                    group,
                    entries: entries.clone(),
                }));
            }
        }
    }
    out.push(Record::SourceOffset(SourceOffset {
        source: "Orders".into(),
        shard: shard as u32,
        offset: 1000 * id + shard as u64,
    }));
    out.push(Record::SinkPosition(SinkPosition {
        sink: "Out".into(),
        shard: shard as u32,
        position: 10 * id + shard as u64,
    }));
    out
}

/// Takes checkpoint `id` of `state` on `shards` shards, each part written on its own thread.
fn take(store: &CheckpointStore, id: u64, state: &State, shards: usize) {
    let chk = store.begin(id).unwrap();
    let parts: Vec<PartInfo> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..shards)
            .map(|shard| {
                let chk = chk.clone();
                let records = shard_records(state, shard, shards, id);
                s.spawn(move || {
                    let mut part = chk.part(shard as u32).unwrap();
                    for r in records {
                        part.write(r).unwrap();
                    }
                    part.finish().unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    store
        .commit(id, Manifest::new(id, shards as u32, parts))
        .unwrap();
}

/// The byte offsets of every frame of a part file.
fn frame_offsets(path: &Path) -> Vec<usize> {
    let bytes = fs::read(path).unwrap();
    let mut at = HEADER_LEN;
    let mut out = Vec::new();
    while at < bytes.len() {
        out.push(at);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += FRAME_PREFIX_LEN + len;
    }
    out
}

#[test]
fn checkpoint_on_2_shards_restores_onto_1_3_and_4() {
    let dir = TempDir::new("restore");
    let store = CheckpointStore::open(&dir.0).unwrap();
    let st = state(5000);
    take(&store, 1, &st, 2);

    let chk = store.latest_complete().unwrap().unwrap();
    assert_eq!(chk.id(), 1);
    assert!(chk.rejected().is_empty());
    let m = chk.manifest();
    assert_eq!(
        (m.shards, m.key_groups as usize, m.parts.len()),
        (2, KEY_GROUPS, 2)
    );
    // Each part's group range lies in the range shard_of_group gives its shard.
    assert!((m.parts[0].groups.unwrap().1 as usize) < KEY_GROUPS / 2);
    assert!((m.parts[1].groups.unwrap().0 as usize) >= KEY_GROUPS / 2);

    let written: usize = (0..2).map(|s| shard_records(&st, s, 2, 1).len()).sum();
    assert_eq!(chk.records().count(), written);
    let positions = chk.positions().unwrap();
    assert_eq!(positions.len(), 4);
    assert!(positions.contains(&Record::SourceOffset(SourceOffset {
        source: "Orders".into(),
        shard: 1,
        offset: 1001
    })));

    let original: BTreeSet<(String, u16, Vec<u8>, Vec<u8>)> = st
        .iter()
        .flat_map(|(op, groups)| {
            groups.iter().flat_map(move |(&g, entries)| {
                entries
                    .iter()
                    .map(move |(k, v)| (op.clone(), g, k.clone(), v.clone()))
            })
        })
        .collect();
    assert_eq!(original.len(), 10_000);

    for shards in [1, 3, 4] {
        let mut seen_groups: BTreeMap<(String, u16), usize> = BTreeMap::new();
        let mut restored = Vec::new();
        for shard in 0..shards {
            for g in chk.groups_for(shard, shards) {
                let g = g.unwrap();
                assert_eq!(
                    shard_of_group(g.group as usize, shards),
                    shard,
                    "group {} given to the wrong shard of {shards}",
                    g.group
                );
                *seen_groups
                    .entry((g.operator.clone(), g.group))
                    .or_default() += 1;
                for (k, v) in g.entries {
                    restored.push((g.operator.clone(), g.group, k, v));
                }
            }
        }
        assert!(
            seen_groups.values().all(|&n| n == 1),
            "{shards} shards: a group landed on more than one shard"
        );
        let groups_written: usize = st.values().map(BTreeMap::len).sum();
        assert_eq!(
            seen_groups.len(),
            groups_written,
            "{shards} shards: groups lost"
        );
        assert_eq!(
            restored.len(),
            original.len(),
            "{shards} shards: entries lost or duplicated"
        );
        let restored: BTreeSet<_> = restored.into_iter().collect();
        assert_eq!(restored, original, "{shards} shards");
    }
}

#[test]
fn checkpoint_truncated_newest_part_falls_back_to_previous() {
    let dir = TempDir::new("truncated");
    let store = CheckpointStore::open(&dir.0).unwrap();
    let st = state(300);
    take(&store, 6, &st, 2);
    take(&store, 7, &st, 2);

    let path = store.checkpoint_dir(7).join("shard-1.bin");
    let offsets = frame_offsets(&path);
    let last = offsets.len() - 1;
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let chk = store.latest_complete().unwrap().unwrap();
    assert_eq!(chk.id(), 6);
    let msg = chk.fallback_message().unwrap();
    let expected = format!(
        "checkpoint 7: shard-1.bin: record {last} at byte {}: truncated",
        offsets[last]
    );
    assert!(msg.starts_with(&expected), "{msg}");
    assert!(msg.ends_with("; using checkpoint 6"), "{msg}");
}

#[test]
fn checkpoint_flipped_byte_in_newest_part_falls_back_to_previous() {
    let dir = TempDir::new("flipped");
    let store = CheckpointStore::open(&dir.0).unwrap();
    let st = state(300);
    take(&store, 6, &st, 2);
    take(&store, 7, &st, 2);

    let path = store.checkpoint_dir(7).join("shard-1.bin");
    let offsets = frame_offsets(&path);
    let mut bytes = fs::read(&path).unwrap();
    bytes[offsets[12] + FRAME_PREFIX_LEN + 5] ^= 0x01;
    fs::write(&path, &bytes).unwrap();

    let chk = store.latest_complete().unwrap().unwrap();
    assert_eq!(chk.id(), 6);
    assert_eq!(chk.rejected().len(), 1);
    let msg = chk.fallback_message().unwrap();
    let expected = format!(
        "checkpoint 7: shard-1.bin: record 12 at byte {}: checksum mismatch",
        offsets[12]
    );
    assert!(msg.starts_with(&expected), "{msg}");
    assert!(msg.ends_with("; using checkpoint 6"), "{msg}");
    // The previous checkpoint is read whole.
    assert_eq!(
        chk.records().count(),
        (0..2)
            .map(|s| shard_records(&st, s, 2, 6).len())
            .sum::<usize>()
    );
}

#[test]
fn checkpoint_damage_outside_records_is_caught_too() {
    // A damaged manifest, and a part with a record appended after the manifest was written.
    let dir = TempDir::new("manifest");
    let store = CheckpointStore::open(&dir.0).unwrap();
    let st = state(50);
    take(&store, 1, &st, 1);
    take(&store, 2, &st, 1);

    let manifest = store.checkpoint_dir(2).join("MANIFEST");
    let mut bytes = fs::read(&manifest).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x80;
    fs::write(&manifest, &bytes).unwrap();
    let chk = store.latest_complete().unwrap().unwrap();
    assert_eq!(chk.id(), 1);
    assert!(
        chk.rejected()[0]
            .starts_with("checkpoint 2: MANIFEST: record 0 at byte 24: checksum mismatch"),
        "{:?}",
        chk.rejected()
    );

    let part = store.checkpoint_dir(1).join("shard-0.bin");
    let mut bytes = fs::read(&part).unwrap();
    let first = frame_offsets(&part)[0];
    let len = u32::from_le_bytes(bytes[first..first + 4].try_into().unwrap()) as usize;
    let frame = bytes[first..first + FRAME_PREFIX_LEN + len].to_vec();
    bytes.extend_from_slice(&frame);
    fs::write(&part, &bytes).unwrap();
    match store.latest_complete() {
        Err(CheckpointError::NoValidCheckpoint(reasons)) => {
            assert_eq!(reasons.len(), 2);
            assert!(
                reasons[0].starts_with("checkpoint 2: MANIFEST:"),
                "{reasons:?}"
            );
            assert!(
                reasons[1].starts_with("checkpoint 1: shard-0.bin:")
                    && reasons[1].contains("manifest says"),
                "{reasons:?}"
            );
        }
        other => panic!("expected no valid checkpoint, got {other:?}"),
    }
}

#[test]
fn checkpoint_without_manifest_is_ignored() {
    let dir = TempDir::new("uncommitted");
    let st = state(100);
    {
        let store = CheckpointStore::open(&dir.0).unwrap();
        take(&store, 1, &st, 2);
        // Checkpoint 2: both parts written, then a crash before commit.
        let chk = store.begin(2).unwrap();
        for shard in 0..2 {
            let mut part = chk.part(shard).unwrap();
            for r in shard_records(&st, shard as usize, 2, 2) {
                part.write(r).unwrap();
            }
            part.finish().unwrap();
        }
    }
    let store = CheckpointStore::open(&dir.0).unwrap();
    assert_eq!(store.ids().unwrap(), [1, 2]);
    assert_eq!(store.committed().unwrap(), [1]);
    let chk = store.latest_complete().unwrap().unwrap();
    assert_eq!(chk.id(), 1);
    assert!(
        chk.rejected().is_empty(),
        "an unfinished attempt is not a rejected checkpoint"
    );
    assert_eq!(store.next_id().unwrap(), 3);
    // The id of the crashed attempt can be reused: the attempt is replaced.
    take(&store, 2, &st, 2);
    assert_eq!(store.latest_complete().unwrap().unwrap().id(), 2);
}

#[test]
fn checkpoint_store_keeps_the_last_two_complete() {
    let dir = TempDir::new("retention");
    let store = CheckpointStore::open(&dir.0).unwrap();
    let st = state(20);
    for id in 1..=5 {
        take(&store, id, &st, 2);
        let expected: Vec<u64> = (id.saturating_sub(1).max(1)..=id).collect();
        assert_eq!(store.committed().unwrap(), expected);
    }
    assert_eq!(store.ids().unwrap(), [4, 5]);

    // An unfinished attempt older than the newest commit goes too; a newer one stays.
    let chk = store.begin(6).unwrap();
    chk.part(0).unwrap().finish().unwrap();
    let store = CheckpointStore::open(&dir.0).unwrap(); // the process restarted
    take(&store, 7, &st, 2);
    assert_eq!(store.ids().unwrap(), [5, 7]);
    let _in_flight = store.begin(8).unwrap();
    store.prune().unwrap();
    assert_eq!(store.ids().unwrap(), [5, 7, 8]);
}

#[test]
fn checkpoint_manifest_is_written_atomically() {
    let dir = TempDir::new("atomic");
    let store = CheckpointStore::open(&dir.0).unwrap();
    let st = state(100);
    take(&store, 1, &st, 1);
    assert!(!store.checkpoint_dir(1).join("MANIFEST.tmp").exists());

    // A crash after writing the temp manifest (even a whole one) but before the rename.
    let chk = store.begin(2).unwrap();
    let mut part = chk.part(0).unwrap();
    for r in shard_records(&st, 0, 1, 2) {
        part.write(r).unwrap();
    }
    let info = part.finish().unwrap();
    let mut good = Header {
        version: FORMAT_VERSION,
        checkpoint: 2,
        shard: 0,
        kind: Kind::Manifest,
    }
    .encode()
    .to_vec();
    encode_frame(&Manifest::new(2, 1, vec![info]), &mut good).unwrap();
    fs::write(store.checkpoint_dir(2).join("MANIFEST.tmp"), &good).unwrap();
    let store = CheckpointStore::open(&dir.0).unwrap();
    assert_eq!(store.committed().unwrap(), [1]);
    let chk = store.latest_complete().unwrap().unwrap();
    assert_eq!(chk.id(), 1);
    assert!(chk.rejected().is_empty());

    // A manifest cut short (as a non-atomic write could leave it) is rejected, not half-read.
    fs::write(
        store.checkpoint_dir(2).join("MANIFEST"),
        &good[..good.len() / 2],
    )
    .unwrap();
    let chk = store.latest_complete().unwrap().unwrap();
    assert_eq!(chk.id(), 1);
    assert!(
        chk.rejected()[0].starts_with("checkpoint 2: MANIFEST: record 0 at byte 24: truncated"),
        "{:?}",
        chk.rejected()
    );
}

#[test]
fn checkpoint_store_enforces_one_in_flight_and_a_coherent_manifest() {
    let dir = TempDir::new("rules");
    let store = CheckpointStore::open(&dir.0).unwrap();
    let chk = store.begin(3).unwrap();
    assert!(matches!(
        store.begin(4),
        Err(CheckpointError::InFlight {
            running: 3,
            requested: 4
        })
    ));
    assert!(matches!(
        store.commit(4, Manifest::new(4, 1, vec![])),
        Err(CheckpointError::NotInFlight(4))
    ));
    let p0 = chk.part(0).unwrap().finish().unwrap();
    let mut p1 = chk.part(1).unwrap();
    p1.write_group("op", 1, vec![(vec![1], vec![2])]).unwrap();
    let p1 = p1.finish().unwrap();

    // Wrong id, wrong shard count, wrong size: refused, and the checkpoint stays in flight.
    assert!(matches!(
        store.commit(3, Manifest::new(2, 2, vec![p0.clone(), p1.clone()])),
        Err(CheckpointError::BadManifest(_))
    ));
    assert!(matches!(
        store.commit(3, Manifest::new(3, 1, vec![p0.clone(), p1.clone()])),
        Err(CheckpointError::BadManifest(_))
    ));
    let mut short = p1.clone();
    short.bytes -= 1;
    let e = store
        .commit(3, Manifest::new(3, 2, vec![p0.clone(), short]))
        .unwrap_err();
    assert!(e.to_string().contains("shard-1.bin is"), "{e}");
    assert_eq!(store.in_flight(), Some(3));

    store.commit(3, Manifest::new(3, 2, vec![p1, p0])).unwrap();
    assert_eq!(store.in_flight(), None);
    assert!(matches!(
        store.begin(3),
        Err(CheckpointError::NotNewer {
            requested: 3,
            latest: 3
        })
    ));
    let chk = store.begin(4).unwrap();
    store.abort(chk.id()).unwrap();
    assert_eq!(store.ids().unwrap(), [3]);
}

/// Write and read back 1 M keys of 32 bytes (8-byte values) on one shard: run with
/// `cargo test -p bettong --release checkpoint_throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; prints its figures"]
fn checkpoint_throughput_1m_keys() {
    const KEYS: usize = 1_000_000;
    let dir = TempDir::new("throughput");
    let store = CheckpointStore::open(&dir.0).unwrap();
    let mut groups: Vec<Vec<(Vec<u8>, Vec<u8>)>> = vec![Vec::new(); KEY_GROUPS];
    for i in 0..KEYS {
        let key = format!("key-{i:028}");
        let g = key_group(key.as_str().stable_hash());
        groups[g].push((key.into_bytes(), (i as u64).to_le_bytes().to_vec()));
    }
    let payload: usize = groups
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len())
        .sum();

    let records: Vec<Record> = groups
        .into_iter()
        .enumerate()
        .map(|(g, entries)| {
            Record::Group(GroupState {
                operator: "count".into(),
                group: g as u16,
                entries,
            })
        })
        .collect();

    let t = Instant::now();
    let chk = store.begin(1).unwrap();
    let mut part = chk.part(0).unwrap();
    for r in &records {
        part.write_ref(r).unwrap();
    }
    let encoded = t.elapsed();
    let info = part.finish().unwrap();
    store
        .commit(1, Manifest::new(1, 1, vec![info.clone()]))
        .unwrap();
    let write = t.elapsed();
    let t = Instant::now();
    drop(records);
    let free = t.elapsed();

    let t = Instant::now();
    let chk = store.latest_complete().unwrap().unwrap();
    let validate = t.elapsed();
    let t = Instant::now();
    let mut keys = 0;
    for g in chk.groups_for(0, 1) {
        keys += g.unwrap().entries.len();
    }
    let read = t.elapsed();
    assert_eq!(keys, KEYS);

    let mb = info.bytes as f64 / 1e6;
    println!(
        "checkpoint of {KEYS} keys ({:.1} MB of keys and values, {mb:.1} MB file): \
         write+fsync+commit {:.0} ms ({:.0} MB/s; {:.0} ms of it encoding and writing), \
         then freeing the 2 M handed-over buffers {:.0} ms, validate {:.0} ms ({:.0} MB/s), \
         read back {:.0} ms ({:.0} MB/s)",
        payload as f64 / 1e6,
        write.as_secs_f64() * 1e3,
        mb / write.as_secs_f64(),
        encoded.as_secs_f64() * 1e3,
        free.as_secs_f64() * 1e3,
        validate.as_secs_f64() * 1e3,
        mb / validate.as_secs_f64(),
        read.as_secs_f64() * 1e3,
        mb / read.as_secs_f64(),
    );
}
