//! VWAP: the volume-weighted average price of Wallaroo's fixish orders per symbol and window
//! of event time (the order's transact time), with the window, slide, delay and late-data
//! policy from the command line, or count windows.
//!
//! One output line per fired window, unframed:
//! `SYMBOL,WINDOW_START_MS,WINDOW_END_MS,ORDERS,QTY,VWAP\n` — the symbol without its padding,
//! the window's bounds in Unix milliseconds (for count windows: the event times of its first
//! and last order), the number of orders, the total quantity and `Σ price·qty / Σ qty` with 6
//! decimals.
//!
//! ```
//! use bettong_apps::vwap::{parse_transact_time, Vwap};
//! assert_eq!(parse_transact_time(b"19700101-00:00:01.500"), Some(1_500_000_000));
//! assert_eq!(parse_transact_time(b"20160902-09:30:00.000"), Some(1_472_808_600_000_000_000));
//! assert_eq!(parse_transact_time(b"20160931-09:30:00.000"), None);
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use bettong::window::{Aggregation, LatePolicy, Window};
use bettong::{Application, DecodeError, Pipeline, TcpSink, TcpSource};

use crate::market_spread::{
    order_on_orders_source, DecodedOrder, MarketMessage, MarketView, Order, ORDERS_SOURCE,
    TRANSACT_TIME_LEN,
};
use crate::pieces::whole;

/// The application's name.
pub const APP_NAME: &str = "vwap";

/// The sink's name (`--out Vwap@HOST:PORT`, or just `--out HOST:PORT`).
pub const SINK: &str = "Vwap";

/// An order with its event time, as the source decodes it.
///
/// ```
/// use bettong_apps::market_spread::{pad_symbol, Order};
/// use bettong_apps::vwap::TimedOrder;
/// let order = Order::new(1, 7, *b"abc123", pad_symbol("GE"), 10.0, 30.0, [b'0'; 21]);
/// let t = TimedOrder::new(&order, 42);
/// assert_eq!((t.order(), t.event_ns()), (&order.decoded(), 42));
/// ```
///
/// 48 bytes. Every 16-byte piece of the value is written with one store: the order in a
/// [`MarketMessage`]'s halves, as the decoder made them, and the time in a piece of its own.
/// The engine moves a message in 16-byte loads, and a load that straddles smaller stores waits
/// for them to reach the cache. As `{ order: Order, event_ns: u64 }` (the order's 53 bytes
/// copied to offset 8, the time to 0) the moves out of the decoder had 68% of
/// `DecodeEmit::frames`' samples in `bench vwap --shards 1` (perf, cpu-clock).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(16))]
pub struct TimedOrder {
    /// An order (never an NBBO update: [`TimedOrder::new`] and [`decode`] make it of one).
    msg: MarketMessage,
    /// The event time's 8 bytes (little-endian), then zeros.
    event: [u8; 16],
}

impl TimedOrder {
    /// `order` at event time `event_ns` (nanoseconds since the Unix epoch).
    pub fn new(order: &Order, event_ns: u64) -> TimedOrder {
        TimedOrder {
            msg: MarketMessage::of_order(order),
            event: whole(u128::from(event_ns)),
        }
    }

    /// The order.
    #[inline]
    pub fn order(&self) -> &DecodedOrder {
        match self.msg.view() {
            MarketView::Order(o) => o,
            // `new` and `decode`, the only constructors, give it an order.
            MarketView::Nbbo(_) => unreachable!("a TimedOrder holds an order"),
        }
    }

    /// Its transact time in nanoseconds since the Unix epoch.
    #[inline]
    pub fn event_ns(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.event[..8]);
        u64::from_le_bytes(b)
    }
}

/// The symbol key of an order.
pub fn symbol(o: &TimedOrder) -> &[u8; 4] {
    o.order().symbol()
}

