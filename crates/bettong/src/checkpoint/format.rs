//! The on-disk record format shared by checkpoint parts and manifests.
//!
//! A file is a fixed 24-byte [`Header`] followed by frames. Every integer is little-endian.
//!
//! ```text
//! header:  "BTCK" | version u16 | kind u8 | 0u8 | checkpoint id u64 | shard u32 | crc32 of the 20 bytes before it
//! frame:   len u32 | crc32 of payload u32 | payload (len bytes)
//! ```
//!
//! A part's payloads are [`Record`]s in postcard; a manifest holds one frame, a postcard
//! [`Manifest`](super::Manifest). The checksum is CRC-32 (IEEE), computed with `crc32fast`.
//! A [`Reader`] yields records until the end of the file or the first damaged one (cut
//! short, checksum mismatch, undecodable payload) and says which and where
//! ([`Reader::stopped`]); nothing after a damaged frame is trusted.
//!
//! Compatibility: [`Record`]'s variants are encoded by their position, so new kinds of record
//! are only ever appended; a writer that uses one bumps [`FORMAT_VERSION`], and a reader
//! refuses files of a version it does not know rather than guess.
//!
//! ```
//! use bettong::checkpoint::format::{encode_frame, Header, Kind, Reader, Record, SourceOffset};
//!
//! let mut file = Header { version: 1, checkpoint: 7, shard: 0, kind: Kind::Part }.encode().to_vec();
//! let rec = Record::SourceOffset(SourceOffset { source: "Orders".into(), shard: 0, offset: 42 });
//! encode_frame(&rec, &mut file).unwrap();
//! let mut r = Reader::new(&file[..]).unwrap();
//! assert_eq!(r.header().checkpoint, 7);
//! assert_eq!(r.next().unwrap().unwrap(), rec);
//! assert!(r.next().is_none() && r.stopped().is_none());
//! ```

use std::fmt;
use std::io::{self, Read};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The four bytes every checkpoint file starts with.
///
/// ```
/// assert_eq!(&bettong::checkpoint::format::MAGIC, b"BTCK");
/// ```
pub const MAGIC: [u8; 4] = *b"BTCK";

/// The format version this code writes, and the highest it reads.
///
/// ```
/// assert_eq!(bettong::checkpoint::format::FORMAT_VERSION, 1);
/// ```
pub const FORMAT_VERSION: u16 = 1;

/// The size of a [`Header`] on disk, in bytes.
///
/// ```
/// use bettong::checkpoint::format::{Header, Kind, HEADER_LEN};
/// assert_eq!(Header { version: 1, checkpoint: 1, shard: 0, kind: Kind::Part }.encode().len(), HEADER_LEN);
/// ```
pub const HEADER_LEN: usize = 24;

/// The size of a frame's prefix (length and checksum), in bytes.
///
/// ```
/// assert_eq!(bettong::checkpoint::format::FRAME_PREFIX_LEN, 8);
/// ```
pub const FRAME_PREFIX_LEN: usize = 8;

/// The largest payload a frame may carry (1 GiB); a longer length is taken as damage.
///
/// ```
/// assert_eq!(bettong::checkpoint::format::MAX_PAYLOAD, 1 << 30);
/// ```
pub const MAX_PAYLOAD: u32 = 1 << 30;

// A key group is stored as a u16.
const _: () = assert!(crate::state::KEY_GROUPS <= u16::MAX as usize + 1);

/// What a checkpoint file holds.
///
/// ```
/// use bettong::checkpoint::format::Kind;
/// assert_eq!(Kind::from_byte(Kind::Manifest as u8), Some(Kind::Manifest));
/// assert_eq!(Kind::from_byte(9), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// One shard's part of a checkpoint: [`Record`]s.
    Part = 1,
    /// A checkpoint's manifest: one [`Manifest`](super::Manifest).
    Manifest = 2,
}

impl Kind {
    /// The kind a header byte names, if any.
    ///
    /// ```
    /// use bettong::checkpoint::format::Kind;
    /// assert_eq!(Kind::from_byte(1), Some(Kind::Part));
    /// ```
    pub fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Part),
            2 => Some(Kind::Manifest),
            _ => None,
        }
    }
}

