//! Networking: the TCP source and the TCP sink of a shard.

pub(crate) mod balance;
pub(crate) mod file;
pub(crate) mod sink;
pub(crate) mod source;
