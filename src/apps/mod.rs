//! The applications shipped with bettong.

pub mod market_spread;
pub mod passthrough;
pub mod word_count;
