//! Market Spread data compatibility: Wallaroo's own initial NBBO files decode and give the known
//! reject state, and `bettong gen market-spread` writes data whose expected output holds.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use bettong_apps::market_spread::{
    check, decode, is_rejected_spread, symbol_key, MarketMessage, MarketView, Nbbo, SymbolData,
};
use bettong_giles::gen::{
    generate, read_expected, GenMarketSpreadArgs, EXPECTED_FILE, INITIAL_NBBO_FILE, NBBO_FILE,
    ORDERS_FILE, SYMBOLS_FILE,
};

/// Wallaroo's data files; CI clones the repository with `shared/` beside it.
const WALLAROO_DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/wallaroo/market_spread/"
);

/// The symbols that Wallaroo's initial NBBO files leave rejecting trades, in file order.
const WALLAROO_REJECTED: [&[u8; 4]; 15] = [
    b"INSM", b"PPHM", b"NYCB", b" NFX", b" TMO", b" TGT", b"GOOG", b"SIAL", b" GPS", b"MYGN",
    b"MDRX", b"TTPH", b"  NI", b" IVR", b" SLH",
];

/// Splits a file of `[u32 BE len][payload]` frames into payloads; a cut frame fails the test.
fn frames(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        assert!(rest.len() >= 4, "truncated frame header");
        let (header, tail) = rest.split_at(4);
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        assert!(tail.len() >= len, "truncated frame: {len} > {}", tail.len());
        let (payload, tail) = tail.split_at(len);
        out.push(payload);
        rest = tail;
    }
    out
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn decode_all(bytes: &[u8]) -> Vec<MarketMessage> {
    frames(bytes)
        .into_iter()
        .enumerate()
        .map(|(i, p)| decode(p).unwrap_or_else(|e| panic!("record {i}: {e}")))
        .collect()
}

fn wallaroo_initial(name: &str) -> Vec<Nbbo> {
    let path = PathBuf::from(WALLAROO_DATA).join(format!("{name}-symbols_initial-nbbo-fixish.msg"));
    let bytes = read(&path);
    let messages = decode_all(&bytes);
    // The wire records (the test re-encodes them, transact time and all), each checked to
    // decode as the NBBO it is.
    frames(&bytes)
        .into_iter()
        .zip(messages)
        .map(|(p, m)| match m.view() {
            MarketView::Nbbo(n) => {
                let wire = Nbbo::from_payload(p).expect("decoded as an NBBO");
                assert_eq!(&wire.decoded(), n);
                *wire
            }
            MarketView::Order(o) => panic!("order in an NBBO file: {o:?}"),
        })
        .collect()
}

/// Applies messages to per-symbol state and returns the number of outputs.
fn replay(
    state: &mut HashMap<[u8; 4], SymbolData>,
    msgs: impl IntoIterator<Item = MarketMessage>,
) -> u64 {
    let mut out = 0;
    for msg in msgs {
        let entry = state.entry(*symbol_key(&msg)).or_default();
        if let Some(result) = check(msg, entry, 0) {
            assert_eq!(
                (result.bid, result.offer),
                (entry.last_bid, entry.last_offer)
            );
            out += 1;
        }
    }
    out
}

fn rejected_symbols(state: &HashMap<[u8; 4], SymbolData>, order: &[Nbbo]) -> Vec<[u8; 4]> {
    order
        .iter()
        .map(|n| *n.symbol())
        .filter(|s| state[s].should_reject_trades)
        .collect()
}

