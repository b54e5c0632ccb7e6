//! The fixish wire codec of Market Spread: decoding an order and an NBBO payload, encoding an
//! `OrderResult` frame, and one step of the "Check Market Data" state computation.
//!
//! Every bench handles one message per iteration (`Throughput::Elements(1)`).

use std::hint::black_box;
use std::time::Duration;

use bettong_apps::market_spread::{
    check, decode, pad_symbol, MarketMessage, Nbbo, Order, OrderResult, SymbolData,
    NBBO_PAYLOAD_LEN, ORDER_PAYLOAD_LEN,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const TIME: [u8; 21] = *b"20160902-15:47:52.000";

fn order() -> Order {
    Order::new(1, 7654, *b"Zz9Yy8", pad_symbol("INSM"), 1200.0, 19.68, TIME)
}

fn nbbo(bid: f64, offer: f64) -> Nbbo {
    Nbbo::new(pad_symbol("INSM"), TIME, bid, offer)
}

/// The payload of a framed message, as a source hands it to the decoder (header stripped).
fn payload(framed: impl FnOnce(&mut Vec<u8>), len: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    framed(&mut buf);
    assert_eq!(buf.len(), 4 + len);
    buf.split_off(4)
}

fn fixish(c: &mut Criterion) {
    let order_payload = payload(|b| order().encode_framed(b), ORDER_PAYLOAD_LEN);
    let nbbo_payload = payload(
        |b| nbbo(19.6505, 19.7136).encode_framed(b),
        NBBO_PAYLOAD_LEN,
    );
    assert!(decode(&order_payload).is_ok_and(|m| m.order().is_some()));
    assert!(decode(&nbbo_payload).is_ok_and(|m| m.nbbo().is_some()));

    let mut group = c.benchmark_group("fixish: decode order / decode nbbo / encode OrderResult");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20)
        .throughput(Throughput::Elements(1));

    group.bench_function("decode order (53 B)", |b| {
        b.iter(|| decode(black_box(&order_payload[..])))
    });
    group.bench_function("decode nbbo (42 B)", |b| {
        b.iter(|| decode(black_box(&nbbo_payload[..])))
    });

    let result = OrderResult::new(
        &order().decoded(),
        19.6505,
        19.7136,
        1_472_831_272_000_000_000,
    );
    let mut out = Vec::with_capacity(64);
    group.bench_function("encode OrderResult (59 B frame)", |b| {
        b.iter(|| {
            out.clear();
            black_box(&result).encode_into(&mut out);
            black_box(out.len())
        })
    });

    // check(): an NBBO update (stores bid/offer, recomputes the reject flag) ...
    let tight = MarketMessage::from(nbbo(19.65, 19.66));
    let mut state = SymbolData::default();
    group.bench_function("check: nbbo update", |b| {
        b.iter(|| check(black_box(tight), black_box(&mut state), 1))
    });
    // ... an order on a tradeable symbol (no output: nearly all orders) ...
    let order_msg = MarketMessage::from(order());
    let mut accepting = SymbolData::default();
    assert!(check(tight, &mut accepting, 0).is_none());
    assert!(check(order_msg, &mut accepting, 0).is_none());
    group.bench_function("check: order accepted", |b| {
        b.iter(|| check(black_box(order_msg), black_box(&mut accepting), 1))
    });
    // ... and an order on a symbol with a wide spread (builds an OrderResult).
    let mut rejecting = SymbolData::default();
    assert!(check(MarketMessage::from(nbbo(19.0, 20.0)), &mut rejecting, 0).is_none());
    assert!(check(order_msg, &mut rejecting, 0).is_some());
    group.bench_function("check: order rejected", |b| {
        b.iter(|| check(black_box(order_msg), black_box(&mut rejecting), 1))
    });
    group.finish();
}

criterion_group!(benches, fixish);
criterion_main!(benches);
