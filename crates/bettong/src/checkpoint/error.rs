//! The checkpoint store's error type.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a checkpoint operation failed.
///
/// ```
/// use bettong::checkpoint::CheckpointError;
/// let e = CheckpointError::InFlight { running: 3, requested: 4 };
/// assert_eq!(e.to_string(), "checkpoint 3 is still in flight; cannot begin 4");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file-system call failed on `path`.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// [`begin`](super::CheckpointStore::begin) while another checkpoint is in flight.
    InFlight {
        /// The checkpoint in flight.
        running: u64,
        /// The one asked for.
        requested: u64,
    },
    /// [`begin`](super::CheckpointStore::begin) with an id not above the newest committed one.
    NotNewer {
        /// The id asked for.
        requested: u64,
        /// The newest committed checkpoint.
        latest: u64,
    },
    /// [`commit`](super::CheckpointStore::commit) or a part for a checkpoint that is not in
    /// flight.
    NotInFlight(u64),
    /// A manifest handed to [`commit`](super::CheckpointStore::commit) does not describe the
    /// parts on disk.
    BadManifest(String),
    /// A record could not be encoded (too large).
    Encode(String),
    /// A file of a checkpoint that had been validated is damaged or unreadable now.
    Damaged(String),
    /// Checkpoints are committed, but every one is damaged: starting from scratch would
    /// silently lose state, so this is an error. One reason per checkpoint, newest first.
    NoValidCheckpoint(Vec<String>),
}

impl CheckpointError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        CheckpointError::Io {
            path: path.into(),
            source,
        }
    }
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            CheckpointError::InFlight { running, requested } => write!(
                f,
                "checkpoint {running} is still in flight; cannot begin {requested}"
            ),
            CheckpointError::NotNewer { requested, latest } => write!(
                f,
                "checkpoint {requested} is not newer than committed checkpoint {latest}"
            ),
            CheckpointError::NotInFlight(id) => write!(f, "checkpoint {id} is not in flight"),
            CheckpointError::BadManifest(m)
            | CheckpointError::Encode(m)
            | CheckpointError::Damaged(m) => f.write_str(m),
            CheckpointError::NoValidCheckpoint(reasons) => {
                write!(f, "no usable checkpoint: {}", reasons.join("; "))
            }
        }
    }
}

impl std::error::Error for CheckpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CheckpointError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
