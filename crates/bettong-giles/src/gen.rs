//! Data generators: `bettong gen market-spread --out DIR`.
//!
//! Wallaroo's Market Spread runs used data made by its `fix_generator` (reference §2.5), but only
//! the initial NBBO files survive. This generator follows the same recipe so that runs behave the
//! same way: a few "rejected" symbols start with a spread of at least 0.05 and never get an update,
//! every other symbol only ever sees spreads below 0.05, and a small, known number of orders go to
//! rejected symbols. Those orders are the only ones that produce output, so the expected output
//! count is known in advance and written to `expected.txt`.
//!
//! The output depends only on the arguments: the random numbers come from a xoshiro256** generator
//! written here (seeded through splitmix64) and every price is computed in integer units of
//! 0.0001 before one exact division, so the bytes do not change between versions, compilers or
//! platforms.
//!
//! Files written to `--out`:
//! - `initial-nbbo.msg`: one framed NBBO per symbol, rejected symbols first; send it before
//!   anything else (a symbol without an NBBO rejects every order);
//! - `nbbo.msg`: framed NBBO updates for non-rejected symbols only;
//! - `orders.msg`: framed orders;
//! - `legal-symbols.msg`: the symbols, one padded 4-byte symbol per line, in Wallaroo's
//!   `*-legal-symbols.msg` format;
//! - `expected.txt`: `expected_out N` (how many OrderResults the run must produce) and the
//!   arguments, one `key value` per line; [`read_expected`] reads it back.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bettong::units::{parse_u64, parse_usize};
use bettong_apps::market_spread::{Nbbo, Order, TRANSACT_TIME_LEN};

/// File name of the initial NBBO records (one per symbol).
pub const INITIAL_NBBO_FILE: &str = "initial-nbbo.msg";
/// File name of the streaming NBBO updates.
pub const NBBO_FILE: &str = "nbbo.msg";
/// File name of the orders.
pub const ORDERS_FILE: &str = "orders.msg";
/// File name of the symbol list (Wallaroo's legal-symbols format).
pub const SYMBOLS_FILE: &str = "legal-symbols.msg";
/// File name of the expected-output summary.
pub const EXPECTED_FILE: &str = "expected.txt";
/// The most symbols [`generate`] makes: 4 uppercase letters allow 475,254 tickers, and staying
/// well below that keeps drawing distinct random tickers quick.
pub const MAX_SYMBOLS: usize = 100_000;
/// Orders per rejected order when `--rejected-orders` is not given: Wallaroo's published ratio.
pub const ORDERS_PER_REJECTION: u64 = 70_000;
/// Records per second of simulated time, for the transact times (Wallaroo's generator rate).
const RECORDS_PER_SECOND: u64 = 350_000;
/// Records go through a buffer this large, so that writing is a few big system calls.
const WRITE_BUFFER: usize = 1 << 20;

/// Arguments of `bettong gen market-spread`.
///
/// ```
/// use bettong_giles::gen::GenMarketSpreadArgs;
/// let args = GenMarketSpreadArgs::new("/tmp/ms-data");
/// assert_eq!((args.symbols, args.rejected, args.orders), (350, 15, 1_000_000));
/// ```
#[derive(clap::Args, Debug, Clone)]
pub struct GenMarketSpreadArgs {
    /// Directory to write the data files into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Seed of the random generator: the same seed and arguments give the same bytes.
    #[arg(long, default_value = "1", value_parser = parse_u64)]
    pub seed: u64,
    /// Number of symbols (keys), 4 letters at most each.
    #[arg(long, default_value = "350", value_parser = parse_usize)]
    pub symbols: usize,
    /// Number of orders.
    #[arg(long, default_value = "1_000_000", value_parser = parse_u64)]
    pub orders: u64,
    /// Number of streaming NBBO updates.
    #[arg(long, default_value = "1_000_000", value_parser = parse_u64)]
    pub nbbo: u64,
    /// Symbols whose spread stays >= 0.05 for the whole run; orders on them produce output.
    #[arg(long, default_value = "15", value_parser = parse_usize)]
    pub rejected: usize,
    /// Orders that go to rejected symbols [default: orders / 70_000 rounded, at least 1 when
    /// there are rejected symbols and orders].
    #[arg(long, value_parser = parse_u64)]
    pub rejected_orders: Option<u64>,
    /// Percent of the other orders that go to the "hot" symbols.
    #[arg(long, default_value = "80", value_parser = parse_percent)]
    pub skew_percent: u64,
    /// Percent of the non-rejected symbols that are "hot".
    #[arg(long, default_value = "20", value_parser = parse_percent)]
    pub skew_symbols_percent: u64,
}

