//! The applications shipped with bettong.

pub mod market_spread;
