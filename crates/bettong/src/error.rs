//! The engine's error type.

use std::fmt;

/// Why the engine could not start, or a shard failed.
///
/// ```
/// let e = bettong::Error::Config("no cores to run on".into());
/// assert_eq!(e.to_string(), "no cores to run on");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The configuration does not fit the application (addresses, cores, sizes).
    Config(String),
    /// The application's graph is not valid (two operators with one name, a sink without
    /// an address, …).
    Plan(String),
    /// A connector could not open its endpoint (bind, connect, open a file).
    Connector {
        /// The source's or sink's name.
        name: String,
        /// What failed.
        message: String,
    },
    /// A shard could not start or failed while running.
    Shard(String),
    /// An operating-system call failed.
    Io(std::io::Error),
}

impl Error {
    /// True for an error in what the user asked for (a setting, an address, the application's
    /// graph) rather than in the system: the `bettong` command exits with status 2 for these,
    /// as for any usage error.
    ///
    /// ```
    /// assert!(bettong::Error::Config("--max-frame 0".into()).is_usage());
    /// assert!(!bettong::Error::Shard("io_uring".into()).is_usage());
    /// ```
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Config(_) | Error::Plan(_) | Error::Connector { .. }
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m) | Error::Plan(m) | Error::Shard(m) => f.write_str(m),
            Error::Connector { name, message } => write!(f, "{name}: {message}"),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<Error> for String {
    fn from(e: Error) -> String {
        e.to_string()
    }
}