#[test]
fn wallaroo_initial_nbbo_files_decode() {
    for (name, count) in [
        ("350", 350),
        ("700", 700),
        ("1400", 1400),
        ("2100", 2100),
        ("r3k", 2926),
    ] {
        let path =
            PathBuf::from(WALLAROO_DATA).join(format!("{name}-symbols_initial-nbbo-fixish.msg"));
        let bytes = read(&path);
        assert_eq!(bytes.len(), count * 46, "{name}");
        let records = wallaroo_initial(name);
        assert_eq!(records.len(), count, "{name}");
        let distinct: HashSet<_> = records.iter().map(|n| *n.symbol()).collect();
        assert_eq!(distinct.len(), count, "{name}: one record per symbol");

        // Re-encoding every record gives the file back byte for byte.
        let mut again = Vec::with_capacity(bytes.len());
        for n in &records {
            Nbbo::new(*n.symbol(), *n.transact_time(), n.bid(), n.offer())
                .encode_framed(&mut again);
        }
        assert!(again == bytes, "{name}: re-encoded bytes differ");

        // Each file's symbols are its legal-symbols list, in the same order.
        if name != "350" {
            let legal =
                read(&PathBuf::from(WALLAROO_DATA).join(format!("{name}-legal-symbols.msg")));
            let listed: Vec<&[u8]> = legal.split(|b| *b == b'\n').collect();
            let symbols: Vec<&[u8]> = records.iter().map(|n| &n.symbol()[..]).collect();
            assert_eq!(listed, symbols, "{name}");
        }
    }
}

#[test]
fn wallaroo_first_record_is_insm() {
    let first = wallaroo_initial("350")[0];
    assert_eq!(first.symbol(), b"INSM");
    assert_eq!(first.transact_time(), b"20160902-15:47:52.000");
    assert_eq!((first.bid(), first.offer()), (19.6505, 19.7136));
}

#[test]
fn wallaroo_350_leaves_15_symbols_rejected() {
    let records = wallaroo_initial("350");
    let mut state = HashMap::new();
    assert_eq!(replay(&mut state, records.iter().map(|n| (*n).into())), 0);
    let rejected = rejected_symbols(&state, &records);
    let expected: Vec<[u8; 4]> = WALLAROO_REJECTED.iter().map(|s| **s).collect();
    assert_eq!(rejected, expected);

    // Orders on those symbols, and only those, produce output carrying the symbol's NBBO.
    for n in &records {
        let order = bettong_apps::market_spread::Order::new(
            1,
            1,
            *b"000001",
            *n.symbol(),
            100.0,
            n.bid(),
            *n.transact_time(),
        );
        let mut s = state[n.symbol()];
        let out = check(order.into(), &mut s, 5);
        assert_eq!(out.is_some(), expected.contains(n.symbol()));
        if let Some(r) = out {
            assert_eq!(
                (r.symbol, r.bid, r.offer, r.timestamp),
                (*n.symbol(), n.bid(), n.offer(), 5)
            );
        }
    }
}

