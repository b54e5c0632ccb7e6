//! Pane arithmetic for range windows: which pane a time falls in, which windows a pane
//! belongs to, when a window fires. All in event-time nanoseconds since the Unix epoch.
//!
//! Windows are `[k·slide, k·slide + range)` for every integer `k ≥ 0`; pane `p` is
//! `[p·slide, (p+1)·slide)`; window `k` is panes `k ..= k + m - 1` with `m = range / slide`.

/// The shape of a window operator's windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) range: u64,
    pub(crate) slide: u64,
    pub(crate) delay: u64,
}

impl Shape {
    /// A shape, or why not: the slide must be positive and divide the range.
    pub(crate) fn new(range: u64, slide: u64, delay: u64) -> Result<Shape, String> {
        if range == 0 || slide == 0 {
            return Err("a window's range and slide must be above 0".to_string());
        }
        if slide > range || range % slide != 0 {
            return Err(format!(
                "a window's slide ({slide} ns) must divide its range ({range} ns): sliding \
                 windows are made of slide-sized panes"
            ));
        }
        Ok(Shape {
            range,
            slide,
            delay,
        })
    }

    /// Panes per window.
    pub(crate) fn panes(&self) -> u64 {
        self.range / self.slide
    }

    /// The pane event time `t` falls in.
    pub(crate) fn pane_of(&self, t: u64) -> u64 {
        t / self.slide
    }

    /// Window `k`'s bounds.
    pub(crate) fn bounds(&self, k: u64) -> (u64, u64) {
        let start = k.saturating_mul(self.slide);
        (start, start.saturating_add(self.range))
    }

    /// The watermark at which window `k` fires (`end + delay`).
    pub(crate) fn fires_at(&self, k: u64) -> u64 {
        self.bounds(k).1.saturating_add(self.delay)
    }

    /// The first window that contains pane `p` (windows never start before the epoch).
    pub(crate) fn first_window_of(&self, p: u64) -> u64 {
        p.saturating_sub(self.panes() - 1)
    }

    /// The first window that has not fired at watermark `w`: the smallest `k` with
    /// `fires_at(k) > w`.
    pub(crate) fn first_open_window(&self, w: u64) -> u64 {
        // fires_at(k) = k·slide + range + delay > w  ⇔  k > (w − range − delay) / slide.
        match w.checked_sub(self.range.saturating_add(self.delay)) {
            None => 0,
            Some(d) => d / self.slide + 1,
        }
    }

    /// True when every window that contains event time `t` has fired at watermark `w`.
    pub(crate) fn is_late(&self, t: u64, w: u64) -> bool {
        self.fires_at(self.pane_of(t)) <= w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000;

    #[test]
    fn a_time_on_a_boundary_starts_the_next_window() {
        let tumbling = Shape::new(S, S, 0).unwrap();
        assert_eq!(tumbling.pane_of(999), 0);
        assert_eq!(tumbling.pane_of(1_000), 1);
        assert_eq!(tumbling.bounds(1), (1_000, 2_000));
        // Window [1000, 2000) fires when the watermark reaches 2000, not before.
        assert_eq!(tumbling.first_open_window(1_999), 1);
        assert_eq!(tumbling.first_open_window(2_000), 2);
        assert!(!tumbling.is_late(1_999, 1_999));
        assert!(tumbling.is_late(1_999, 2_000));
        assert!(!tumbling.is_late(2_000, 2_000));
    }

    #[test]
    fn the_epoch_is_pane_and_window_zero() {
        let sliding = Shape::new(3 * S, S, 0).unwrap();
        assert_eq!(sliding.pane_of(0), 0);
        assert_eq!(
            sliding.first_window_of(0),
            0,
            "no window starts before the epoch"
        );
        assert_eq!(sliding.first_window_of(1), 0);
        assert_eq!(sliding.first_window_of(5), 3);
        assert_eq!(sliding.first_open_window(0), 0);
        assert_eq!(sliding.bounds(0), (0, 3 * S));
    }

    #[test]
    fn sliding_windows_share_panes_and_fire_after_their_delay() {
        let s = Shape::new(3 * S, S, 500).unwrap();
        assert_eq!(s.panes(), 3);
        // Pane 7 ([7000, 8000)) is in windows 5, 6 and 7; the last fires at 10000 + 500.
        assert_eq!(s.first_window_of(7), 5);
        assert_eq!(s.fires_at(7), 10_500);
        assert!(!s.is_late(7_500, 10_499));
        assert!(s.is_late(7_500, 10_500));
        // At watermark 8500 windows 0..=5 have fired ([5000, 8000) + 500).
        assert_eq!(s.first_open_window(8_499), 5);
        assert_eq!(s.first_open_window(8_500), 6);
    }

    #[test]
    fn a_slide_that_does_not_divide_the_range_is_refused() {
        assert!(Shape::new(3 * S, 2 * S, 0).is_err());
        assert!(Shape::new(S, 2 * S, 0).is_err());
        assert!(Shape::new(0, 0, 0).is_err());
        assert!(Shape::new(10 * S, S, 0).is_ok());
    }
}