/// The fixed header at the start of every checkpoint file.
///
/// ```
/// use bettong::checkpoint::format::{Header, Kind};
/// let h = Header { version: 1, checkpoint: 9, shard: 3, kind: Kind::Part };
/// assert_eq!(Header::decode(&h.encode()).unwrap(), h);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The format version the file was written in ([`FORMAT_VERSION`]).
    pub version: u16,
    /// The checkpoint (barrier) id.
    pub checkpoint: u64,
    /// The shard that wrote the part (0 for a manifest).
    pub shard: u32,
    /// What the file holds.
    pub kind: Kind,
}

impl Header {
    /// The header's 24 bytes: magic, version, kind, a zero byte, id, shard, CRC-32 of the rest.
    ///
    /// ```
    /// use bettong::checkpoint::format::{Header, Kind};
    /// let b = Header { version: 1, checkpoint: 2, shard: 0, kind: Kind::Manifest }.encode();
    /// assert_eq!(&b[..4], b"BTCK");
    /// ```
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6] = self.kind as u8;
        b[8..16].copy_from_slice(&self.checkpoint.to_le_bytes());
        b[16..20].copy_from_slice(&self.shard.to_le_bytes());
        let crc = crc32fast::hash(&b[..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a header, checking magic, checksum, version and kind.
    ///
    /// ```
    /// use bettong::checkpoint::format::{Damage, Header};
    /// assert!(matches!(Header::decode(b"nope"), Err(Damage::Truncated { .. })));
    /// ```
    pub fn decode(b: &[u8]) -> Result<Header, Damage> {
        if b.len() < HEADER_LEN {
            return Err(Damage::Truncated {
                needed: HEADER_LEN as u64,
                available: b.len() as u64,
            });
        }
        if b[..4] != MAGIC {
            return Err(Damage::NotCheckpoint);
        }
        let stored = u32::from_le_bytes(b[20..24].try_into().expect("4 bytes"));
        let computed = crc32fast::hash(&b[..20]);
        if stored != computed {
            return Err(Damage::Checksum { stored, computed });
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version == 0 || version > FORMAT_VERSION {
            return Err(Damage::Version(version));
        }
        let kind =
            Kind::from_byte(b[6]).ok_or(Damage::Decode(format!("unknown file kind {}", b[6])))?;
        Ok(Header {
            version,
            checkpoint: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            shard: u32::from_le_bytes(b[16..20].try_into().expect("4 bytes")),
            kind,
        })
    }
}

/// One record of a checkpoint part. Appending variants keeps old files readable; never
/// reorder or remove one (see the module notes).
///
/// ```
/// use bettong::checkpoint::format::{GroupState, Record};
/// let r = Record::Group(GroupState { operator: "count".into(), group: 17, entries: vec![(b"k".to_vec(), b"v".to_vec())] });
/// assert!(matches!(r, Record::Group(ref g) if g.group == 17));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Record {
    /// An operator's keyed state for one key group.
    Group(GroupState),
    /// How far a source shard had read when the barrier passed.
    SourceOffset(SourceOffset),
    /// What a sink shard had pre-committed when the barrier passed.
    SinkPosition(SinkPosition),
    /// Where the streams of a connector source stood when the barrier passed.
    Streams(StreamPositions),
    /// The committed length of one file of a file sink.
    SinkFile(SinkFile),
}

/// The state entities of one operator in one key group, as serialized key and value bytes.
///
/// ```
/// use bettong::checkpoint::format::GroupState;
/// let g = GroupState { operator: "count".into(), group: 4095, entries: vec![] };
/// assert!(g.entries.is_empty());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// The state operator's name (unique in the application).
    pub operator: String,
    /// The key group, below [`KEY_GROUPS`](crate::state::KEY_GROUPS).
    pub group: u16,
    /// `(key, value)` pairs, each serialized by the operator.
    #[serde(with = "entries")]
    pub entries: Entries,
}

