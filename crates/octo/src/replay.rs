//! Sliding-window replay protection, one window per directed link.
//!
//! The window remembers the highest counter accepted and a bitmap of the
//! [`REPLAY_WINDOW`] counters at and below it. A counter is accepted once;
//! counters that are duplicates, or older than the window, are refused.
//! 1024 positions cover ~4 s of a busy link (250 pps of 720p video) and far
//! more than any reordering a WAN produces, while costing 128 bytes per link.
//!
//! Checking and recording are separate steps on purpose: the receiver checks
//! before spending an AEAD operation (cheap early drop of replays) but records
//! only after the tag verified, so forged packets can never move the window.

/// Number of counters the window covers: with highest accepted counter `h`,
/// counters `h - 1023 ..= h` are tracked; anything lower is too old.
pub const REPLAY_WINDOW: u64 = 1024;

const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// Why [`ReplayWindow::check`] refused a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayReject {
    /// Accepted before.
    Duplicate,
    /// Below the window (or below the configured floor).
    TooOld,
}

/// Replay window of one directed link. See the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest counter accepted so far; `None` until the first one.
    highest: Option<u64>,
    /// Counters below this are refused even before the first packet.
    floor: u64,
    /// Bit `c % 1024` is set when counter `c` (within the window) was accepted.
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest)
            .field("floor", &self.floor)
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// An empty window: the first counter seen is accepted, whatever it is.
    pub const fn new() -> Self {
        ReplayWindow {
            highest: None,
            floor: 0,
            bits: [0; WORDS],
        }
    }

    /// An empty window that refuses counters below `floor`.
    ///
    /// A receiver that lost its window (restart, peer re-added) would
    /// otherwise accept a replay of anything recorded earlier; when senders
    /// keep their counters at or above the wall clock in microseconds (as
    /// `proto/octo.md` recommends), a floor of "now minus the tolerated clock
    /// skew" closes that gap.
    pub const fn with_floor(floor: u64) -> Self {
        ReplayWindow {
            highest: None,
            floor,
            bits: [0; WORDS],
        }
    }

    /// Highest counter accepted so far.
    pub const fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Would `counter` be accepted? Does not change the window.
    pub fn check(&self, counter: u64) -> Result<(), ReplayReject> {
        if counter < self.floor {
            return Err(ReplayReject::TooOld);
        }
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        // counter <= highest, so this cannot underflow.
        let age = highest - counter;
        if age >= REPLAY_WINDOW {
            return Err(ReplayReject::TooOld);
        }
        if self.bit(counter) {
            Err(ReplayReject::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Records `counter` as accepted. Call only after [`check`](Self::check)
    /// passed and the packet authenticated; recording a counter that `check`
    /// would refuse is a no-op.
    pub fn record(&mut self, counter: u64) {
        if self.check(counter).is_err() {
            return;
        }
        match self.highest {
            None => {
                self.bits = [0; WORDS];
                self.highest = Some(counter);
            }
            Some(highest) if counter > highest => {
                let ahead = counter - highest;
                if ahead >= REPLAY_WINDOW {
                    // A jump past the whole window: nothing old stays tracked.
                    self.bits = [0; WORDS];
                } else {
                    // Positions highest+1 ..= counter now stand for new
                    // counters; forget what they meant one lap ago.
                    self.clear_range(highest.wrapping_add(1), ahead);
                }
                self.highest = Some(counter);
            }
            Some(_) => {}
        }
        self.set_bit(counter);
    }

    /// `check` then `record` in one step, for callers that need no separate
    /// authentication stage.
    pub fn accept(&mut self, counter: u64) -> Result<(), ReplayReject> {
        self.check(counter)?;
        self.record(counter);
        Ok(())
    }

    fn slot(counter: u64) -> (usize, u64) {
        let pos = counter % REPLAY_WINDOW;
        ((pos / 64) as usize, 1u64 << (pos % 64))
    }

    fn bit(&self, counter: u64) -> bool {
        let (word, mask) = Self::slot(counter);
        self.bits.get(word).is_some_and(|w| w & mask != 0)
    }

    fn set_bit(&mut self, counter: u64) {
        let (word, mask) = Self::slot(counter);
        if let Some(w) = self.bits.get_mut(word) {
            *w |= mask;
        }
    }

    /// Clears `count` (< REPLAY_WINDOW) consecutive positions starting at
    /// counter `from`, wrapping around the ring, a word at a time.
    fn clear_range(&mut self, from: u64, count: u64) {
        let mut pos = from % REPLAY_WINDOW;
        let mut left = count;
        while left > 0 {
            let word = (pos / 64) as usize;
            let bit = pos % 64;
            let n = (64 - bit).min(left);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            if let Some(w) = self.bits.get_mut(word) {
                *w &= !mask;
            }
            left -= n;
            pos = (pos + n) % REPLAY_WINDOW;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_counter_is_accepted_once() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.accept(5_000), Ok(()));
        assert_eq!(w.accept(5_000), Err(ReplayReject::Duplicate));
        assert_eq!(w.highest(), Some(5_000));
    }

    #[test]
    fn first_counter_zero_and_max() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.accept(0), Ok(()));
        assert_eq!(w.accept(0), Err(ReplayReject::Duplicate));
        assert_eq!(w.accept(1), Ok(()));

        let mut w = ReplayWindow::new();
        assert_eq!(w.accept(u64::MAX), Ok(()));
        assert_eq!(w.accept(u64::MAX), Err(ReplayReject::Duplicate));
        assert_eq!(w.accept(u64::MAX - 1023), Ok(()));
        assert_eq!(w.accept(u64::MAX - 1024), Err(ReplayReject::TooOld));
    }

    #[test]
    fn reordering_inside_window_is_accepted_once() {
        let mut w = ReplayWindow::new();
        for c in [10, 12, 11, 15, 13, 14] {
            assert_eq!(w.accept(c), Ok(()), "{c}");
        }
        for c in 10..=15 {
            assert_eq!(w.accept(c), Err(ReplayReject::Duplicate), "{c}");
        }
    }

    #[test]
    fn exactly_window_old_edges() {
        let mut w = ReplayWindow::new();
        w.accept(10_000).unwrap();
        // age 1023 is the oldest tracked position
        assert_eq!(w.check(10_000 - 1023), Ok(()));
        // age 1024 is out
        assert_eq!(w.check(10_000 - 1024), Err(ReplayReject::TooOld));
        assert_eq!(w.accept(10_000 - 1023), Ok(()));
        assert_eq!(w.accept(10_000 - 1023), Err(ReplayReject::Duplicate));
        // one step forward pushes it out of the window
        w.accept(10_001).unwrap();
        assert_eq!(w.check(10_000 - 1023), Err(ReplayReject::TooOld));
    }

    #[test]
    fn far_ahead_jump_clears_window() {
        let mut w = ReplayWindow::new();
        for c in 0..1024 {
            w.accept(c).unwrap();
        }
        // exactly one window ahead: every old slot maps onto a new counter
        assert_eq!(w.accept(1023 + 1024), Ok(()));
        for c in 1024..(1023 + 1024) {
            assert_eq!(w.check(c), Ok(()), "{c} must be fresh after the jump");
        }
        assert_eq!(w.check(1023), Err(ReplayReject::TooOld));
        // a huge jump (sender restart with a clock-seeded counter)
        assert_eq!(w.accept(1 << 50), Ok(()));
        assert_eq!(w.check((1 << 50) - 1), Ok(()));
        assert_eq!(w.check(1 << 50), Err(ReplayReject::Duplicate));
        assert_eq!(w.check(4000), Err(ReplayReject::TooOld));
    }

    #[test]
    fn ring_wrap_clears_only_new_positions() {
        let mut w = ReplayWindow::new();
        // fill positions 1000..=1023 and 0..=40 of the ring (counters 1000..=1064)
        for c in 1000..=1064 {
            w.accept(c).unwrap();
        }
        // jump 100 ahead: clears ring positions for 1065..=1164, crossing no old data
        w.accept(1164).unwrap();
        for c in 1000..=1064 {
            assert_eq!(w.check(c), Err(ReplayReject::Duplicate), "{c}");
        }
        for c in 1065..1164 {
            assert_eq!(w.check(c), Ok(()), "{c}");
        }
        // advance so that 1000's ring position (1000 % 1024) is reused by 2024
        w.accept(2024).unwrap();
        assert_eq!(w.check(1000), Err(ReplayReject::TooOld));
        assert_eq!(w.check(1001), Err(ReplayReject::Duplicate));
        assert_eq!(w.check(2023), Ok(()));
    }

    #[test]
    fn advance_by_every_distance_keeps_state_exact() {
        // Compare against a naive set for many jump sizes around word edges.
        for step in [1u64, 2, 63, 64, 65, 127, 128, 511, 1000, 1023, 1024, 1025] {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::BTreeSet::new();
            let mut c = 7u64;
            for _ in 0..50 {
                w.accept(c).unwrap();
                seen.insert(c);
                c += step;
            }
            let high = c - step;
            for probe in high.saturating_sub(1100)..=high + 2 {
                let expect = if probe + REPLAY_WINDOW <= high {
                    Err(ReplayReject::TooOld)
                } else if seen.contains(&probe) {
                    Err(ReplayReject::Duplicate)
                } else {
                    Ok(())
                };
                assert_eq!(w.check(probe), expect, "step {step} probe {probe}");
            }
        }
    }

    #[test]
    fn floor_refuses_old_counters_before_first_packet() {
        let mut w = ReplayWindow::with_floor(1_000);
        assert_eq!(w.accept(999), Err(ReplayReject::TooOld));
        assert_eq!(w.accept(1_000), Ok(()));
    }

    #[test]
    fn record_without_check_ignores_refused() {
        let mut w = ReplayWindow::new();
        w.record(5_000);
        w.record(1); // too old: ignored, must not disturb the window
        assert_eq!(w.highest(), Some(5_000));
        assert_eq!(w.check(4_999), Ok(()));
    }
}
