//! Windows over keyed state: range windows (panes fired by the watermark) and count windows.
//! See [`crate::window`] for the rules.
//!
//! Firing is bounded: a watermark fires at most [`FIRE_SLICE`] windows in the call that
//! delivers it; the rest, and the control events behind them, are left to the operator's task,
//! which fires a slice at a time and waits for the sinks downstream between slices, so a burst
//! of due windows can neither starve the shard nor overrun a sink buffer. The exception is a
//! checkpoint barrier: it fires every window left due at once, so that its snapshot holds
//! exactly the data before it.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxBuildHasher;

use super::state::KeyFn;
use super::{Downstream, Input, Ports};
use crate::checkpoint::format::{Entries, GroupState, Record};
use crate::event::{Control, Stamp};
use crate::metrics::{now_ns, ComputationTimer, ShardMetrics};
use crate::runtime::shard::{Notify, ShardCore};
use crate::state::key_group;
use crate::window::key_panes::{KeyPanes, Pane};
use crate::window::panes::Shape;
use crate::window::{Aggregation, LatePolicy, Window};
use crate::Key;

/// Windows fired per step at most.
pub(crate) const FIRE_SLICE: usize = 256;

/// How often the operator's task looks for quiet input.
const QUIET_TICK: Duration = Duration::from_millis(50);

type Owned<A, T> = <<A as Aggregation<T>>::Key as ToOwned>::Owned;

/// A key's panes as a checkpoint writes them (borrowing) and reads them back (owning): each
/// open pane's index, accumulator and latest ingest time.
#[derive(serde::Serialize)]
struct SavedPanesRef<'a, Acc> {
    next_window: u64,
    panes: Vec<(u64, &'a Acc, u64)>,
}

#[derive(serde::Deserialize)]
struct SavedPanes<Acc> {
    next_window: u64,
    panes: Vec<(u64, Acc, u64)>,
}

/// Where a window operator's checkpoint records go: the shard and the operator's name.
pub(crate) type Saver = Option<(Rc<ShardCore>, String)>;

/// Writes `entries` by key group into checkpoint `id`.
fn save_groups(saver: &Saver, id: u64, groups: HashMap<u16, Entries>) {
    let Some((core, name)) = saver else { return };
    for (group, entries) in groups {
        core.checkpoints.record(
            id,
            Record::Group(GroupState {
                operator: name.clone(),
                group,
                entries,
            }),
        );
    }
}

/// One key's open panes and where its windows stand.
struct KeyState<Acc> {
    panes: KeyPanes<Acc>,
    /// Windows below this one have fired for this key.
    next_window: u64,
    /// The watermark at which this key is due, if it is in the timer map.
    scheduled: Option<u64>,
}

struct RangeState<K, Acc> {
    keys: HashMap<K, KeyState<Acc>, FxBuildHasher>,
    /// Keys by the watermark at which they have a window to fire (entries whose key was
    /// rescheduled earlier are skipped when met).
    timers: BTreeMap<u64, Vec<K>>,
    /// The watermark known: lateness is judged against it.
    target: u64,
    /// Windows due at or below this watermark have all fired.
    fired: u64,
    /// Control events waiting for the windows before them to fire.
    queued: VecDeque<Control>,
    /// The latest event time seen, and when (engine clock) data last arrived.
    max_event: u64,
    last_data: u64,
    /// End of stream has been forwarded: the task ends.
    ended: bool,
    /// Every input has said it is idle (no data for its idle timeout) and none has spoken
    /// since: only then does event time advance with the wall clock.
    inputs_idle: bool,
}

/// A range-window operator on one shard.
pub(crate) struct RangeWindows<T, A: Aggregation<T>> {
    pub(crate) agg: Arc<A>,
    pub(crate) key: KeyFn<T, A::Key>,
    pub(crate) shape: Shape,
    pub(crate) late: LatePolicy,
    state: RefCell<RangeState<Owned<A, T>, A::Acc>>,
    pub(crate) next: Downstream<A::Out>,
    pub(crate) ports: Ports,
    pub(crate) timer: ComputationTimer,
    pub(crate) metrics: Rc<ShardMetrics>,
    wake: Notify,
    pub(crate) saver: Saver,
}