/// Parses a transact time `YYYYMMDD-HH:MM:SS.mmm` (UTC) into nanoseconds since the Unix
/// epoch; `None` if it is not a valid time at or after the epoch and before 2554 (where
/// nanoseconds pass `u64::MAX`).
///
/// The date's day number is kept from the previous call on the thread (a stream's orders
/// mostly share a date): VWAP over TCP (`bettong bench vwap --shards 1 --poll spin`, callgrind)
/// spent ~200 instructions per message here, a quarter of the whole, parsing and checking
/// each digit one at a time in a fold and redoing the calendar arithmetic for every order.
///
/// ```
/// use bettong_apps::vwap::parse_transact_time;
/// assert_eq!(parse_transact_time(b"19700102-00:00:01.500"), Some(86_401_500_000_000));
/// assert_eq!(parse_transact_time(b"19700102-24:00:00.000"), None);
/// ```
pub fn parse_transact_time(t: &[u8; TRANSACT_TIME_LEN]) -> Option<u64> {
    thread_local! {
        /// The last date parsed (its 8 bytes as read) and its day number. The initial key is
        /// no valid date (bytes 0xFF), so it never matches.
        static LAST_DATE: std::cell::Cell<(u64, u64)> =
            const { std::cell::Cell::new((u64::MAX, 0)) };
    }
    let mut date = [0u8; 8];
    date.copy_from_slice(&t[..8]);
    let key = u64::from_le_bytes(date);
    let days = match LAST_DATE.get() {
        (k, days) if k == key => days,
        _ => {
            let days = days_since_epoch(&date)?;
            LAST_DATE.set((key, days));
            days
        }
    };
    if t[8] != b'-' || t[11] != b':' || t[14] != b':' || t[17] != b'.' {
        return None;
    }
    // Each digit's value; a byte that is not a digit comes out above 9.
    let d = |i: usize| u64::from(t[i].wrapping_sub(b'0'));
    let digits = [d(9), d(10), d(12), d(13), d(15), d(16), d(18), d(19), d(20)];
    if digits.iter().fold(0, |m, &x| m.max(x)) > 9 {
        return None;
    }
    let [h1, h0, m1, m0, s1, s0, ms2, ms1, ms0] = digits;
    let (h, m, s) = (h1 * 10 + h0, m1 * 10 + m0, s1 * 10 + s0);
    if h > 23 || m > 59 || s > 59 {
        return None;
    }
    let ms = ms2 * 100 + ms1 * 10 + ms0;
    let secs = days * 86_400 + h * 3_600 + m * 60 + s;
    secs.checked_mul(1_000_000_000)?.checked_add(ms * 1_000_000)
}

/// Days from the Unix epoch to the date `YYYYMMDD`; `None` if it is not a valid date at or
/// after the epoch.
fn days_since_epoch(t: &[u8; 8]) -> Option<u64> {
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        t[r].iter().try_fold(0u64, |acc, b| {
            b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
        })
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if year < 1970 || day == 0 || day > days_in_month {
        return None;
    }
    // The civil-from-days algorithm, run backwards.
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// Decodes a framed order and its transact time; a malformed order or time is an error.
pub fn decode(payload: &[u8]) -> Result<TimedOrder, DecodeError> {
    let order = order_on_orders_source(payload)?;
    let event_ns = parse_transact_time(order.transact_time()).ok_or_else(|| {
        DecodeError::new(format!(
            "Orders source: bad transact time `{}` (expected YYYYMMDD-HH:MM:SS.mmm)",
            order.transact_time().escape_ascii()
        ))
    })?;
    Ok(TimedOrder::new(order, event_ns))
}

/// The running sums of a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VwapAcc {
    /// Orders.
    pub orders: u64,
    /// Σ qty.
    pub qty: f64,
    /// Σ price·qty.
    pub notional: f64,
}

/// The VWAP aggregation: one line per window.
pub struct Vwap;

impl Aggregation<TimedOrder> for Vwap {
    type Key = [u8; 4];
    type Acc = VwapAcc;
    type Out = String;

    fn initial_accumulator(&self) -> VwapAcc {
        VwapAcc::default()
    }

    fn update(&self, o: &TimedOrder, acc: &mut VwapAcc) {
        acc.orders += 1;
        let order = o.order();
        acc.qty += order.qty();
        acc.notional += order.price() * order.qty();
    }

