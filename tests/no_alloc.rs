//! The Market Spread hot path does not allocate per message: a counting global allocator
//! watches the whole process while 200,000 orders and NBBO updates flow through two shards
//! (so rings are crossed) over real sockets.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

use bettong::runtime::config::EngineConfig;
use bettong::Engine;
use bettong_apps::market_spread;
use bettong_giles::gen::{self, GenMarketSpreadArgs};
use common::wait_finished;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; we only count.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn market_spread_does_not_allocate_per_message() {
    let dir = std::env::temp_dir().join(format!("bettong-noalloc-{}", std::process::id()));
    let mut g = GenMarketSpreadArgs::new(&dir);
    g.orders = 120_000;
    g.nbbo = 120_000;
    let data = gen::generate(&g).unwrap();
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let (initial, orders, nbbo) = (
        read(gen::INITIAL_NBBO_FILE),
        read(gen::ORDERS_FILE),
        read(gen::NBBO_FILE),
    );
    let _ = std::fs::remove_dir_all(&dir);

    // A sink that reads into one buffer, allocating nothing per read.
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in sink.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });

    let config = EngineConfig {
        inputs: vec![
            (Some("Orders".into()), "127.0.0.1:0".parse().unwrap()),
            (Some("Nbbo".into()), "127.0.0.1:0".parse().unwrap()),
        ],
        outputs: vec![(None, sink_addr)],
        cores: vec![0, 1],
        pin: false,
        ..EngineConfig::default()
    };
    let engine = Engine::start(market_spread::application(), config).unwrap();
    let addr = |name: &str| engine.sources().iter().find(|(n, _)| n == name).unwrap().1;
    let mut to_orders = TcpStream::connect(addr("Orders")).unwrap();
    let mut to_nbbo = TcpStream::connect(addr("Nbbo")).unwrap();

    // Warm up: state entities for every symbol, buffers at their working size.
    let (o_warm, n_warm) = (57 * 20_000, 46 * 20_000);
    to_nbbo.write_all(&initial).unwrap();
    to_nbbo.write_all(&nbbo[..n_warm]).unwrap();
    to_orders.write_all(&orders[..o_warm]).unwrap();
    let warm = data.symbols as u64 + 40_000;
    wait_finished(&engine, warm);

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    to_nbbo.write_all(&nbbo[n_warm..]).unwrap();
    to_orders.write_all(&orders[o_warm..]).unwrap();
    wait_finished(&engine, warm + 200_000);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;

    drop((to_orders, to_nbbo));
    engine.stop_handle().stop();
    let summary = engine.join().unwrap();
    assert_eq!(summary.messages_in, warm + 200_000);
    assert_eq!(summary.errors(), 0);
    // 200,000 messages: anything per message would be >= 200,000. What remains is per read or
    // per wake-up inside the I/O runtime, a few hundred at most.
    assert!(
        allocations < 2_000,
        "{allocations} allocations while 200,000 messages flowed"
    );
    eprintln!("{allocations} allocations for 200,000 messages");
}