/// An operator's serialized `(key, value)` pairs.
///
/// ```
/// let e: bettong::checkpoint::format::Entries = vec![(b"IBM".to_vec(), 7u64.to_le_bytes().to_vec())];
/// assert_eq!(e.len(), 1);
/// ```
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A source shard's read position at the barrier.
///
/// ```
/// use bettong::checkpoint::format::SourceOffset;
/// let o = SourceOffset { source: "Orders".into(), shard: 1, offset: 1 << 40 };
/// assert_eq!(o.offset, 1 << 40);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceOffset {
    /// The source's name.
    pub source: String,
    /// The shard (or partition) of the source.
    pub shard: u32,
    /// The offset to resume from.
    pub offset: u64,
}

/// A sink shard's pre-committed position at the barrier.
///
/// ```
/// use bettong::checkpoint::format::SinkPosition;
/// let p = SinkPosition { sink: "Out".into(), shard: 0, position: 9 };
/// assert_eq!(p.sink, "Out");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkPosition {
    /// The sink's name.
    pub sink: String,
    /// The sink shard.
    pub shard: u32,
    /// The pre-committed position (transaction, file offset, sequence number).
    pub position: u64,
}

/// The points of reference of a connector source's streams at the barrier, as one shard
/// recorded them: `(stream id, last message id included)`. Recovery takes, per stream, the
/// highest over every shard's record (a stream moves between connections, so between shards).
///
/// ```
/// use bettong::checkpoint::format::StreamPositions;
/// let s = StreamPositions { source: "Text".into(), shard: 0, streams: vec![(7, 41)] };
/// assert_eq!(s.streams[0], (7, 41));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPositions {
    /// The source's name.
    pub source: String,
    /// The shard that recorded them.
    pub shard: u32,
    /// `(stream id, point of reference)` pairs.
    pub streams: Vec<(u64, u64)>,
}

/// The length of one file of a file sink at the barrier. Kept by file rather than by shard,
/// because the files a sink writes depend on the shard count (`PATH` with one shard, `PATH.N`
/// with several): after a restart on another count, every file a checkpoint knows is cut back
/// to its length, including those no shard writes any more (which shard 0 then carries into
/// every later checkpoint, so that growing back finds them as they were).
///
/// ```
/// use bettong::checkpoint::format::SinkFile;
/// let f = SinkFile { sink: "Out".into(), file: "/tmp/out.txt.1".into(), position: 590 };
/// assert_eq!(f.position, 590);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkFile {
    /// The sink's name.
    pub sink: String,
    /// The file's path, as the sink was given it.
    pub file: String,
    /// Its committed length in bytes.
    pub position: u64,
}

/// Appends one frame (length, CRC-32, postcard payload) holding `value` to `out`; returns
/// the number of bytes appended.
///
/// ```
/// use bettong::checkpoint::format::{encode_frame, Record, SinkPosition};
/// let mut out = Vec::new();
/// let n = encode_frame(&Record::SinkPosition(SinkPosition { sink: "s".into(), shard: 0, position: 1 }), &mut out).unwrap();
/// assert_eq!(n, out.len());
/// ```
pub fn encode_frame<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<usize, Damage> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_PREFIX_LEN]);
    if let Err(e) = postcard::serialize_with_flavor(value, Append(out)) {
        out.truncate(start);
        return Err(Damage::Decode(format!("cannot encode: {e}")));
    }
    let len = out.len() - start - FRAME_PREFIX_LEN;
    if len > MAX_PAYLOAD as usize {
        out.truncate(start);
        return Err(Damage::TooLarge(len as u64));
    }
    let crc = crc32fast::hash(&out[start + FRAME_PREFIX_LEN..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(out.len() - start)
}

/// A postcard output appending to a `Vec` with whole-slice copies (postcard's own
/// `to_extend` goes through an iterator).
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// What is wrong with a header or a frame.
///
/// ```
/// use bettong::checkpoint::format::Damage;
/// let d = Damage::Checksum { stored: 1, computed: 2 };
/// assert!(d.to_string().starts_with("checksum mismatch"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Damage {
    /// The file ends inside the header or a frame.
    Truncated {
        /// Bytes the header or frame needs.
        needed: u64,
        /// Bytes that were left.
        available: u64,
    },
    /// The stored CRC-32 does not match the bytes.
    Checksum {
        /// The checksum in the file.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// The payload is not a valid postcard value of the expected type.
    Decode(String),
    /// A frame's length is above [`MAX_PAYLOAD`].
    TooLarge(u64),
    /// The file does not start with [`MAGIC`].
    NotCheckpoint,
    /// The file's format version is not one this code reads.
    Version(u16),
    /// Reading failed.
    Io(io::Error),
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Truncated { needed, available } => {
                write!(f, "truncated (needs {needed} bytes, {available} left)")
            }
            Damage::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            Damage::Decode(m) => write!(f, "undecodable: {m}"),
            Damage::TooLarge(n) => write!(f, "length {n} above the {MAX_PAYLOAD}-byte limit"),
            Damage::NotCheckpoint => f.write_str("not a checkpoint file (bad magic)"),
            Damage::Version(v) => write!(
                f,
                "format version {v}, this build reads 1 to {FORMAT_VERSION}"
            ),
            Damage::Io(e) => write!(f, "read error: {e}"),
        }
    }
}

