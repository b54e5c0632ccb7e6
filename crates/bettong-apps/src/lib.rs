//! The applications shipped with bettong, and the engine flags their commands share.

pub mod cli;
pub mod market_spread;
pub mod passthrough;
mod pieces;
pub mod vwap;
pub mod word_count;
