//! Writing an application: a running total per account.
//!
//! Input frames are text `ACCOUNT AMOUNT` (for example `alice 25`); for each one the engine
//! emits the account's running total as the line `ACCOUNT TOTAL\n`. Frames that do not parse
//! are decode errors: logged, counted, skipped.
//!
//! ```text
//! cargo run --release --example running_total -- --in 127.0.0.1:7000 --out 127.0.0.1:5555
//! ```
//!
//! Drive it with any TCP client that writes `[u32 big-endian length][payload]` frames, e.g.
//! `bettong send --host 127.0.0.1:7000 --file amounts.txt --messages 1000`, and read the output
//! with `bettong receive --listen 127.0.0.1:5555`.

use bettong::{Application, DecodeError, Pipeline, TcpSink, TcpSource};
use bettong_apps::cli::EngineArgs;
use clap::Parser;

/// One deposit: who and how much.
struct Deposit {
    account: String,
    amount: i64,
}

/// The state entity of one account.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Balance {
    total: i64,
}

fn decode(payload: &[u8]) -> Result<Deposit, DecodeError> {
    let text = std::str::from_utf8(payload).map_err(|_| DecodeError::new("not UTF-8"))?;
    let (account, amount) = text
        .trim()
        .split_once(' ')
        .ok_or(DecodeError::new("expected `ACCOUNT AMOUNT`"))?;
    let amount = amount
        .trim()
        .parse()
        .map_err(|_| DecodeError::new("amount is not an integer"))?;
    Ok(Deposit {
        account: account.to_string(),
        amount,
    })
}

fn application() -> Application {
    let pipeline = Pipeline::source("Deposits", TcpSource::new(decode))
        // A stateless step: ignore zero deposits.
        .to(|d: Deposit| (d.amount != 0).then_some(d))
        // The account picks the shard and the state entity.
        .key_by(|d: &Deposit| d.account.as_str())
        .to_state(|d: Deposit, balance: &mut Balance| {
            balance.total += d.amount;
            Some((d.account, balance.total))
        })
        .name("running total")
        .to_sink(
            "Totals",
            TcpSink::new(|(account, total): &(String, i64), out: &mut Vec<u8>| {
                out.extend_from_slice(format!("{account} {total}\n").as_bytes());
            }),
        );
    Application::new("running total", pipeline)
}

/// The engine flags, as every `bettong` application command takes them.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    engine: EngineArgs,
}

fn main() -> Result<(), bettong::Error> {
    let args = Cli::parse().engine;
    let config = args.to_config().map_err(bettong::Error::Config)?;
    // Runs until SIGINT or SIGTERM, then drains, flushes and returns the summary.
    let summary = bettong::run_until_signal(application(), config, |engine| {
        for (name, addr) in engine.sources() {
            println!("ready {name}@{addr}");
        }
    })?;
    eprintln!("{summary}");
    Ok(())
}