/// Where a [`Reader`] stopped early: the damaged frame's index (0-based), its byte offset in
/// the file, and what is wrong with it.
///
/// ```
/// use bettong::checkpoint::format::{Damage, RecordError};
/// let e = RecordError { index: 12, offset: 4410, damage: Damage::Checksum { stored: 1, computed: 2 } };
/// assert!(e.to_string().starts_with("record 12 at byte 4410: checksum mismatch"));
/// ```
#[derive(Debug)]
pub struct RecordError {
    /// The frame's index in the file, from 0.
    pub index: u64,
    /// The frame's offset from the start of the file.
    pub offset: u64,
    /// What is wrong.
    pub damage: Damage,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record {} at byte {}: {}",
            self.index, self.offset, self.damage
        )
    }
}

impl std::error::Error for RecordError {}

/// Reads a checkpoint file: the header up front, then frames until the end or the first
/// damaged one. As an iterator it yields [`Record`]s, then at most one error, then `None`.
///
/// ```
/// use bettong::checkpoint::format::{Header, Kind, Reader};
/// let mut file = Header { version: 1, checkpoint: 1, shard: 0, kind: Kind::Part }.encode().to_vec();
/// file.extend_from_slice(&[5, 0, 0, 0]); // a frame cut short
/// let mut r = Reader::new(&file[..]).unwrap();
/// assert!(r.next().unwrap().is_err());
/// assert!(r.next().is_none());
/// assert!(r.stopped().unwrap().to_string().contains("truncated"));
/// ```
pub struct Reader<R> {
    inner: R,
    header: Header,
    offset: u64,
    index: u64,
    buf: Vec<u8>,
    done: bool,
    stopped: Option<RecordError>,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header.
    ///
    /// ```
    /// use bettong::checkpoint::format::Reader;
    /// assert!(Reader::new(&b"BTCK"[..]).is_err());
    /// ```
    pub fn new(mut inner: R) -> Result<Self, Damage> {
        let mut h = [0u8; HEADER_LEN];
        let got = read_full(&mut inner, &mut h).map_err(Damage::Io)?;
        let header = Header::decode(&h[..got])?;
        Ok(Reader {
            inner,
            header,
            offset: HEADER_LEN as u64,
            index: 0,
            buf: Vec::new(),
            done: false,
            stopped: None,
        })
    }

    /// The file's header.
    ///
    /// ```
    /// use bettong::checkpoint::format::{Header, Kind, Reader};
    /// let file = Header { version: 1, checkpoint: 3, shard: 2, kind: Kind::Part }.encode();
    /// assert_eq!(Reader::new(&file[..]).unwrap().header().shard, 2);
    /// ```
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Frames read whole and intact so far.
    ///
    /// ```
    /// use bettong::checkpoint::format::{Header, Kind, Reader};
    /// let file = Header { version: 1, checkpoint: 3, shard: 2, kind: Kind::Part }.encode();
    /// let mut r = Reader::new(&file[..]).unwrap();
    /// assert_eq!(r.by_ref().count(), 0);
    /// assert_eq!(r.frames_read(), 0);
    /// ```
    pub fn frames_read(&self) -> u64 {
        self.index
    }