impl<T: 'static, A: Aggregation<T>> RangeWindows<T, A> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        agg: Arc<A>,
        key: KeyFn<T, A::Key>,
        shape: Shape,
        late: LatePolicy,
        next: Downstream<A::Out>,
        ports: Ports,
        timer: ComputationTimer,
        metrics: Rc<ShardMetrics>,
        saver: Saver,
    ) -> Self {
        RangeWindows {
            saver,
            agg,
            key,
            shape,
            late,
            state: RefCell::new(RangeState {
                keys: HashMap::default(),
                timers: BTreeMap::new(),
                target: 0,
                fired: 0,
                queued: VecDeque::new(),
                max_event: 0,
                last_data: 0,
                ended: false,
                inputs_idle: false,
            }),
            next,
            ports,
            timer,
            metrics,
            wake: Notify::default(),
        }
    }

    /// Folds `msg` into pane `p` of its key, and makes sure the key is due when its next
    /// window is.
    fn add(&self, st: &mut RangeState<Owned<A, T>, A::Acc>, msg: &T, p: u64, ingest: u64) {
        let key = (self.key)(msg);
        let kp = match st.keys.get_mut(key) {
            Some(kp) => kp,
            None => st.keys.entry(key.to_owned()).or_insert(KeyState {
                panes: KeyPanes::default(),
                next_window: 0,
                scheduled: None,
            }),
        };
        match kp.panes.get_mut(p) {
            Some(pane) => {
                self.timer.time(|| self.agg.update(msg, &mut pane.acc));
                pane.ingest = pane.ingest.max(ingest);
            }
            None => {
                let mut acc = self.agg.initial_accumulator();
                self.timer.time(|| self.agg.update(msg, &mut acc));
                kp.panes.insert(p, Pane { acc, ingest });
            }
        }
        let first = kp.panes.first().unwrap_or(p);
        let k = self
            .shape
            .first_window_of(first)
            .max(kp.next_window)
            .max(self.shape.first_open_window(st.fired));
        let due = self.shape.fires_at(k);
        if kp.scheduled.is_none_or(|s| due < s) {
            kp.scheduled = Some(due);
            st.timers.entry(due).or_default().push(key.to_owned());
        }
    }

    /// Fires the windows due at `st.target`, at most `budget` of them; true when none is left.
    fn fire(&self, st: &mut RangeState<Owned<A, T>, A::Acc>, mut budget: usize) -> bool {
        let target = st.target;
        while let Some(entry) = st.timers.first_entry() {
            let at = *entry.key();
            if at > target {
                break;
            }
            let mut keys = entry.remove();
            while let Some(key) = keys.pop() {
                if budget == 0 {
                    keys.push(key);
                    st.timers.insert(at, keys);
                    return false;
                }
                budget -= self.fire_key(st, &key, at, target, budget);
            }
        }
        st.fired = st.fired.max(target);
        true
    }

    /// Fires the due windows of one key (at most `budget`); returns how many fired.
    fn fire_key(
        &self,
        st: &mut RangeState<Owned<A, T>, A::Acc>,
        key: &Owned<A, T>,
        at: u64,
        target: u64,
        budget: usize,
    ) -> usize {
        let shape = self.shape;
        let m = shape.panes();
        let mut timers_add = None;
        let mut fired = 0;
        {
            let Some(kp) = st.keys.get_mut(std::borrow::Borrow::borrow(key)) else {
                return 0;
            };
            if kp.scheduled != Some(at) {
                return 0; // a stale entry: the key was rescheduled
            }
            kp.scheduled = None;
            while let Some(first) = kp.panes.first() {
                let k = shape.first_window_of(first).max(kp.next_window);
                let due = shape.fires_at(k);
                if due > target || fired == budget {
                    kp.scheduled = Some(due);
                    timers_add = Some(due);
                    break;
                }
                let mut acc = self.agg.initial_accumulator();
                let mut ingest = 0;
                for pane in kp.panes.range(k, k.saturating_add(m - 1)) {
                    acc = self.agg.combine(&acc, &pane.acc);
                    ingest = ingest.max(pane.ingest);
                }
                let (start, end) = shape.bounds(k);
                let window = Window {
                    start_ns: start,
                    end_ns: end,
                };
                if let Some(out) = self
                    .agg
                    .output(std::borrow::Borrow::borrow(key), &window, &acc)
                {
                    self.next.data(
                        out,
                        Stamp {
                            ingest_ns: ingest,
                            event_ns: end - 1,
                        },
                    );
                }
                fired += 1;
                kp.next_window = k.saturating_add(1);
                // Windows after k start after pane k: panes up to k are done.
                kp.panes.close_through(k);
            }
        }
        if let Some(due) = timers_add {
            let key: &A::Key = std::borrow::Borrow::borrow(key);
            st.timers.entry(due).or_default().push(key.to_owned());
        }
        fired.max(1)
    }

    /// Forwards a control event; a barrier first writes the open panes into its checkpoint.
    fn forward(&self, c: Control) {
        if let Control::Barrier(id) = c {
            self.snapshot(id);
        }
        self.next.control(c);
    }

    /// Writes every key's open panes, by key group, into checkpoint `id`.
    fn snapshot(&self, id: u64) {
        if self.saver.is_none() {
            return;
        }
        let st = self.state.borrow();
        let mut groups: HashMap<u16, Entries> = HashMap::new();
        for (k, kp) in st.keys.iter() {
            if kp.panes.is_empty() {
                continue;
            }
            let saved = SavedPanesRef {
                next_window: kp.next_window,
                panes: kp
                    .panes
                    .iter()
                    .map(|(p, pane)| (p, &pane.acc, pane.ingest))
                    .collect(),
            };
            let key: &A::Key = std::borrow::Borrow::borrow(k);
            let group = key_group(key.stable_hash()) as u16;
            if let (Ok(kb), Ok(vb)) = (postcard::to_allocvec(k), postcard::to_allocvec(&saved)) {
                groups.entry(group).or_default().push((kb, vb));
            }
        }
        drop(st);
        save_groups(&self.saver, id, groups);
    }

    /// Loads panes a checkpoint wrote, and schedules each key's next window.
    pub(crate) fn restore(&self, entries: &Entries) -> Result<(), String> {
        let mut st = self.state.borrow_mut();
        for (kb, vb) in entries {
            let key: Owned<A, T> = postcard::from_bytes(kb).map_err(|e| format!("a key: {e}"))?;
            let saved: SavedPanes<A::Acc> =
                postcard::from_bytes(vb).map_err(|e| format!("a key's panes: {e}"))?;
            let mut panes = KeyPanes::default();
            for (p, acc, ingest) in saved.panes {
                match panes.get_mut(p) {
                    Some(_) => return Err(format!("pane {p} saved twice")),
                    None => panes.insert(p, Pane { acc, ingest }),
                }
            }
            let Some(first) = panes.first() else {
                continue;
            };
            let k = self.shape.first_window_of(first).max(saved.next_window);
            let due = self.shape.fires_at(k);
            let borrowed: &A::Key = std::borrow::Borrow::borrow(&key);
            st.timers.entry(due).or_default().push(borrowed.to_owned());
            st.keys.insert(
                key,
                KeyState {
                    panes,
                    next_window: saved.next_window,
                    scheduled: Some(due),
                },
            );
        }
        Ok(())
    }

    /// Takes a control event (already aligned over the ports): fires what it makes due and
    /// forwards it, or queues both for the task when the firing is more than a slice.
    fn on_control(&self, event: Control) {
        let mut st = self.state.borrow_mut();
        match event {
            Control::Watermark(w) => {
                st.target = st.target.max(w);
                st.inputs_idle = false;
            }
            Control::End => st.target = u64::MAX,
            Control::Idle => st.inputs_idle = true,
            Control::Barrier(_) => {}
        }
        st.queued.push_back(event);
        // A barrier behind windows still to fire fires them all now, unsliced, and is
        // forwarded with what was queued before it. Left to the task, it was forwarded (and
        // the panes saved) only after the data that came in meanwhile, past the barrier, had
        // gone into the panes: the checkpoint held it, and a restore counted it twice.
        let barrier = matches!(event, Control::Barrier(_));
        let budget = if barrier { usize::MAX } else { FIRE_SLICE };
        if (st.queued.len() == 1 || barrier) && self.fire(&mut st, budget) {
            // What waited before this event (nothing, unless a barrier came behind fires):
            // an empty Vec does not allocate, so a lone watermark costs no allocation.
            let waited = st.queued.len() - 1;
            let before: Vec<Control> = st.queued.drain(..waited).collect();
            st.queued.clear();
            st.ended |= event == Control::End;
            drop(st);
            for c in before {
                self.forward(c);
            }
            self.forward(event);
            if event == Control::End {
                self.wake.notify();
            }
        } else {
            drop(st);
            self.wake.notify();
        }
    }

    /// The operator's task: fires what a control event left due, slice by slice, forwards
    /// the queued control events, and advances event time while the input is quiet. Ends
    /// after forwarding end of stream.
    pub(crate) async fn run(self: Rc<Self>, core: Rc<ShardCore>) {
        loop {
            let woken = std::cell::Cell::new(false);
            futures_lite::future::or(
                async {
                    self.wake.notified().await;
                    woken.set(true);
                },
                glommio::timer::sleep(QUIET_TICK),
            )
            .await;
            if self.state.borrow().ended {
                return;
            }
            if !woken.get() {
                self.quiet();
            }
            loop {
                let queued = {
                    let mut st = self.state.borrow_mut();
                    if self.fire(&mut st, FIRE_SLICE) {
                        Some(st.queued.drain(..).collect::<Vec<Control>>())
                    } else {
                        None
                    }
                };
                let Some(queued) = queued else {
                    core.flush();
                    core.backpressure(&self.next.gauges).await;
                    glommio::yield_if_needed().await;
                    continue;
                };
                for c in queued {
                    self.forward(c);
                    if c == Control::End {
                        self.state.borrow_mut().ended = true;
                        core.flush();
                        return;
                    }
                }
                // What fired went into the next operator here, on this task, not on a source's
                // or a drain's: publish it now, or outputs bound for another shard would wait
                // in the rings for the next batch (forever, once the input has gone quiet).
                core.flush();
                break;
            }
        }
    }

    /// While no data arrives, event time is taken to advance with the wall clock from the
    /// latest event seen, so the last windows fire (see the module docs of `window`).
    fn quiet(&self) {
        let mut st = self.state.borrow_mut();
        // Quiet means the sources say so (a replay that stalls for a moment is not quiet).
        if st.max_event == 0 || !st.queued.is_empty() || !st.inputs_idle {
            return;
        }
        let idle = now_ns().saturating_sub(st.last_data);
        if idle < QUIET_TICK.as_nanos() as u64 {
            return;
        }
        let assumed = st.max_event.saturating_add(idle);
        if assumed > st.target
            && st
                .timers
                .first_key_value()
                .is_some_and(|(at, _)| *at <= assumed)
        {
            st.target = assumed;
            if !self.fire(&mut st, FIRE_SLICE) {
                drop(st);
                self.wake.notify();
            }
        }
    }
}

