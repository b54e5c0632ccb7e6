//! `bettong gen vwap --out DIR`: orders whose transact times advance, for VWAP.
//!
//! `orders.msg` holds `--orders` framed fixish orders over `--symbols` symbols (the same
//! tickers and base prices as `gen market-spread` for a seed), `--rate` orders per second of
//! event time from `--start` (UTC, `YYYYMMDD-HH:MM:SS.mmm`). A `--late-percent` share of the
//! orders carry a transact time `--late-by` earlier than their neighbours (they arrive late).
//! The bytes depend only on the arguments.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use bettong::units::{parse_duration, parse_u64, parse_usize};
use bettong_apps::market_spread::{Order, TRANSACT_TIME_LEN};
use bettong_apps::vwap::parse_transact_time;

use crate::gen::{make_symbols, Rng, Stream, ORDERS_FILE};

/// The flags of `bettong gen vwap`.
///
/// ```
/// let args = bettong_giles::gen_vwap::GenVwapArgs::new("/tmp/vwap-data");
/// assert_eq!(args.rate, 10_000);
/// ```
#[derive(clap::Args, Debug, Clone)]
pub struct GenVwapArgs {
    /// Directory to write orders.msg into (created if missing)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Seed of the random generator
    #[arg(long, default_value = "1", value_parser = parse_u64)]
    pub seed: u64,
    /// Number of symbols
    #[arg(long, default_value = "350", value_parser = parse_usize)]
    pub symbols: usize,
    /// Number of orders
    #[arg(long, default_value = "1_000_000", value_parser = parse_u64)]
    pub orders: u64,
    /// Orders per second of event time
    #[arg(long, default_value = "10_000", value_parser = parse_u64)]
    pub rate: u64,
    /// Transact time of the first order (UTC)
    #[arg(long, default_value = "20160902-09:30:00.000")]
    pub start: String,
    /// Percent of the orders whose transact time lies `--late-by` in the past
    #[arg(long, default_value = "0", value_parser = parse_u64)]
    pub late_percent: u64,
    /// How far in the past a late order's transact time lies
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub late_by: Duration,
}

impl GenVwapArgs {
    /// The defaults, writing into `out`.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        GenVwapArgs {
            out: out.into(),
            seed: 1,
            symbols: 350,
            orders: 1_000_000,
            rate: 10_000,
            start: "20160902-09:30:00.000".to_string(),
            late_percent: 0,
            late_by: Duration::from_secs(2),
        }
    }
}

/// What was written.
#[derive(Debug)]
pub struct GenVwapSummary {
    /// The orders file.
    pub path: PathBuf,
    /// Orders written, and how many of them are late.
    pub orders: u64,
    /// Orders written with a late transact time.
    pub late: u64,
    /// Event time covered, from the first order to the last.
    pub span: Duration,
}

impl fmt::Display for GenVwapSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrote {} orders ({} late) covering {:?} of event time to {}",
            self.orders,
            self.late,
            self.span,
            self.path.display()
        )
    }
}

/// Formats nanoseconds since the epoch as a transact time.
pub fn format_transact_time(ns: u64) -> [u8; TRANSACT_TIME_LEN] {
    let ms = ns / 1_000_000;
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    let text = format!(
        "{y:04}{m:02}{d:02}-{:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    );
    let mut out = [b'0'; TRANSACT_TIME_LEN];
    out.copy_from_slice(&text.as_bytes()[..TRANSACT_TIME_LEN]);
    out
}

/// Writes the orders file.
pub fn generate(args: &GenVwapArgs) -> Result<GenVwapSummary, String> {
    if args.symbols == 0 || args.rate == 0 || args.late_percent > 100 {
        return Err("--symbols and --rate must be above 0, --late-percent at most 100".into());
    }
    let start_text: [u8; TRANSACT_TIME_LEN] = args
        .start
        .as_bytes()
        .try_into()
        .map_err(|_| format!("--start `{}`: expected YYYYMMDD-HH:MM:SS.mmm", args.start))?;
    let start = parse_transact_time(&start_text)
        .ok_or_else(|| format!("--start `{}`: not a valid time", args.start))?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let path = args.out.join(ORDERS_FILE);
    let file = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let symbols = make_symbols(args.seed, args.symbols);
    let mut rng = Rng::new(args.seed, Stream::VwapOrders);
    let step = 1_000_000_000 / args.rate;
    let late_by = u64::try_from(args.late_by.as_nanos()).unwrap_or(u64::MAX);
    let (mut late, mut frame) = (0, Vec::with_capacity(64));
    for i in 0..args.orders {
        let sym = &symbols[rng.below(symbols.len() as u64) as usize];
        let mut t = start + i * step;
        if args.late_percent > 0 && rng.below(100) < args.late_percent {
            t = t.saturating_sub(late_by).max(start);
            late += 1;
        }
        // Within 1% of the symbol's base price, in cents; 1 to 100 lots of 100.
        let cents = sym.price_units / 100;
        let price = (cents + rng.below((cents / 50).max(1) as u64) as i64) as f64 / 100.0;
        let qty = (1 + rng.below(100)) as f64 * 100.0;
        let id = format!("{:06}", i % 1_000_000);
        let order = Order::new(
            (1 + rng.below(2)) as u8,
            rng.below(100_000) as u32,
            id.as_bytes().try_into().unwrap_or(*b"000000"),
            sym.name,
            qty,
            price,
            format_transact_time(t),
        );
        frame.clear();
        order.encode_framed(&mut frame);
        out.write_all(&frame)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    out.flush()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(GenVwapSummary {
        path,
        orders: args.orders,
        late,
        span: Duration::from_nanos(args.orders.saturating_sub(1) * step),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transact_times_round_trip() {
        for ns in [0, 1_472_808_600_000_000_000, 951_868_799_999_000_000] {
            assert_eq!(parse_transact_time(&format_transact_time(ns)), Some(ns));
        }
    }

    #[test]
    fn orders_advance_and_a_share_is_late() {
        let dir = std::env::temp_dir().join(format!("bettong-gen-vwap-{}", std::process::id()));
        let mut args = GenVwapArgs::new(&dir);
        args.orders = 2_000;
        args.symbols = 10;
        args.late_percent = 10;
        let s = generate(&args).unwrap();
        assert!((120..=280).contains(&s.late), "{} late of 2000", s.late);
        let bytes = std::fs::read(&s.path).unwrap();
        assert_eq!(bytes.len(), 2_000 * 57, "57 bytes per framed order");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
