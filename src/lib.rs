//! bettong: a single-node, thread-per-core stream-processing engine in the Wallaroo model.
//!
//! See README.md for the concepts and a complete example.

pub mod apps;
pub mod tools;
pub mod units;