impl<T: 'static, A: Aggregation<T>> Input<T> for RangeWindows<T, A> {
    #[inline]
    fn data(&self, msg: T, stamp: Stamp) {
        let mut st = self.state.borrow_mut();
        let t = stamp.event_ns;
        st.max_event = st.max_event.max(t);
        st.last_data = stamp.ingest_ns;
        st.inputs_idle = false;
        let mut pane = self.shape.pane_of(t);
        if self.shape.is_late(t, st.target) {
            match self.late {
                LatePolicy::Drop => {
                    self.metrics.late();
                    self.metrics.filtered(stamp.ingest_ns);
                    return;
                }
                LatePolicy::FirePerMessage => {
                    drop(st);
                    let mut acc = self.agg.initial_accumulator();
                    self.agg.update(&msg, &mut acc);
                    let (start, end) = self.shape.bounds(pane);
                    let window = Window {
                        start_ns: start,
                        end_ns: end,
                    };
                    match self.agg.output((self.key)(&msg), &window, &acc) {
                        Some(out) => self.next.data(
                            out,
                            Stamp {
                                ingest_ns: stamp.ingest_ns,
                                event_ns: end - 1,
                            },
                        ),
                        None => self.metrics.filtered(stamp.ingest_ns),
                    }
                    return;
                }
                LatePolicy::PlaceInOldestWindow => {
                    pane = self.shape.first_open_window(st.target);
                }
            }
        }
        self.add(&mut st, &msg, pane, stamp.ingest_ns);
        self.metrics.filtered(stamp.ingest_ns);
    }

    fn control(&self, port: usize, event: Control) {
        for e in self.ports.align(port, event) {
            self.on_control(e);
        }
    }

    fn ports(&self) -> Option<&Ports> {
        Some(&self.ports)
    }
}