    /// Bytes consumed so far, header included: the file's length once the reader has ended
    /// cleanly.
    ///
    /// ```
    /// use bettong::checkpoint::format::{Header, Kind, Reader, HEADER_LEN};
    /// let file = Header { version: 1, checkpoint: 3, shard: 2, kind: Kind::Part }.encode();
    /// let mut r = Reader::new(&file[..]).unwrap();
    /// r.by_ref().for_each(drop);
    /// assert_eq!(r.bytes_read(), HEADER_LEN as u64);
    /// ```
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    /// Why reading stopped before the end, once it has; `None` while reading or after a clean end.
    ///
    /// ```
    /// use bettong::checkpoint::format::{Header, Kind, Reader};
    /// let file = Header { version: 1, checkpoint: 3, shard: 2, kind: Kind::Part }.encode();
    /// let mut r = Reader::new(&file[..]).unwrap();
    /// assert!(r.next().is_none() && r.stopped().is_none());
    /// ```
    pub fn stopped(&self) -> Option<&RecordError> {
        self.stopped.as_ref()
    }

    /// The underlying reader, positioned after the last frame read.
    ///
    /// ```
    /// use bettong::checkpoint::format::{Header, Kind, Reader};
    /// let file = Header { version: 1, checkpoint: 3, shard: 2, kind: Kind::Part }.encode();
    /// let rest: &[u8] = Reader::new(&file[..]).unwrap().into_inner();
    /// assert!(rest.is_empty());
    /// ```
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next frame's payload, decoded as `T`: `None` at a clean end of file (or after a
    /// damaged frame), an error for a damaged frame. [`Iterator::next`] is this with
    /// `T = Record`.
    ///
    /// ```
    /// use bettong::checkpoint::format::{encode_frame, Header, Kind, Reader};
    /// let mut file = Header { version: 1, checkpoint: 3, shard: 0, kind: Kind::Manifest }.encode().to_vec();
    /// encode_frame(&(1u32, "x".to_string()), &mut file).unwrap();
    /// let mut r = Reader::new(&file[..]).unwrap();
    /// assert_eq!(r.next_as::<(u32, String)>().unwrap().unwrap(), (1, "x".to_string()));
    /// ```
    pub fn next_as<T: DeserializeOwned>(&mut self) -> Option<Result<T, RecordError>> {
        if self.done {
            return None;
        }
        match self.read_frame() {
            Ok(false) => {
                self.done = true;
                None
            }
            Ok(true) => match postcard::take_from_bytes::<T>(&self.buf) {
                Ok((v, [])) => {
                    self.offset += (FRAME_PREFIX_LEN + self.buf.len()) as u64;
                    self.index += 1;
                    Some(Ok(v))
                }
                Ok((_, rest)) => Some(Err(
                    self.fail(Damage::Decode(format!("{} trailing bytes", rest.len())))
                )),
                Err(e) => Some(Err(self.fail(Damage::Decode(e.to_string())))),
            },
            Err(d) => Some(Err(self.fail(d))),
        }
    }

    /// Records the damage, ends the reader and returns the error to hand out. The stored
    /// copy keeps the description (an I/O error is not `Clone`).
    fn fail(&mut self, damage: Damage) -> RecordError {
        self.done = true;
        let copy = match &damage {
            Damage::Truncated { needed, available } => Damage::Truncated {
                needed: *needed,
                available: *available,
            },
            Damage::Checksum { stored, computed } => Damage::Checksum {
                stored: *stored,
                computed: *computed,
            },
            Damage::Decode(m) => Damage::Decode(m.clone()),
            Damage::TooLarge(n) => Damage::TooLarge(*n),
            Damage::NotCheckpoint => Damage::NotCheckpoint,
            Damage::Version(v) => Damage::Version(*v),
            Damage::Io(e) => Damage::Io(io::Error::new(e.kind(), e.to_string())),
        };
        self.stopped = Some(RecordError {
            index: self.index,
            offset: self.offset,
            damage: copy,
        });
        RecordError {
            index: self.index,
            offset: self.offset,
            damage,
        }
    }

