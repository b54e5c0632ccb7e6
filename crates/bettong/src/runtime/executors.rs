//! The threads shards run on, kept for reuse.
//!
//! Each shard is a task on a glommio executor on its own thread. glommio 0.9 never frees an
//! executor's sleep notifier, so every executor that ends leaks one eventfd (glommio #448: 50
//! start/stop cycles of a 2-shard engine left 100 descriptors open). A program that starts
//! engines again and again — a back-test per parameter set — would run out of descriptors.
//! So executors outlive engines: when a shard ends, its executor waits, parked, for the next
//! engine that wants an executor with the same placement and polling, and the descriptor count
//! stays flat. A parked executor costs no CPU (it sleeps in io_uring) and is woken through its
//! doorbell. Executors that spin without end (`--poll spin`) are not kept: idle, they would
//! burn their cores.
//!
//! Invariant: an executor is in the idle pool only while it runs no shard, and a job handed
//! to it is run exactly once (the slot is taken under its lock).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex};
use std::task::Poll as TaskPoll;
use std::time::Duration;

use glommio::{CpuSet, LocalExecutorBuilder, Placement};

use super::config::Poll;
use super::doorbell::{Doorbell, Waiter};
use crate::error::Error;
use crate::metrics::Summary;

/// What makes two executors interchangeable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Kind {
    /// The core it is pinned to, or `None` when unpinned.
    pub(crate) core: Option<usize>,
    pub(crate) poll: Poll,
}

/// A shard's work, built on the executor's thread.
pub(crate) type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Summary>>> + Send>;

/// Where a shard's summary comes back; closed without one if the shard panicked.
pub(crate) type Outcome = mpsc::Receiver<Summary>;

/// One executor thread and its job slot.
pub(crate) struct Executor {
    kind: Kind,
    /// Wakes the executor's idle loop (and, while a shard runs, the shard's tasks).
    pub(crate) bell: Arc<Doorbell>,
    waiter: Arc<Waiter>,
    slot: Mutex<Option<(Job, String, mpsc::Sender<Summary>)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static IDLE: Mutex<Option<HashMap<Kind, Vec<Arc<Executor>>>>> = Mutex::new(None);

thread_local! {
    /// Where the summary of the job this executor's thread runs goes. Kept here rather than in
    /// the executor's task: when a task of the shard panics, the panic goes up through
    /// glommio's run loop and ends the thread, and glommio drops the panicking task's future
    /// but not the others'. A sender inside the main task was never dropped, so the engine
    /// waited for the shard's summary for ever; the thread's locals are dropped as it ends, and
    /// with this sender the receiver learns that the shard failed.
    static RUNNING_JOB: std::cell::RefCell<Option<mpsc::Sender<Summary>>> =
        const { std::cell::RefCell::new(None) };
}

/// Where an unpinned shard may run: on any of the CPUs the thread starting it may run on, which
/// is what a thread it spawned would inherit.
///
/// Bound to that set rather than left unbound, because glommio 0.9 spins only an executor bound
/// to CPUs: for an unbound one it drops `spin_before_park` (`LocalExecutor::new`). An unpinned
/// shard asked to spin (`--no-pin --poll spin`) then went to park every time it ran out of
/// work, woken at once by its drains' timer (`runtime::idle`): `strace -f -c` over 2 s of 3
/// idle shards counted 10 146 `membarrier` calls (one per park, each interrupting every CPU the
/// engine runs on), none once bound; and under valgrind (whose 3.19 never wakes a thread
/// waiting in `io_uring_enter`) a 3-shard engine hung.
fn unpinned() -> Placement {
    let Some(allowed) = core_affinity::get_core_ids() else {
        return Placement::Unbound;
    };
    match CpuSet::online() {
        Ok(online) => {
            let set = online.filter(|l| allowed.iter().any(|c| c.id == l.cpu));
            if set.is_empty() {
                Placement::Unbound
            } else {
                Placement::Fenced(set)
            }
        }
        Err(_) => Placement::Unbound,
    }
}

impl Executor {
    /// An idle executor of `kind`, or a new one (started on its thread, ready to take a job).
    pub(crate) fn take(kind: Kind, name: &str) -> Result<Arc<Executor>, Error> {
        let reused = lock(&IDLE)
            .get_or_insert_with(HashMap::new)
            .get_mut(&kind)
            .and_then(Vec::pop);
        match reused {
            Some(e) => Ok(e),
            None => Executor::start(kind, name),
        }
    }