fn parse_percent(text: &str) -> Result<u64, String> {
    let v = parse_u64(text)?;
    if v > 100 {
        return Err(format!("`{text}` is not a percentage (0 to 100)"));
    }
    Ok(v)
}

impl GenMarketSpreadArgs {
    /// The default arguments, writing into `out`.
    pub fn new(out: impl Into<PathBuf>) -> GenMarketSpreadArgs {
        GenMarketSpreadArgs {
            out: out.into(),
            seed: 1,
            symbols: 350,
            orders: 1_000_000,
            nbbo: 1_000_000,
            rejected: 15,
            rejected_orders: None,
            skew_percent: 80,
            skew_symbols_percent: 20,
        }
    }

    /// The number of orders that go to rejected symbols: `--rejected-orders`, or by default about
    /// one in [`ORDERS_PER_REJECTION`] but at least one, so that a short run still checks the
    /// output path.
    ///
    /// ```
    /// use bettong_giles::gen::GenMarketSpreadArgs;
    /// let mut args = GenMarketSpreadArgs::new("/tmp/x");
    /// assert_eq!(args.rejected_order_count(), 14);
    /// args.orders = 10;
    /// assert_eq!(args.rejected_order_count(), 1);
    /// args.rejected = 0;
    /// assert_eq!(args.rejected_order_count(), 0);
    /// ```
    pub fn rejected_order_count(&self) -> u64 {
        match self.rejected_orders {
            Some(n) => n,
            None if self.rejected == 0 || self.orders == 0 => 0,
            None => ((self.orders + ORDERS_PER_REJECTION / 2) / ORDERS_PER_REJECTION).max(1),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.symbols > MAX_SYMBOLS {
            return Err(format!(
                "--symbols {} is more than the {MAX_SYMBOLS} this generator makes",
                self.symbols
            ));
        }
        if self.rejected > self.symbols {
            return Err(format!(
                "--rejected {} is more than --symbols {}",
                self.rejected, self.symbols
            ));
        }
        let rejected_orders = self.rejected_order_count();
        if rejected_orders > self.orders {
            return Err(format!(
                "--rejected-orders {rejected_orders} is more than --orders {}",
                self.orders
            ));
        }
        if rejected_orders > 0 && self.rejected == 0 {
            return Err("--rejected-orders needs --rejected of at least 1".into());
        }
        let accepted = self.symbols - self.rejected;
        if accepted == 0 && self.nbbo > 0 {
            return Err("NBBO updates need at least one symbol that is not rejected".into());
        }
        if accepted == 0 && self.orders > rejected_orders {
            return Err("orders need at least one symbol that is not rejected".into());
        }
        Ok(())
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenSummary {
    /// The directory written to.
    pub out: PathBuf,
    /// Symbols, i.e. initial NBBO records.
    pub symbols: usize,
    /// Symbols that reject every order for the whole run.
    pub rejected: usize,
    /// Order records.
    pub orders: u64,
    /// Streaming NBBO records.
    pub nbbo: u64,
    /// OrderResults a correct run produces (the orders on rejected symbols).
    pub expected_out: u64,
    /// Bytes written over all files.
    pub bytes: u64,
    /// Time taken.
    pub elapsed: Duration,
}

impl fmt::Display for GenSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrote {} symbols ({} rejected), {} NBBO updates and {} orders to {} \
             ({:.1} MB in {:.2} s); a run must produce {} order results",
            self.symbols,
            self.rejected,
            self.nbbo,
            self.orders,
            self.out.display(),
            self.bytes as f64 / 1e6,
            self.elapsed.as_secs_f64(),
            self.expected_out
        )
    }
}