/// One key's count window in progress.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Counted<Acc> {
    acc: Acc,
    count: u64,
    first: u64,
    last: u64,
    ingest: u64,
}

/// Each key's count window in progress.
pub(crate) type CountState<A, T> =
    HashMap<Owned<A, T>, Counted<<A as Aggregation<T>>::Acc>, FxBuildHasher>;

/// A count-window operator on one shard.
pub(crate) struct CountWindows<T, A: Aggregation<T>> {
    pub(crate) agg: Arc<A>,
    pub(crate) key: KeyFn<T, A::Key>,
    pub(crate) n: u64,
    pub(crate) state: RefCell<CountState<A, T>>,
    pub(crate) next: Downstream<A::Out>,
    pub(crate) ports: Ports,
    pub(crate) timer: ComputationTimer,
    pub(crate) metrics: Rc<ShardMetrics>,
    pub(crate) saver: Saver,
}

impl<T: 'static, A: Aggregation<T>> CountWindows<T, A> {
    /// Writes every key's window in progress, by key group, into checkpoint `id`.
    fn snapshot(&self, id: u64) {
        if self.saver.is_none() {
            return;
        }
        let mut groups: HashMap<u16, Entries> = HashMap::new();
        for (k, c) in self.state.borrow().iter().filter(|(_, c)| c.count > 0) {
            let key: &A::Key = std::borrow::Borrow::borrow(k);
            let group = key_group(key.stable_hash()) as u16;
            if let (Ok(kb), Ok(vb)) = (postcard::to_allocvec(k), postcard::to_allocvec(c)) {
                groups.entry(group).or_default().push((kb, vb));
            }
        }
        save_groups(&self.saver, id, groups);
    }

    /// Loads windows in progress a checkpoint wrote.
    pub(crate) fn restore(&self, entries: &Entries) -> Result<(), String> {
        let mut map = self.state.borrow_mut();
        for (kb, vb) in entries {
            let key: Owned<A, T> = postcard::from_bytes(kb).map_err(|e| format!("a key: {e}"))?;
            let c: Counted<A::Acc> =
                postcard::from_bytes(vb).map_err(|e| format!("a count window: {e}"))?;
            map.insert(key, c);
        }
        Ok(())
    }

    fn emit(&self, key: &A::Key, c: &Counted<A::Acc>) {
        let window = Window {
            start_ns: c.first,
            end_ns: c.last,
        };
        if let Some(out) = self.agg.output(key, &window, &c.acc) {
            self.next.data(
                out,
                Stamp {
                    ingest_ns: c.ingest,
                    event_ns: c.last,
                },
            );
        }
    }
}

