//! A Market Spread capture whose results do not depend on how its two sources interleave (see
//! `tests/resilience_market_spread.rs` for why): orders only on *quiet* symbols, which never
//! get an NBBO (each order is rejected at bid 0, offer 0), NBBO updates only on *quoted*
//! symbols, which never get an order (every update of a symbol identical).

use std::path::{Path, PathBuf};

use bettong_apps::market_spread::{Nbbo, Order, OrderResult};

use super::{result_key, ResultKey};

/// Symbols that get orders and never an NBBO.
pub const QUIET_SYMBOLS: u32 = 300;
/// Symbols that get NBBO updates and never an order.
pub const QUOTED_SYMBOLS: u32 = 60;

/// The capture files and the OrderResults any correct run produces from them, sorted.
pub struct Data {
    /// The framed orders.
    pub orders: PathBuf,
    /// The framed NBBO updates.
    pub nbbo: PathBuf,
    /// Every OrderResult a correct run makes, sorted.
    pub model: Vec<ResultKey>,
}

fn transact_time(ms: u64) -> [u8; 21] {
    bettong_giles::gen_vwap::format_transact_time(ms * 1_000_000)
}

/// Writes `orders.msg` and `nbbo.msg` into `dir` with the crate's own encoders (see the module
/// documentation for why the symbols are split in two).
pub fn write_data(dir: &Path, order_count: u32, nbbo_count: u32) -> Data {
    let quiet = |i: u32| -> [u8; 4] {
        format!("Q{:03}", i % QUIET_SYMBOLS)
            .as_bytes()
            .try_into()
            .unwrap()
    };
    let quoted = |i: u32| -> [u8; 4] {
        format!("N{:03}", i % QUOTED_SYMBOLS)
            .as_bytes()
            .try_into()
            .unwrap()
    };
    let mut orders = Vec::with_capacity(order_count as usize * 57);
    let mut model = Vec::with_capacity(order_count as usize);
    for i in 0..order_count {
        // Unique order ids, so that "each once" can be checked per id.
        let id: [u8; 6] = format!("{i:06}").as_bytes().try_into().unwrap();
        let symbol = quiet(i.wrapping_mul(7919));
        let order = Order::new(
            1 + (i % 2) as u8,
            1 + i % 300,
            id,
            symbol,
            f64::from(10 * (1 + i % 65)),
            10.0 + f64::from(i % QUIET_SYMBOLS) * 0.25,
            transact_time(1_472_800_000_000 + u64::from(i)),
        );
        order.encode_framed(&mut orders);
        // A quiet symbol never has an NBBO: every order is rejected at bid 0, offer 0.
        model.push(result_key(&OrderResult::new(&order.decoded(), 0.0, 0.0, 0)));
    }
    let mut nbbo = Vec::with_capacity(nbbo_count as usize * 46);
    for i in 0..nbbo_count {
        let s = i % QUOTED_SYMBOLS;
        let bid = 20.0 + f64::from(s);
        // The same update for a symbol every time: even symbols narrow, odd ones wide.
        let offer = if s % 2 == 0 { bid + 0.01 } else { bid + 0.25 };
        Nbbo::new(quoted(s), transact_time(1_472_800_000_000), bid, offer).encode_framed(&mut nbbo);
    }
    model.sort_unstable();
    let data = Data {
        orders: dir.join("orders.msg"),
        nbbo: dir.join("nbbo.msg"),
        model,
    };
    std::fs::write(&data.orders, orders).unwrap();
    std::fs::write(&data.nbbo, nbbo).unwrap();
    data
}