    fn start(kind: Kind, name: &str) -> Result<Arc<Executor>, Error> {
        let bell = Doorbell::new()
            .map_err(|e| Error::Shard(format!("cannot create a shard doorbell: {e}")))?;
        let executor = Arc::new(Executor {
            kind,
            waiter: Waiter::new(Some(&bell)),
            bell,
            slot: Mutex::new(None),
        });
        let placement = match kind.core {
            Some(core) => Placement::Fixed(core),
            None => unpinned(),
        };
        let mut builder = LocalExecutorBuilder::new(placement)
            .name(name)
            // Shards do no file I/O, so they need little of glommio's registered memory, and
            // it counts against the locked-memory limit (often 8 MiB in all).
            .io_memory(256 * 1024);
        match kind.poll {
            Poll::Park => {}
            Poll::Spin => builder = builder.spin_before_park(Duration::from_secs(365 * 86_400)),
            Poll::SpinFor(d) => builder = builder.spin_before_park(d),
        }
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let e = executor.clone();
        let handle = builder
            .spawn(move || async move {
                let _ = ready_tx.send(());
                e.idle_loop().await;
            })
            .map_err(|e| Error::Shard(format!("cannot start a shard thread: {e}")))?;
        match ready_rx.recv() {
            Ok(()) => {
                // The thread runs until the process ends; nothing joins it.
                drop(handle);
                Ok(executor)
            }
            // The executor could not start (io_uring refused, locked-memory limit, …): its
            // thread ended with the reason.
            Err(_) => Err(Error::Shard(match handle.join() {
                Err(e) => format!(
                    "a shard could not start: {}",
                    super::failure::explain_glommio(&e)
                ),
                Ok(()) => "a shard exited during start-up".to_string(),
            })),
        }
    }

    /// Puts an executor that was taken but given no job back in the pool.
    pub(crate) fn give_back(self: Arc<Self>) {
        lock(&IDLE)
            .get_or_insert_with(HashMap::new)
            .entry(self.kind)
            .or_default()
            .push(self);
    }

    /// Runs `job` on this executor as shard thread `name`; its summary comes back through the
    /// returned receiver. The executor goes back to the idle pool when the job ends.
    pub(crate) fn run(self: &Arc<Self>, name: String, job: Job) -> Outcome {
        let (tx, rx) = mpsc::channel();
        *lock(&self.slot) = Some((job, name, tx));
        self.waiter.wake_if_parked();
        rx
    }

    /// The executor's main task: serve the doorbell, run each job handed over, and go back to
    /// the pool in between.
    async fn idle_loop(self: Arc<Self>) {
        glommio::spawn_local(self.bell.serve()).detach();
        loop {
            let (job, name, done) = std::future::poll_fn(|cx| {
                if let Some(job) = lock(&self.slot).take() {
                    return TaskPoll::Ready(job);
                }
                self.waiter.park(cx);
                match lock(&self.slot).take() {
                    Some(job) => {
                        self.waiter.unpark();
                        TaskPoll::Ready(job)
                    }
                    None => TaskPoll::Pending,
                }
            })
            .await;
            set_thread_name(&name);
            RUNNING_JOB.with(|d| *d.borrow_mut() = Some(done));
            let summary = job().await;
            let Some(done) = RUNNING_JOB.with(|d| d.borrow_mut().take()) else {
                return;
            };
            if self.kind.poll == Poll::Spin {
                // An executor that spins without end would burn its core while idle: it ends
                // with its shard instead (and leaks glommio's eventfd, see above).
                let _ = done.send(summary);
                return;
            }
            // Back in the pool before the summary is sent: an engine started right after this
            // one finds the executor there.
            self.clone().give_back();
            let _ = done.send(summary);
        }
    }
}

/// Names the calling thread (what `top -H` and /proc show), as a reused executor runs a shard
/// of another index than the one it was started for.
fn set_thread_name(name: &str) {
    // Linux keeps 15 bytes and a NUL.
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from the pointer;
    // `buf` is 16 bytes, zero after the name, and lives across the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
}