impl<T: 'static, A: Aggregation<T>> Input<T> for CountWindows<T, A> {
    #[inline]
    fn data(&self, msg: T, stamp: Stamp) {
        let mut map = self.state.borrow_mut();
        let key = (self.key)(&msg);
        let c = match map.get_mut(key) {
            Some(c) => c,
            None => map.entry(key.to_owned()).or_insert(Counted {
                acc: self.agg.initial_accumulator(),
                count: 0,
                first: 0,
                last: 0,
                ingest: 0,
            }),
        };
        if c.count == 0 {
            c.first = stamp.event_ns;
        }
        self.timer.time(|| self.agg.update(&msg, &mut c.acc));
        c.count += 1;
        c.last = stamp.event_ns;
        c.ingest = stamp.ingest_ns;
        self.metrics.filtered(stamp.ingest_ns);
        if c.count == self.n {
            self.emit(key, c);
            c.acc = self.agg.initial_accumulator();
            c.count = 0;
        }
    }

    fn control(&self, port: usize, event: Control) {
        for e in self.ports.align(port, event) {
            if e == Control::End {
                // A clean stop: every key's remainder fires.
                let map = self.state.borrow();
                for (k, c) in map.iter().filter(|(_, c)| c.count > 0) {
                    self.emit(std::borrow::Borrow::borrow(k), c);
                }
            }
            if let Control::Barrier(id) = e {
                self.snapshot(id);
            }
            self.next.control(e);
        }
    }

    fn ports(&self) -> Option<&Ports> {
        Some(&self.ports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sum;
    impl Aggregation<(String, u64)> for Sum {
        type Key = str;
        type Acc = u64;
        type Out = (String, u64, u64);
        fn initial_accumulator(&self) -> u64 {
            0
        }
        fn update(&self, input: &(String, u64), acc: &mut u64) {
            *acc += input.1;
        }
        fn combine(&self, a: &u64, b: &u64) -> u64 {
            a + b
        }
        fn output(&self, key: &str, window: &Window, acc: &u64) -> Option<Self::Out> {
            Some((key.to_string(), window.start_ns, *acc))
        }
    }

    /// Logs what the windows send.
    #[derive(Default)]
    struct Log(RefCell<Vec<String>>);
    impl Input<(String, u64, u64)> for Log {
        fn data(&self, (k, start, sum): (String, u64, u64), _: Stamp) {
            self.0.borrow_mut().push(format!("{k}@{start}={sum}"));
        }
        fn control(&self, _: usize, event: Control) {
            self.0.borrow_mut().push(format!("{event:?}"));
        }
    }

    type Op = RangeWindows<(String, u64), Sum>;

    /// Tumbling windows of 10 ns summing per key, saving into `core`'s checkpoints.
    fn tumbling_sums(core: &Rc<ShardCore>) -> (Rc<Op>, Rc<Log>) {
        sums(core, Shape::new(10, 10, 0).unwrap())
    }

    fn sums(core: &Rc<ShardCore>, shape: Shape) -> (Rc<Op>, Rc<Log>) {
        let log = Rc::new(Log::default());
        let next: Rc<dyn Input<(String, u64, u64)>> = log.clone();
        let key: KeyFn<(String, u64), str> = Arc::new(|m: &(String, u64)| m.0.as_str());
        let op = Rc::new(RangeWindows::new(
            Arc::new(Sum),
            key,
            shape,
            LatePolicy::Drop,
            Downstream::to(next, 0, Rc::from([])),
            Ports::new(1),
            ComputationTimer::new(core.metrics.clone(), "sum"),
            core.metrics.clone(),
            Some((core.clone(), "sum".to_string())),
        ));
        (op, log)
    }

    fn core() -> Rc<ShardCore> {
        ShardCore::for_test(0, 1)
    }

    /// An event far ahead in event time costs one pane, not one per pane in between, and
    /// both windows fire with their sums; so does one far behind the first (nothing is late
    /// before the first watermark). A checkpoint saves and restores the three panes.
    #[test]
    fn far_apart_event_times_cost_a_pane_each() {
        glommio::LocalExecutor::default().run(async {
            let core = core();
            core.checkpoints.sinks.set(1);
            let (op, log) = tumbling_sums(&core);
            let (near, far) = (10u64 << 36, 10u64 << 58);
            op.data(
                ("k".to_string(), 1),
                Stamp {
                    ingest_ns: 1,
                    event_ns: near,
                },
            );
            op.data(
                ("k".to_string(), 2),
                Stamp {
                    ingest_ns: 1,
                    event_ns: far,
                },
            );
            op.data(
                ("k".to_string(), 4),
                Stamp {
                    ingest_ns: 1,
                    event_ns: 5,
                },
            );
            assert_eq!(op.state.borrow().keys["k"].panes.iter().count(), 3);
            op.control(0, Control::Barrier(1));
            let (restored, restored_log) = tumbling_sums(&core);
            for r in core.checkpoints.records_of(1) {
                if let Record::Group(g) = r {
                    restored.restore(&g.entries).unwrap();
                }
            }
            for (op, log) in [(op, log), (restored, restored_log)] {
                op.control(0, Control::Watermark(near + 10));
                op.control(0, Control::End);
                let want = [
                    "Barrier(1)".to_string(),
                    "k@0=4".to_string(),
                    format!("k@{near}=1"),
                    format!("Watermark({})", near + 10),
                    format!("k@{far}=2"),
                    "End".to_string(),
                ];
                let got = log.0.borrow().clone();
                let got: Vec<_> = got.into_iter().filter(|e| e != "Barrier(1)").collect();
                assert_eq!(got, want[1..]);
            }
        });
    }

    /// The last event time there is, with a 1 ns slide (pane u64::MAX): its window fires at
    /// the end with its sum, beside an ordinary one.
    #[test]
    fn the_last_event_time_there_is() {
        glommio::LocalExecutor::default().run(async {
            let core = core();
            let (op, log) = sums(&core, Shape::new(1, 1, 0).unwrap());
            op.data(
                ("k".to_string(), 1),
                Stamp {
                    ingest_ns: 1,
                    event_ns: u64::MAX,
                },
            );
            op.data(
                ("k".to_string(), 2),
                Stamp {
                    ingest_ns: 1,
                    event_ns: 7,
                },
            );
            op.control(0, Control::End);
            let want = [
                "k@7=2".to_string(),
                format!("k@{}=1", u64::MAX),
                "End".to_string(),
            ];
            assert_eq!(*log.0.borrow(), want);
        });
    }

    /// More windows fall due at once than a slice fires, and a barrier follows the watermark,
    /// then data past the barrier: every due window is out before the barrier, and the
    /// barrier's snapshot holds no pane of the data after it.
    #[test]
    fn a_barrier_behind_a_burst_of_windows_saves_only_what_came_before_it() {
        glommio::LocalExecutor::default().run(async {
            let core = core();
            // One sink on the shard: checkpoint 1 stays in flight, its records readable.
            core.checkpoints.sinks.set(1);
            let (op, log) = tumbling_sums(&core);
            let task = glommio::spawn_local(op.clone().run(core.clone()));
            let keys = FIRE_SLICE + 44;
            for k in 0..keys {
                op.data(
                    (format!("k{k}"), 1),
                    Stamp {
                        ingest_ns: 1,
                        event_ns: 5,
                    },
                );
            }
            op.control(0, Control::Watermark(10));
            op.control(0, Control::Barrier(1));
            op.data(
                ("late".to_string(), 7),
                Stamp {
                    ingest_ns: 2,
                    event_ns: 15,
                },
            );
            // Whatever the task would do before the fix, it has had the chance to.
            for _ in 0..10 {
                glommio::yield_if_needed().await;
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            let seen = log.0.borrow().clone();
            let at = seen.iter().position(|e| e == "Barrier(1)");
            assert_eq!(
                at,
                Some(keys + 1),
                "every window and the watermark before the barrier"
            );
            let records = core.checkpoints.records_of(1);
            assert!(
                records.iter().all(|r| match r {
                    Record::Group(g) => g.entries.is_empty(),
                    _ => true,
                }),
                "the snapshot saved panes: {} records",
                records.len()
            );
            // The data after the barrier is not lost: it fires with its window.
            op.control(0, Control::Watermark(20));
            assert_eq!(
                log.0.borrow().last().map(String::as_str),
                Some("Watermark(20)")
            );
            assert!(log.0.borrow().iter().any(|e| e == "late@10=7"));
            op.control(0, Control::End);
            task.await;
        });
    }
}