    fn combine(&self, a: &VwapAcc, b: &VwapAcc) -> VwapAcc {
        VwapAcc {
            orders: a.orders + b.orders,
            qty: a.qty + b.qty,
            notional: a.notional + b.notional,
        }
    }

    fn output(&self, symbol: &[u8; 4], window: &Window, acc: &VwapAcc) -> Option<String> {
        Some(line(symbol, window, acc))
    }
}

/// The output line of one window.
pub fn line(symbol: &[u8; 4], window: &Window, acc: &VwapAcc) -> String {
    let mut s = String::with_capacity(64);
    let sym = String::from_utf8_lossy(symbol);
    let vwap = if acc.qty == 0.0 {
        0.0
    } else {
        acc.notional / acc.qty
    };
    let _ = writeln!(
        s,
        "{},{},{},{},{},{:.6}",
        sym.trim(),
        window.start_ns / 1_000_000,
        window.end_ns / 1_000_000,
        acc.orders,
        acc.qty,
        vwap
    );
    s
}

/// How the windows are cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Windows {
    /// Range windows.
    Range {
        /// Window length.
        range: Duration,
        /// A new window every this long.
        slide: Duration,
        /// Fire this long after the window's end.
        delay: Duration,
        /// What to do with late orders.
        late: LatePolicy,
    },
    /// Windows of this many orders per symbol.
    Count(u64),
}