    /// Reads one frame into `self.buf` and checks it: `Ok(false)` at a clean end of file.
    fn read_frame(&mut self) -> Result<bool, Damage> {
        let mut prefix = [0u8; FRAME_PREFIX_LEN];
        let got = read_full(&mut self.inner, &mut prefix).map_err(Damage::Io)?;
        if got == 0 {
            return Ok(false);
        }
        if got < FRAME_PREFIX_LEN {
            return Err(Damage::Truncated {
                needed: FRAME_PREFIX_LEN as u64,
                available: got as u64,
            });
        }
        let len = u32::from_le_bytes(prefix[..4].try_into().expect("4 bytes"));
        let stored = u32::from_le_bytes(prefix[4..].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD {
            return Err(Damage::TooLarge(len as u64));
        }
        let len = len as usize;
        self.buf.clear();
        let got = if len <= 1 << 20 {
            // The common case: one read into a buffer reused across frames.
            self.buf.resize(len, 0);
            read_full(&mut self.inner, &mut self.buf).map_err(Damage::Io)?
        } else {
            // A large (or damaged) length: grow as bytes arrive rather than trust it up front.
            (&mut self.inner)
                .take(len as u64)
                .read_to_end(&mut self.buf)
                .map_err(Damage::Io)?
        };
        if got < len {
            return Err(Damage::Truncated {
                needed: (FRAME_PREFIX_LEN + len) as u64,
                available: (FRAME_PREFIX_LEN + got) as u64,
            });
        }
        let computed = crc32fast::hash(&self.buf);
        if computed != stored {
            return Err(Damage::Checksum { stored, computed });
        }
        Ok(true)
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = Result<Record, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_as::<Record>()
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Serde for `Vec<(Vec<u8>, Vec<u8>)>` with each buffer as a byte string: the same postcard
/// bytes as serde's default (a length, then the bytes), without a call per byte.
mod entries {
    use std::fmt;

    use serde::de::{SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    struct BytesRef<'a>(&'a [u8]);

    impl Serialize for BytesRef<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    struct ByteBuf(Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                    let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                    while let Some(b) = seq.next_element::<u8>()? {
                        v.push(b);
                    }
                    Ok(ByteBuf(v))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }

    pub(super) fn serialize<S: Serializer>(
        entries: &[(Vec<u8>, Vec<u8>)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(entries.len()))?;
        for (k, v) in entries {
            seq.serialize_element(&(BytesRef(k), BytesRef(v)))?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<super::Entries, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = super::Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of (key, value) byte strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // Cap the preallocation: the length comes from the file.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some((ByteBuf(k), ByteBuf(v))) = seq.next_element()? {
                    out.push((k, v));
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(records: &[Record]) -> Vec<u8> {
        let mut f = Header {
            version: FORMAT_VERSION,
            checkpoint: 5,
            shard: 1,
            kind: Kind::Part,
        }
        .encode()
        .to_vec();
        for r in records {
            encode_frame(r, &mut f).unwrap();
        }
        f
    }

    fn sample() -> Vec<Record> {
        vec![
            Record::Group(GroupState {
                operator: "count".into(),
                group: 4095,
                entries: vec![(b"IBM".to_vec(), vec![1, 2, 3]), (vec![], vec![])],
            }),
            Record::SourceOffset(SourceOffset {
                source: "Orders".into(),
                shard: 1,
                offset: u64::MAX,
            }),
            Record::SinkPosition(SinkPosition {
                sink: "Out".into(),
                shard: 1,
                position: 7,
            }),
        ]
    }

    #[test]
    fn checkpoint_format_round_trips_every_record_kind() {
        let f = part(&sample());
        let mut r = Reader::new(&f[..]).unwrap();
        let got: Vec<Record> = r.by_ref().map(Result::unwrap).collect();
        assert_eq!(got, sample());
        assert!(r.stopped().is_none());
        assert_eq!(r.bytes_read(), f.len() as u64);
        assert_eq!(r.frames_read(), 3);
    }

    #[test]
    fn checkpoint_format_entries_encode_like_serde_default() {
        // The byte-string helper must not change the wire format: postcard writes a Vec<u8>
        // as a length and the bytes either way.
        #[derive(Serialize)]
        struct Plain {
            operator: String,
            group: u16,
            entries: Vec<(Vec<u8>, Vec<u8>)>,
        }
        let g = GroupState {
            operator: "op".into(),
            group: 300,
            entries: vec![(vec![1; 200], vec![2; 3]), (vec![], vec![9])],
        };
        let plain = Plain {
            operator: g.operator.clone(),
            group: g.group,
            entries: g.entries.clone(),
        };
        assert_eq!(
            postcard::to_allocvec(&g).unwrap(),
            postcard::to_allocvec(&plain).unwrap()
        );
    }

    #[test]
    fn checkpoint_format_reader_stops_at_first_damage_and_says_which() {
        let f = part(&sample());
        // Frame offsets: header, then each frame.
        let first_len = u32::from_le_bytes(f[HEADER_LEN..HEADER_LEN + 4].try_into().unwrap());
        let second = HEADER_LEN + FRAME_PREFIX_LEN + first_len as usize;

        // A flipped payload byte in the second record.
        let mut bad = f.clone();
        bad[second + FRAME_PREFIX_LEN + 1] ^= 0x40;
        let mut r = Reader::new(&bad[..]).unwrap();
        assert!(r.next().unwrap().is_ok());
        let e = r.next().unwrap().unwrap_err();
        assert_eq!((e.index, e.offset), (1, second as u64));
        assert!(matches!(e.damage, Damage::Checksum { .. }), "{e}");
        assert!(r.next().is_none(), "nothing after damage is trusted");
        assert_eq!(r.stopped().unwrap().index, 1);

        // Cut short inside the last record and inside a prefix.
        for cut in [f.len() - 1, second + 3] {
            let mut r = Reader::new(&f[..cut]).unwrap();
            let e = r.find_map(Result::err).unwrap();
            assert!(matches!(e.damage, Damage::Truncated { .. }), "{e}");
        }

        // A payload with a valid checksum that is not a record.
        let mut f2 = part(&[]);
        encode_frame(&(200u8, 1u8), &mut f2).unwrap();
        let e = Reader::new(&f2[..]).unwrap().next().unwrap().unwrap_err();
        assert!(matches!(e.damage, Damage::Decode(_)), "{e}");

        // An absurd length.
        let mut f3 = part(&[]);
        f3.extend_from_slice(&u32::MAX.to_le_bytes());
        f3.extend_from_slice(&[0; 4]);
        let e = Reader::new(&f3[..]).unwrap().next().unwrap().unwrap_err();
        assert!(matches!(e.damage, Damage::TooLarge(_)), "{e}");
    }

    #[test]
    fn checkpoint_format_header_is_checked() {
        let f = part(&[]);
        let mut bad = f.clone();
        bad[10] ^= 1;
        assert!(matches!(
            Reader::new(&bad[..]),
            Err(Damage::Checksum { .. })
        ));
        let mut other = f.clone();
        other[0] = b'X';
        assert!(matches!(
            Reader::new(&other[..]),
            Err(Damage::NotCheckpoint)
        ));
        let newer = Header {
            version: FORMAT_VERSION + 1,
            checkpoint: 1,
            shard: 0,
            kind: Kind::Part,
        }
        .encode();
        assert!(matches!(Reader::new(&newer[..]), Err(Damage::Version(2))));
        assert!(matches!(
            Reader::new(&f[..10]),
            Err(Damage::Truncated {
                needed: 24,
                available: 10
            })
        ));
    }
}
