//! Giles-style load and measurement tools and data generators.

pub mod bench;
pub mod gen;
pub mod gen_vwap;
pub mod progress;
pub mod receiver;
pub mod relay;
pub mod sender;
