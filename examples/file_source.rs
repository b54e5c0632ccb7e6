//! A source written outside the engine: a file of `[u32 BE len][payload]` records (a capture
//! replayed for a back-test, say), read through the public [`Source`] trait like the engine's
//! own TCP and in-process sources.
//!
//! ```text
//! cargo run --release --example file_source -- words.frames
//! ```
//!
//! Without an argument it writes a small file of framed text lines first. It runs word count
//! over the file on 2 shards and prints every word's final count.

use std::future::Future;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bettong::{
    Application, CallbackSink, DecodeError, Decoder, Engine, EngineConfig, Error, Opened, Pipeline,
    Source, SourceContext, Stamp,
};

/// Records read per batch before the source publishes to the other shards and checks
/// backpressure (a batch crosses cores with one store per ring).
const BATCH: usize = 1024;

/// A file of framed records, read once by shard 0 (the keyed exchange downstream spreads the
/// work over the shards). Each payload is decoded by `D`.
pub struct FramedFile<D> {
    pub path: PathBuf,
    pub decoder: Arc<D>,
}

impl<D: Decoder> Source for FramedFile<D> {
    type Out = D::Out;
    /// Shard 0 gets the path, the others nothing.
    type Part = Option<PathBuf>;

    fn open(
        &self,
        name: &str,
        _address: Option<&str>,
        shards: usize,
    ) -> Result<Opened<Option<PathBuf>>, Error> {
        // Fail at start, with the file's name, rather than on a shard later.
        std::fs::metadata(&self.path).map_err(|e| Error::Connector {
            name: format!("source {name}"),
            message: format!("{}: {e}", self.path.display()),
        })?;
        Ok(Opened::per_shard(shards, |s| {
            (s == 0).then(|| self.path.clone())
        }))
    }

    fn run(
        &self,
        path: Option<PathBuf>,
        ctx: SourceContext<D::Out>,
    ) -> impl Future<Output = ()> + 'static {
        let decoder = self.decoder.clone();
        async move {
            let Some(path) = path else { return };
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => std::io::BufReader::new(f),
                Err(e) => {
                    eprintln!("{}: {}: {e}", ctx.name(), path.display());
                    return;
                }
            };
            let mut payload = Vec::new();
            let mut in_batch = 0;
            loop {
                let mut len = [0u8; 4];
                if file.read_exact(&mut len).is_err() {
                    break; // end of file (a torn last header is ignored)
                }
                payload.resize(u32::from_be_bytes(len) as usize, 0);
                if file.read_exact(&mut payload).is_err() {
                    eprintln!("{}: the last record is cut short", ctx.name());
                    break;
                }
                ctx.count_in();
                match decoder.decode(&payload) {
                    Ok(msg) => ctx.emit(msg, Stamp::at(bettong::now_ns())),
                    Err(_) => ctx.count_decode_error(),
                }
                in_batch += 1;
                if in_batch == BATCH {
                    in_batch = 0;
                    ctx.flush();
                    ctx.backpressure().await;
                    ctx.yield_if_needed().await;
                }
            }
            ctx.flush();
        }
    }
}

/// Every `(word, count)` output, in the order the shards produced them.
pub type Counts = Arc<Mutex<Vec<(String, u64)>>>;

/// Word count over a framed text file, outputs collected by a callback sink.
pub fn word_count(path: PathBuf) -> (Application, Counts) {
    let counts = Arc::new(Mutex::new(Vec::new()));
    let seen = counts.clone();
    let text = |b: &[u8]| -> Result<String, DecodeError> {
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::new("not UTF-8"))
    };
    let app = Application::new(
        "file word count",
        Pipeline::source(
            "Text",
            FramedFile {
                path,
                decoder: Arc::new(text),
            },
        )
        .to_many(|line: String| bettong_apps::word_count::split(&line))
        .key_by(|w: &String| w.as_str())
        .to_state(|w: String, n: &mut u64| {
            *n += 1;
            Some((w, *n))
        })
        .to_sink(
            "Counts",
            CallbackSink::new(move |c: &(String, u64)| {
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(c.clone())
            }),
        ),
    );
    (app, counts)
}

#[allow(dead_code)]
fn main() -> Result<(), Error> {
    let path = match std::env::args_os().nth(1) {
        Some(p) => PathBuf::from(p),
        None => {
            let p = std::env::temp_dir().join("bettong-file-source-demo.frames");
            let mut bytes = Vec::new();
            for line in ["the cat sat", "on the mat", "the end"] {
                bettong::codec::write_frame(&mut bytes, line.as_bytes());
            }
            std::fs::write(&p, bytes)?;
            p
        }
    };
    let (app, counts) = word_count(path);
    let config = EngineConfig {
        cores: vec![0, 1],
        pin: false,
        ..EngineConfig::default()
    };
    let engine = Engine::start(app, config)?;
    // The file is read once; wait until every record has gone through, then stop.
    let mut last = u64::MAX;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let p = engine.progress();
        if p.messages_in == last && p.finished >= p.messages_in {
            break;
        }
        last = p.messages_in;
    }
    let summary = engine.stop()?;
    let mut finals = std::collections::BTreeMap::new();
    for (w, n) in counts.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let e = finals.entry(w.clone()).or_insert(0);
        *e = (*e).max(*n);
    }
    for (w, n) in finals {
        println!("{w} => {n}");
    }
    eprintln!("{summary}");
    Ok(())
}