/// Writes the Market Spread data set described by `args` (see the module documentation).
///
/// ```
/// use bettong_giles::gen::{generate, read_expected, GenMarketSpreadArgs};
/// let dir = std::env::temp_dir().join(format!("bettong-gen-doc-{}", std::process::id()));
/// let mut args = GenMarketSpreadArgs::new(&dir);
/// (args.orders, args.nbbo) = (1_000, 1_000);
/// let summary = generate(&args)?;
/// assert_eq!(summary.expected_out, 1);
/// assert_eq!(read_expected(&dir)?, 1);
/// # std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
/// # Ok::<(), String>(())
/// ```
pub fn generate(args: &GenMarketSpreadArgs) -> Result<GenSummary, String> {
    args.validate()?;
    let started = Instant::now();
    fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;

    let symbols = make_symbols(args.seed, args.symbols);
    let (rejected, accepted) = symbols.split_at(args.rejected);
    let rejected_orders = args.rejected_order_count();
    let mut bytes = 0;

    bytes += write_file(&args.out, SYMBOLS_FILE, |w| {
        for (i, s) in symbols.iter().enumerate() {
            // Wallaroo's files have no newline after the last symbol.
            if i > 0 {
                w.write_all(b"\n")?;
            }
            w.write_all(&s.name)?;
        }
        Ok(())
    })?;

    bytes += write_file(&args.out, INITIAL_NBBO_FILE, |w| {
        let mut rng = Rng::new(args.seed, Stream::InitialNbbo);
        let time = transact_time(INITIAL_TIME_OF_DAY);
        for s in rejected {
            let (bid, offer) = rejected_quote(&mut rng, s.price_units);
            write_nbbo(w, s, time, bid, offer)?;
        }
        for s in accepted {
            let (bid, offer) = accepted_quote(&mut rng, s.price_units);
            write_nbbo(w, s, time, bid, offer)?;
        }
        Ok(())
    })?;

    bytes += write_file(&args.out, NBBO_FILE, |w| {
        let mut rng = Rng::new(args.seed, Stream::Nbbo);
        let mut clock = Clock::new();
        for i in 0..args.nbbo {
            let s = &accepted[rng.below_usize(accepted.len())];
            let (bid, offer) = accepted_quote(&mut rng, s.price_units);
            write_nbbo(w, s, clock.at(i), bid, offer)?;
        }
        Ok(())
    })?;

    bytes += write_file(&args.out, ORDERS_FILE, |w| {
        let mut rng = Rng::new(args.seed, Stream::Orders);
        // A stream of its own, so that where the rejected orders fall does not shift the
        // contents of every other order.
        let mut placement = Rng::new(args.seed, Stream::RejectedPlacement);
        let hot_len = hot_symbol_count(accepted.len(), args.skew_symbols_percent);
        let (hot, cold) = accepted.split_at(hot_len);
        let mut clock = Clock::new();
        let mut rejected_left = rejected_orders;
        let mut record = Vec::with_capacity(57);
        for i in 0..args.orders {
            // Selection sampling (Knuth's algorithm S): exactly `rejected_orders` of the orders,
            // spread uniformly over the file.
            let s = if placement.below(args.orders - i) < rejected_left {
                rejected_left -= 1;
                &rejected[rng.below_usize(rejected.len())]
            } else if cold.is_empty() || rng.below(100) < args.skew_percent {
                &hot[rng.below_usize(hot.len())]
            } else {
                &cold[rng.below_usize(cold.len())]
            };
            let side = 1 + rng.below(2) as u8;
            let account = 1 + rng.below(300) as u32;
            let mut order_id = [0u8; 6];
            for b in &mut order_id {
                *b = ALPHANUMERIC[rng.below_usize(ALPHANUMERIC.len())];
            }
            let qty = (10 * (1 + rng.below(65))) as f64;
            let price = units_to_f64(s.price_units);
            record.clear();
            Order::new(side, account, order_id, s.name, qty, price, clock.at(i))
                .encode_framed(&mut record);
            w.write_all(&record)?;
        }
        Ok(())
    })?;

    let expected = format!(
        "expected_out {rejected_orders}\nsymbols {}\nrejected {}\norders {}\nnbbo {}\n\
         rejected_orders {rejected_orders}\nseed {}\n",
        args.symbols, args.rejected, args.orders, args.nbbo, args.seed
    );
    bytes += write_file(&args.out, EXPECTED_FILE, |w| {
        w.write_all(expected.as_bytes())
    })?;

    Ok(GenSummary {
        out: args.out.clone(),
        symbols: args.symbols,
        rejected: args.rejected,
        orders: args.orders,
        nbbo: args.nbbo,
        expected_out: rejected_orders,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// Reads `expected_out` back from `expected.txt` in `dir` (or from `dir` itself if it is a file).
///
/// ```no_run
/// let n = bettong_giles::gen::read_expected("data/market-spread")?;
/// println!("expect {n} order results");
/// # Ok::<(), String>(())
/// ```
pub fn read_expected(dir: impl AsRef<Path>) -> Result<u64, String> {
    let dir = dir.as_ref();
    let path = if dir.is_file() {
        dir.to_path_buf()
    } else {
        dir.join(EXPECTED_FILE)
    };
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .find_map(|line| line.trim().strip_prefix("expected_out "))
        .ok_or_else(|| format!("{} has no `expected_out` line", path.display()))
        .and_then(|value| parse_u64(value).map_err(|e| format!("{}: {e}", path.display())))
}

fn write_file(
    dir: &Path,
    name: &str,
    body: impl FnOnce(&mut CountingWriter) -> std::io::Result<()>,
) -> Result<u64, String> {
    let path = dir.join(name);
    let context = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let file = File::create(&path).map_err(context)?;
    let mut w = CountingWriter {
        inner: BufWriter::with_capacity(WRITE_BUFFER, file),
        bytes: 0,
    };
    body(&mut w).map_err(context)?;
    w.inner.flush().map_err(context)?;
    Ok(w.bytes)
}

struct CountingWriter {
    inner: BufWriter<File>,
    bytes: u64,
}

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_nbbo(
    w: &mut CountingWriter,
    s: &Symbol,
    time: [u8; TRANSACT_TIME_LEN],
    bid: i64,
    offer: i64,
) -> std::io::Result<()> {
    let mut record = [0u8; 46];
    record[..4].copy_from_slice(&42u32.to_be_bytes());
    record[4..].copy_from_slice(
        Nbbo::new(s.name, time, units_to_f64(bid), units_to_f64(offer)).as_bytes(),
    );
    w.write_all(&record)
}

const ALPHANUMERIC: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Prices are whole units of 0.0001 until they are written, so that every spread is an exact
/// integer and only the final division rounds.
const UNITS_PER_DOLLAR: i64 = 10_000;

fn units_to_f64(units: i64) -> f64 {
    units as f64 / UNITS_PER_DOLLAR as f64
}

/// A quote for a symbol that stays tradeable: `bid = price + U[0,1)`, `offer = bid + k/100` with
/// k in 0..=3. The spread is at most 0.03 (far enough below 0.05 that the rounding of the two f64
/// values cannot reach it), and with prices of at least 1.00 the relative spread stays below 3%.
fn accepted_quote(rng: &mut Rng, price_units: i64) -> (i64, i64) {
    let bid = price_units + rng.below(UNITS_PER_DOLLAR as u64) as i64;
    let offer = bid + 100 * rng.below(4) as i64;
    (bid, offer)
}

/// A quote for a rejected symbol, after Wallaroo's generator:
/// `bid = price + U − ((0.05 + U')·0.1 + 0.01)`, `offer = bid + 0.03·U'' + 0.05`. The spread starts
/// at 0.0501 rather than 0.05 so that rounding to f64 cannot bring `offer - bid` below 0.05.
fn rejected_quote(rng: &mut Rng, price_units: i64) -> (i64, i64) {
    let u = rng.below(UNITS_PER_DOLLAR as u64) as i64;
    let u2 = rng.below(UNITS_PER_DOLLAR as u64) as i64;
    let bid = price_units + u - ((500 + u2) / 10 + 100);
    let offer = bid + 501 + rng.below(300) as i64;
    (bid, offer)
}

fn hot_symbol_count(accepted: usize, percent: u64) -> usize {
    if accepted == 0 {
        return 0;
    }
    let hot = (accepted as u64 * percent).div_ceil(100) as usize;
    hot.clamp(1, accepted)
}

pub(crate) struct Symbol {
    pub(crate) name: [u8; 4],
    /// Base price in units of 0.0001; at least 1.00 so that accepted quotes never reach a 5%
    /// relative spread.
    pub(crate) price_units: i64,
}

/// Distinct tickers of 1–4 uppercase letters, mostly 3 and 4 like real ones, each with a base
/// price between 1.00 and 700.00.
pub(crate) fn make_symbols(seed: u64, count: usize) -> Vec<Symbol> {
    let mut rng = Rng::new(seed, Stream::Symbols);
    let mut seen = HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let len = match rng.below(100) {
            0..=2 => 1,
            3..=14 => 2,
            15..=54 => 3,
            _ => 4,
        };
        let mut name = [b' '; 4];
        for b in &mut name[4 - len..] {
            *b = b'A' + rng.below(26) as u8;
        }
        if !seen.insert(name) {
            continue;
        }
        // In cents: 1.00-10.00, 10.00-50.00, 50.00-200.00, 200.00-700.00.
        let (low, high): (u64, u64) = match rng.below(4) {
            0 => (100, 1_000),
            1 => (1_000, 5_000),
            2 => (5_000, 20_000),
            _ => (20_000, 70_000),
        };
        let cents = (low + rng.below(high - low)) as i64;
        out.push(Symbol {
            name,
            price_units: cents * 100,
        });
    }
    out
}

/// Independent random streams per file, so that changing one count leaves the other files alone.
#[derive(Clone, Copy)]
pub(crate) enum Stream {
    Symbols = 1,
    InitialNbbo = 2,
    Nbbo = 3,
    Orders = 4,
    RejectedPlacement = 5,
    VwapOrders = 6,
}

/// xoshiro256** (Blackman and Vigna), seeded through splitmix64: small, fast, and fixed here so
/// the data never depends on a crate's choice of algorithm.
pub(crate) struct Rng {
    s: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub(crate) fn new(seed: u64, stream: Stream) -> Rng {
        let mut state = seed ^ (stream as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let s = [
            splitmix64(&mut state),
            splitmix64(&mut state),
            splitmix64(&mut state),
            splitmix64(&mut state),
        ];
        Rng { s }
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (n > 0), without modulo bias (Lemire's multiply-and-reject).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }

    fn below_usize(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
}

/// Initial NBBO records are stamped a minute before the market opens.
const INITIAL_TIME_OF_DAY: u64 = 9 * 3600 + 29 * 60;
/// Streaming records start at the open, 09:30:00.
const OPEN_TIME_OF_DAY: u64 = 9 * 3600 + 30 * 60;

/// `20160902-HH:MM:SS.000` (the date of Wallaroo's data files). Times past midnight wrap around
/// to the same date: the engine never reads them, they only have to be well formed.
fn transact_time(seconds_of_day: u64) -> [u8; TRANSACT_TIME_LEN] {
    let s = seconds_of_day % 86_400;
    let mut t = *b"20160902-00:00:00.000";
    for (pos, value) in [(9, s / 3600), (12, s / 60 % 60), (15, s % 60)] {
        t[pos] = b'0' + (value / 10) as u8;
        t[pos + 1] = b'0' + (value % 10) as u8;
    }
    t
}

/// Transact times for a stream of records, cached because they change once per simulated second.
struct Clock {
    second: u64,
    text: [u8; TRANSACT_TIME_LEN],
}

impl Clock {
    fn new() -> Clock {
        Clock {
            second: 0,
            text: transact_time(OPEN_TIME_OF_DAY),
        }
    }

    fn at(&mut self, record: u64) -> [u8; TRANSACT_TIME_LEN] {
        let second = record / RECORDS_PER_SECOND;
        if second != self.second {
            self.second = second;
            self.text = transact_time(OPEN_TIME_OF_DAY + second);
        }
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_reference_vector() {
        // First outputs of splitmix64 seeded with 0 (Vigna's reference implementation).
        let mut state = 0;
        assert_eq!(splitmix64(&mut state), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut state), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = Rng::new(7, Stream::Orders);
        let mut seen = [false; 65];
        for _ in 0..10_000 {
            let v = rng.below(65) as usize;
            seen[v] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert!((0..1000).all(|_| rng.below(1) == 0));
    }

    #[test]
    fn transact_times_are_well_formed() {
        assert_eq!(&transact_time(OPEN_TIME_OF_DAY), b"20160902-09:30:00.000");
        assert_eq!(
            &transact_time(23 * 3600 + 59 * 60 + 59),
            b"20160902-23:59:59.000"
        );
        assert_eq!(&transact_time(86_400 + 61), b"20160902-00:01:01.000");
        let mut clock = Clock::new();
        assert_eq!(&clock.at(0), b"20160902-09:30:00.000");
        assert_eq!(&clock.at(RECORDS_PER_SECOND * 75), b"20160902-09:31:15.000");
    }

    #[test]
    fn symbols_are_distinct_padded_tickers() {
        let symbols = make_symbols(1, 5_000);
        let names: HashSet<_> = symbols.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), 5_000);
        for s in &symbols {
            let text = std::str::from_utf8(&s.name).expect("ASCII");
            let trimmed = text.trim_start_matches(' ');
            assert!(!trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_uppercase()));
            assert!((10_000..=7_000_000).contains(&s.price_units));
        }
        assert!(symbols.iter().any(|s| s.name[0] == b' '));
    }

    #[test]
    fn quotes_keep_their_side_of_the_rule() {
        use bettong_apps::market_spread::is_rejected_spread;
        let mut rng = Rng::new(3, Stream::Nbbo);
        for price in [10_000, 10_001, 999_999, 6_999_999] {
            for _ in 0..20_000 {
                let (b, o) = accepted_quote(&mut rng, price);
                assert!(!is_rejected_spread(units_to_f64(b), units_to_f64(o)));
                assert!(units_to_f64(o) - units_to_f64(b) < 0.05);
                let (b, o) = rejected_quote(&mut rng, price);
                assert!(b > 0);
                assert!(units_to_f64(o) - units_to_f64(b) >= 0.05);
            }
        }
    }

    #[test]
    fn arguments_are_checked() {
        let base = GenMarketSpreadArgs::new("/nonexistent/never-written");
        let mut a = base.clone();
        a.rejected = 351;
        assert!(generate(&a).is_err());
        let mut a = base.clone();
        a.rejected_orders = Some(2_000_000);
        assert!(generate(&a).is_err());
        let mut a = base.clone();
        a.rejected = 350;
        assert!(generate(&a).unwrap_err().contains("not rejected"));
        let mut a = base.clone();
        a.symbols = MAX_SYMBOLS + 1;
        assert!(generate(&a).is_err());
        let mut a = base;
        (a.rejected, a.rejected_orders) = (0, Some(1));
        assert!(generate(&a).is_err());
        assert!(parse_percent("101").is_err());
        assert_eq!(parse_percent("80"), Ok(80));
    }

    #[test]
    fn flags_parse_with_separators() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: GenMarketSpreadArgs,
        }
        let cli =
            Cli::try_parse_from(["gen", "--out", "d", "--orders", "2_000_000", "--seed", "9"])
                .expect("valid flags");
        assert_eq!(cli.args.orders, 2_000_000);
        assert_eq!(cli.args.nbbo, 1_000_000);
        assert_eq!(
            (cli.args.seed, cli.args.symbols, cli.args.rejected),
            (9, 350, 15)
        );
        assert_eq!(cli.args.rejected_orders, None);
        assert!(Cli::try_parse_from(["gen"]).is_err());
    }

    #[test]
    fn hot_symbols() {
        assert_eq!(hot_symbol_count(335, 20), 67);
        assert_eq!(hot_symbol_count(1, 20), 1);
        assert_eq!(hot_symbol_count(10, 0), 1);
        assert_eq!(hot_symbol_count(10, 100), 10);
        assert_eq!(hot_symbol_count(0, 20), 0);
    }
}