#[test]
fn wallaroo_larger_files_reject_the_same_15() {
    let expected: Vec<[u8; 4]> = WALLAROO_REJECTED.iter().map(|s| **s).collect();
    for name in ["700", "1400", "2100", "r3k"] {
        let records = wallaroo_initial(name);
        let mut state = HashMap::new();
        replay(&mut state, records.iter().map(|n| (*n).into()));
        assert_eq!(rejected_symbols(&state, &records), expected, "{name}");
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("bettong-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn small_args(out: &Path, seed: u64) -> GenMarketSpreadArgs {
    let mut args = GenMarketSpreadArgs::new(out);
    args.seed = seed;
    args.orders = 300_000;
    args.nbbo = 100_000;
    args
}

fn files(dir: &Path) -> Vec<Vec<u8>> {
    [
        INITIAL_NBBO_FILE,
        NBBO_FILE,
        ORDERS_FILE,
        SYMBOLS_FILE,
        EXPECTED_FILE,
    ]
    .iter()
    .map(|f| read(&dir.join(f)))
    .collect()
}

#[test]
fn generator_is_deterministic() {
    let (a, b, c) = (
        TempDir::new("det-a"),
        TempDir::new("det-b"),
        TempDir::new("det-c"),
    );
    generate(&small_args(&a.0, 42)).expect("generate a");
    generate(&small_args(&b.0, 42)).expect("generate b");
    generate(&small_args(&c.0, 43)).expect("generate c");
    let (fa, fb, fc) = (files(&a.0), files(&b.0), files(&c.0));
    assert!(fa == fb, "same seed, different bytes");
    for i in 0..4 {
        assert!(fa[i] != fc[i], "file {i} does not depend on the seed");
    }
}

/// FNV-1a, to pin the generated bytes without storing them.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
fn generator_output_is_stable_across_versions() {
    // Data sets are compared between versions by seed, so the bytes for a seed must never change.
    // If this fails on purpose (a new data format), say so in the changelog.
    let dir = TempDir::new("golden");
    let mut args = GenMarketSpreadArgs::new(&dir.0);
    (args.orders, args.nbbo, args.symbols, args.rejected) = (20_000, 5_000, 40, 3);
    generate(&args).expect("generate");
    let hashes: Vec<u64> = files(&dir.0).iter().map(|f| fnv1a(f)).collect();
    assert_eq!(hashes, GOLDEN, "hashes: {hashes:#018x?}");
}

const GOLDEN: [u64; 5] = [
    0x555a5832be929a8a,
    0xf5400037bb7759b3,
    0xf9441ab4ed6bbc8d,
    0x9e45966069946d48,
    0x04673e7072e19d6f,
];

#[test]
fn generated_data_is_valid_and_expected_out_holds() {
    let dir = TempDir::new("valid");
    let args = small_args(&dir.0, 7);
    let summary = generate(&args).expect("generate");
    assert_eq!(summary.symbols, 350);
    assert_eq!(summary.expected_out, 4); // 300_000 / 70_000, rounded

    let initial = decode_all(&read(&dir.0.join(INITIAL_NBBO_FILE)));
    let nbbo = decode_all(&read(&dir.0.join(NBBO_FILE)));
    let orders = decode_all(&read(&dir.0.join(ORDERS_FILE)));
    assert_eq!(initial.len(), 350);
    assert_eq!(nbbo.len() as u64, args.nbbo);
    assert_eq!(orders.len() as u64, args.orders);
    assert!(initial.iter().chain(&nbbo).all(|m| m.nbbo().is_some()));

    // Symbols: distinct, 1-4 uppercase letters right-aligned, listed in legal-symbols.msg.
    let symbols: Vec<[u8; 4]> = initial.iter().map(|m| *symbol_key(m)).collect();
    assert_eq!(symbols.iter().collect::<HashSet<_>>().len(), 350);
    for s in &symbols {
        let letters = s.iter().skip_while(|b| **b == b' ');
        assert!(
            letters.clone().count() >= 1 && letters.clone().all(u8::is_ascii_uppercase),
            "{s:?}"
        );
    }
    let legal = read(&dir.0.join(SYMBOLS_FILE));
    let listed: Vec<&[u8]> = legal.split(|b| *b == b'\n').collect();
    assert_eq!(listed, symbols.iter().map(|s| &s[..]).collect::<Vec<_>>());

    // The first `rejected` symbols start rejected, the others do not; updates never reject.
    let mut rejected = HashSet::new();
    for (i, m) in initial.iter().enumerate() {
        let Some(n) = m.nbbo() else { unreachable!() };
        let spread = n.offer() - n.bid();
        if i < args.rejected {
            assert!(spread >= 0.05, "{n:?}");
            rejected.insert(*n.symbol());
        } else {
            assert!(
                spread < 0.05 && !is_rejected_spread(n.bid(), n.offer()),
                "{n:?}"
            );
        }
    }
    for m in &nbbo {
        let Some(n) = m.nbbo() else { unreachable!() };
        assert!(n.offer() - n.bid() < 0.05, "{n:?}");
        assert!(!is_rejected_spread(n.bid(), n.offer()), "{n:?}");
        assert!(
            !rejected.contains(n.symbol()),
            "update for a rejected symbol: {n:?}"
        );
    }

    // Order fields are in Wallaroo's generator ranges, and the skew holds.
    let mut per_symbol: HashMap<[u8; 4], u64> = HashMap::new();
    for m in &orders {
        let Some(o) = m.order() else {
            panic!("not an order: {m:?}")
        };
        assert!((1..=2).contains(&o.side()));
        assert!((1..=300).contains(&o.account()));
        assert!(o.order_id().iter().all(u8::is_ascii_alphanumeric));
        let q = o.qty();
        assert!((10.0..=650.0).contains(&q) && q % 10.0 == 0.0, "{o:?}");
        assert!(o.price() >= 1.0);
        *per_symbol.entry(*o.symbol()).or_default() += 1;
    }
    let on_rejected: u64 = rejected.iter().filter_map(|s| per_symbol.get(s)).sum();
    assert_eq!(on_rejected, summary.expected_out);
    let hot: u64 = symbols[15..15 + 67]
        .iter()
        .filter_map(|s| per_symbol.get(s))
        .sum();
    let share = hot as f64 / (args.orders - on_rejected) as f64;
    assert!((0.78..0.82).contains(&share), "hot share {share}");

    // Replaying through the state logic gives expected.txt's count, for several interleavings.
    let expected = read_expected(&dir.0).expect("expected.txt");
    assert_eq!(expected, summary.expected_out);
    let interleavings: [Box<dyn Fn() -> Vec<MarketMessage>>; 3] = [
        Box::new(|| nbbo.iter().chain(&orders).copied().collect()),
        Box::new(|| orders.iter().chain(&nbbo).copied().collect()),
        Box::new(|| {
            let mut v = Vec::new();
            let (mut n, mut o) = (nbbo.iter(), orders.iter());
            loop {
                match (n.next(), o.next(), o.next(), o.next()) {
                    (None, None, ..) => break,
                    (a, b, c, d) => v.extend([a, b, c, d].into_iter().flatten().copied()),
                }
            }
            v
        }),
    ];
    for make in &interleavings {
        let mut state = HashMap::new();
        assert_eq!(replay(&mut state, initial.iter().copied()), 0);
        assert_eq!(replay(&mut state, make()), expected);
    }

    let text = String::from_utf8(read(&dir.0.join(EXPECTED_FILE))).expect("UTF-8");
    assert!(text.starts_with("expected_out 4\n"), "{text}");
    for line in [
        "symbols 350",
        "rejected 15",
        "orders 300000",
        "nbbo 100000",
        "seed 7",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in {text}"
        );
    }
}

#[test]
fn generator_counts_and_edge_cases() {
    let dir = TempDir::new("edges");
    let mut args = GenMarketSpreadArgs::new(&dir.0);
    (args.orders, args.nbbo) = (10, 0);
    assert_eq!(generate(&args).expect("generate").expected_out, 1);
    assert_eq!(read(&dir.0.join(NBBO_FILE)).len(), 0);
    assert_eq!(read(&dir.0.join(ORDERS_FILE)).len(), 10 * 57);

    (args.rejected, args.orders) = (0, 1_000);
    assert_eq!(generate(&args).expect("generate").expected_out, 0);
    assert_eq!(read_expected(dir.0.join(EXPECTED_FILE)), Ok(0));

    (args.rejected, args.rejected_orders, args.orders) = (5, Some(1_000), 1_000);
    assert_eq!(generate(&args).expect("generate").expected_out, 1_000);
    let orders = decode_all(&read(&dir.0.join(ORDERS_FILE)));
    let mut state = HashMap::new();
    replay(
        &mut state,
        decode_all(&read(&dir.0.join(INITIAL_NBBO_FILE))),
    );
    assert_eq!(replay(&mut state, orders), 1_000);

    assert!(read_expected(dir.0.join("missing")).is_err());
}
