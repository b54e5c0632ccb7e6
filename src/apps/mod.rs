//! The applications shipped with bettong.

pub mod market_spread;
pub mod word_count;