/// The VWAP application.
///
/// ```
/// use std::time::Duration;
/// use bettong_apps::vwap::{application, Windows};
/// let app = application(Windows::Range {
///     range: Duration::from_secs(1),
///     slide: Duration::from_secs(1),
///     delay: Duration::ZERO,
///     late: bettong::window::LatePolicy::Drop,
/// });
/// assert_eq!(app.source_names(), ["Orders"]);
/// ```
pub fn application(windows: Windows) -> Application {
    let orders = Pipeline::source(
        ORDERS_SOURCE,
        TcpSource::new(decode).with_event_time(|o: &TimedOrder| o.event_ns()),
    )
    .key_by(symbol);
    let vwap = match windows {
        Windows::Range {
            range,
            slide,
            delay,
            late,
        } => orders
            .range_windows(range)
            .with_slide(slide)
            .with_delay(delay)
            .with_late_data_policy(late)
            .over(Vwap),
        Windows::Count(n) => orders.count_windows(n).over(Vwap),
    };
    Application::new(
        APP_NAME,
        vwap.name("vwap").to_sink(
            SINK,
            TcpSink::new(|l: &String, out: &mut Vec<u8>| out.extend_from_slice(l.as_bytes())),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Option<u64> {
        parse_transact_time(s.as_bytes().try_into().unwrap())
    }

    #[test]
    fn transact_times() {
        assert_eq!(t("19700101-00:00:00.000"), Some(0));
        assert_eq!(t("20000229-23:59:59.999"), Some(951_868_799_999_000_000));
        assert_eq!(t("20240301-00:00:00.001"), Some(1_709_251_200_001_000_000));
        assert_eq!(t("19000229-00:00:00.000"), None, "1900 is not a leap year");
        assert_eq!(t("20230229-00:00:00.000"), None);
        assert_eq!(t("20160902-24:00:00.000"), None);
        assert_eq!(t("2016090209:30:00.000x"), None);
        assert_eq!(t("1969123123:59:59.999 "), None);
        assert_eq!(t("20160902-09:3a:00.000"), None);
    }

    #[test]
    fn a_line_per_window() {
        let w = Window {
            start_ns: 1_000_000_000,
            end_ns: 2_000_000_000,
        };
        let acc = VwapAcc {
            orders: 2,
            qty: 300.0,
            notional: 100.0 * 10.0 + 200.0 * 11.0,
        };
        assert_eq!(line(b"GE  ", &w, &acc), "GE,1000,2000,2,300,10.666667\n");
    }

    /// The parser as it was before the date cache, one digit at a time: the fast one must
    /// agree with it on every byte value at every position of several times, with the dates
    /// alternating so the cache is both hit and missed.
    // Parses a transact time `YYYYMMDD-HH:MM:SS.mmm` (UTC) into nanoseconds since the Unix
    // epoch; `None` if it is not a valid time at or after the epoch.
    fn reference(t: &[u8; TRANSACT_TIME_LEN]) -> Option<u64> {
        let num = |r: std::ops::Range<usize>| -> Option<u64> {
            t[r].iter().try_fold(0u64, |acc, b| {
                b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
            })
        };
        if t[8] != b'-' || t[11] != b':' || t[14] != b':' || t[17] != b'.' {
            return None;
        }
        let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
        let (h, m, s, ms) = (num(9..11)?, num(12..14)?, num(15..17)?, num(18..21)?);
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days_in_month = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        };
        if year < 1970 || day == 0 || day > days_in_month || h > 23 || m > 59 || s > 59 {
            return None;
        }
        // Days from the epoch to the date (the civil-from-days algorithm, run backwards).
        let (y, mo) = if month <= 2 {
            (year - 1, month + 9)
        } else {
            (year, month - 3)
        };
        let era = y / 400;
        let yoe = y - era * 400;
        let doy = (153 * mo + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = (era * 146_097 + doe).checked_sub(719_468)?;
        let secs = days * 86_400 + h * 3_600 + m * 60 + s;
        secs.checked_mul(1_000_000_000)?.checked_add(ms * 1_000_000)
    }

    #[test]
    fn the_fast_parser_agrees_with_the_reference() {
        let bases = [
            *b"20240229-23:59:59.999",
            *b"19700101-00:00:00.000",
            *b"20231231-12:34:56.789",
            *b"21000228-07:08:09.010",
        ];
        let mut checked = 0;
        for base in bases {
            for at in 0..TRANSACT_TIME_LEN {
                for byte in 0..=255u8 {
                    let mut t = base;
                    t[at] = byte;
                    for t in [t, base] {
                        assert_eq!(
                            parse_transact_time(&t),
                            reference(&t),
                            "{}",
                            t.escape_ascii()
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 4 * 21 * 256 * 2);
    }
}

/// The window flags of `bettong vwap`.
#[derive(clap::Args, Debug, Clone)]
pub struct VwapArgs {
    /// Window length in event time (e.g. 1s, 500ms)
    #[arg(long, default_value = "1s", value_parser = bettong::units::parse_duration)]
    pub window: Duration,
    /// A new window every this long [default: the window length: tumbling windows]
    #[arg(long, value_parser = bettong::units::parse_duration)]
    pub slide: Option<Duration>,
    /// Fire each window this long (in event time) after its end
    #[arg(long, default_value = "0s", value_parser = bettong::units::parse_duration)]
    pub delay: Duration,
    /// Late orders: drop (counted), fire (an output of the order alone) or oldest (into the
    /// oldest window not yet fired)
    #[arg(long, default_value = "drop", value_parser = parse_late)]
    pub late: LatePolicy,
    /// Count windows of N orders per symbol instead of range windows
    #[arg(long, value_name = "N", conflicts_with_all = ["slide", "delay"])]
    pub count: Option<u64>,
}

fn parse_late(s: &str) -> Result<LatePolicy, String> {
    match s {
        "drop" => Ok(LatePolicy::Drop),
        "fire" => Ok(LatePolicy::FirePerMessage),
        "oldest" => Ok(LatePolicy::PlaceInOldestWindow),
        _ => Err(format!("`{s}`: expected drop, fire or oldest")),
    }
}

impl VwapArgs {
    /// The windows these flags describe, checked (a usage error names the flag).
    pub fn windows(&self) -> Result<Windows, String> {
        if let Some(n) = self.count {
            if n == 0 {
                return Err("--count must be at least 1".to_string());
            }
            return Ok(Windows::Count(n));
        }
        let slide = self.slide.unwrap_or(self.window);
        if self.window.is_zero() || slide.is_zero() {
            return Err("--window and --slide must be above 0".to_string());
        }
        if slide > self.window || self.window.as_nanos() % slide.as_nanos() != 0 {
            return Err(format!(
                "--slide {slide:?} must divide --window {:?} (sliding windows are made of \
                 slide-sized panes)",
                self.window
            ));
        }
        Ok(Windows::Range {
            range: self.window,
            slide,
            delay: self.delay,
            late: self.late,
        })
    }
}
