//! [`Target`]: the operator an edge delivers data to, owned through an `Rc` and called through
//! a pointer taken from that `Rc` once.
//!
//! Why: a call through an `Rc<dyn Input<T>>` first works out where the value sits inside the
//! `Rc`'s allocation (after the two counts, rounded up to the value's alignment, which only the
//! vtable knows): a load and five instructions on every message, on every edge. Through the
//! stored pointer the call is the vtable's entry and nothing else. `bash perf/callgrind.sh`,
//! instructions per message, before and after `Downstream` called through it: `IterSource`
//! 218.0 -> 213.0, pusher 407.1 -> 402.1, Market Spread over TCP 240.2 -> 235.2, passthrough
//! 225.5 -> 220.6; `IterSource` on 2 shards (perf/peer `--workers 2`, the source tasks and
//! the exchange drains) 313.5 -> 306.5.
//!
//! **Invariant:** `ptr` is the address of the value that `rc` owns (taken from `rc` when the
//! `Target` was made, and the two never change apart), so it is valid for as long as `rc`
//! lives, which is as long as the `Target`.

use std::ops::Deref;
use std::ptr::NonNull;
use std::rc::Rc;

use super::Input;

/// An operator that an edge calls: an `Rc<dyn Input<T>>` and the address of its value.
pub(crate) struct Target<T> {
    rc: Rc<dyn Input<T>>,
    ptr: NonNull<dyn Input<T>>,
}

impl<T> Target<T> {
    /// The operator `rc` owns, to be called through this `Target`.
    pub(crate) fn new(rc: Rc<dyn Input<T>>) -> Self {
        let ptr = NonNull::from(&*rc);
        Target { rc, ptr }
    }

    /// The `Rc` that owns the operator.
    pub(crate) fn rc(&self) -> &Rc<dyn Input<T>> {
        &self.rc
    }
}

impl<T> Clone for Target<T> {
    fn clone(&self) -> Self {
        // The same value, so the same address: the invariant holds for the clone.
        Target {
            rc: self.rc.clone(),
            ptr: self.ptr,
        }
    }
}

impl<T> Deref for Target<T> {
    type Target = dyn Input<T>;

    #[inline(always)]
    fn deref(&self) -> &Self::Target {
        // SAFETY: by the invariant `ptr` points at the value `rc` owns, and `rc` lives as long
        // as `self`, so the value outlives the returned borrow. Only shared references to it
        // are ever made (an operator is called through `&self` and keeps its state in cells),
        // as through the `Rc` itself.
        unsafe { self.ptr.as_ref() }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::event::{Control, Stamp};

    /// Aligned to 64, so that its value sits 64 bytes into the `Rc`'s allocation rather than
    /// right after the counts: a pointer taken without that offset would read the counts.
    #[repr(align(64))]
    struct Sum {
        total: Rc<Cell<u64>>,
    }

    impl Input<u64> for Sum {
        fn data(&self, msg: u64, _: Stamp) {
            self.total.set(self.total.get() + msg);
        }
        fn control(&self, _: usize, _: Control) {}
    }

    /// Calls through a `Target` reach the `Rc`'s value, also once the `Target` (or a clone of
    /// it) is the last owner left.
    #[test]
    fn calls_reach_the_value_the_rc_owns() {
        let total = Rc::new(Cell::new(0));
        let sum: Rc<dyn Input<u64>> = Rc::new(Sum {
            total: total.clone(),
        });
        let target = Target::new(sum.clone());
        assert!(Rc::ptr_eq(target.rc(), &sum));
        target.data(2, Stamp::default());
        assert_eq!(total.get(), 2);
        drop(sum);
        let copy = target.clone();
        drop(target);
        assert_eq!(
            Rc::strong_count(copy.rc()),
            1,
            "the clone is the last owner"
        );
        for n in 1..=10 {
            copy.data(n, Stamp::default());
        }
        assert_eq!(total.get(), 57);
    }
}
