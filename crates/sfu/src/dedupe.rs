//! Duplicate suppression per RTP stream.
//!
//! `rtc` can hand the same packet to the application twice (DESIGN.md section 4), and a
//! retransmission may race its original. Forwarding a duplicate costs every receiver bandwidth
//! and confuses their loss statistics, so each inbound stream passes this filter first.

use crate::ids::SeqNo;

const WINDOW: u16 = 1024;
const WORDS: usize = WINDOW as usize / 64;

/// Remembers which of the last 1024 sequence numbers were seen.
#[derive(Clone, Debug)]
pub struct DuplicateFilter {
    highest: Option<SeqNo>,
    seen: [u64; WORDS],
}

impl Default for DuplicateFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl DuplicateFilter {
    pub fn new() -> Self {
        Self {
            highest: None,
            seen: [0; WORDS],
        }
    }

    /// Returns `true` the first time `seq` is offered, `false` for a duplicate or for a packet
    /// older than the window (which we can no longer tell apart from a duplicate; forwarding it
    /// that late would be useless to a receiver's jitter buffer anyway).
    pub fn accept(&mut self, seq: SeqNo) -> bool {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            self.mark(seq);
            return true;
        };
        let d = seq.diff(highest);
        if d > 0 {
            // Advance: clear the slots that the window slides over.
            if d >= i32::from(WINDOW) {
                self.seen = [0; WORDS];
            } else {
                for i in 1..=d {
                    self.clear(SeqNo(highest.0.wrapping_add(i as u16)));
                }
            }
            self.highest = Some(seq);
            self.mark(seq);
            true
        } else if -d >= i32::from(WINDOW) || self.is_marked(seq) {
            false
        } else {
            self.mark(seq);
            true
        }
    }

    fn slot(seq: SeqNo) -> (usize, u64) {
        let i = usize::from(seq.0 % WINDOW);
        (i / 64, 1u64 << (i % 64))
    }
    fn mark(&mut self, seq: SeqNo) {
        let (w, b) = Self::slot(seq);
        self.seen[w] |= b;
    }
    fn clear(&mut self, seq: SeqNo) {
        let (w, b) = Self::slot(seq);
        self.seen[w] &= !b;
    }
    fn is_marked(&self, seq: SeqNo) -> bool {
        let (w, b) = Self::slot(seq);
        self.seen[w] & b != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_time_only() {
        let mut f = DuplicateFilter::new();
        assert!(f.accept(SeqNo(10)));
        assert!(!f.accept(SeqNo(10)));
        assert!(f.accept(SeqNo(12)));
        assert!(f.accept(SeqNo(11)), "late but new");
        assert!(!f.accept(SeqNo(11)));
    }

    #[test]
    fn wraps_around() {
        let mut f = DuplicateFilter::new();
        for s in 65000u32..66000 {
            assert!(f.accept(SeqNo(s as u16)));
        }
        assert!(!f.accept(SeqNo(65535)));
        assert!(!f.accept(SeqNo(3)));
        assert!(f.accept(SeqNo(465)));
    }

    #[test]
    fn too_old_is_refused_and_jump_resets() {
        let mut f = DuplicateFilter::new();
        assert!(f.accept(SeqNo(5000)));
        assert!(!f.accept(SeqNo(5000 - 1024)));
        assert!(f.accept(SeqNo(5000 - 1023)));
        // A jump beyond the window forgets everything before it.
        assert!(f.accept(SeqNo(9000)));
        assert!(f.accept(SeqNo(8990)));
        assert!(!f.accept(SeqNo(9000)));
    }

    #[test]
    fn slots_are_cleared_when_the_window_slides() {
        let mut f = DuplicateFilter::new();
        assert!(f.accept(SeqNo(0)));
        // 1024 later maps to the same slot; it must count as new.
        assert!(f.accept(SeqNo(1024)));
        assert!(!f.accept(SeqNo(1024)));
    }
}
