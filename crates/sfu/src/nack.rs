//! Loss detection and retransmission requests for one inbound stream at one hop
//! (DESIGN.md section 6, Jitsi's parameters): a gap is requested at once, re-requested every
//! 150 ms (or one RTT when that is longer), at most 10 times; a jump of more than 100 packets
//! is a stream reset, not a loss.
//!
//! Sequence numbers are unwrapped to 64 bits so a gap across the 16-bit wrap is just a gap.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::ids::SeqNo;

/// The shortest time between two requests for one packet, however short the link.
pub const MIN_RESEND_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug)]
pub struct NackConfig {
    pub resend_interval: Duration,
    pub max_requests: u8,
    pub max_gap: u64,
    /// A stream silent this long that resumes with a jump was paused, not lossy: a simulcast
    /// layer a peer bridge stopped sending while nobody needed it, or one a publisher dropped
    /// for bandwidth. What it skipped is not asked for (and would be useless this late).
    pub pause: Duration,
}

impl Default for NackConfig {
    fn default() -> Self {
        Self {
            resend_interval: Duration::from_millis(150),
            max_requests: 10,
            max_gap: 100,
            pause: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Missing {
    requests: u8,
    last_request: Option<Instant>,
    /// The request (by number) last sent a second time (see [`NackTracker::poll_redundant`]).
    copied: u8,
    /// Asked for before any later packet showed it missing (see [`NackTracker::poll_tail`]):
    /// its arrival may be the original, so it does not time the round trip.
    probe: bool,
}

/// What happened to the packets of a stream, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NackOutcome {
    /// Missing packets that arrived later (repaired or reordered).
    pub recovered: u64,
    /// Missing packets given up on after the last request.
    pub lost: u64,
}

pub struct NackTracker {
    config: NackConfig,
    highest: Option<u64>,
    missing: BTreeMap<u64, Missing>,
    outcome: NackOutcome,
    /// Request-to-repair time of packets asked for once: the hop's RTT as the tracker sees
    /// it, for links nobody else measures (a publisher's uplink).
    repair_rtt: crate::resend::SmoothedRtt,
    /// When the newest packet arrived, if it did not end its frame (no RTP marker): the rest
    /// of the frame is still due, so a long silence means its tail was lost.
    open_frame: Option<Instant>,
    /// When the newest packet arrived (timed arrivals only).
    newest_at: Option<Instant>,
}

impl Default for NackTracker {
    fn default() -> Self {
        Self::new(NackConfig::default())
    }
}

impl NackTracker {
    pub fn new(config: NackConfig) -> Self {
        Self {
            config,
            highest: None,
            missing: BTreeMap::new(),
            outcome: NackOutcome::default(),
            repair_rtt: crate::resend::SmoothedRtt::default(),
            open_frame: None,
            newest_at: None,
        }
    }

    fn unwrap_seq(&self, seq: SeqNo) -> u64 {
        match self.highest {
            None => u64::from(seq.0) + (1 << 16),
            Some(h) => {
                let d = i64::from(seq.diff(SeqNo(h as u16)));
                (h as i64 + d).max(0) as u64
            }
        }
    }

    /// Records an arriving packet (original or retransmission); `true` when it filled a gap.
    pub fn on_packet(&mut self, seq: SeqNo) -> bool {
        self.record(None, seq)
    }

    /// As [`on_packet`](Self::on_packet), and a packet that was asked for exactly once times
    /// the hop's round trip (an answer to a repeated request is ambiguous, as in TCP).
    pub fn on_packet_at(&mut self, now: Instant, seq: SeqNo) -> bool {
        self.record(Some(now), seq)
    }

    /// As [`on_packet_at`](Self::on_packet_at) for video, where the RTP marker ends a frame:
    /// the tracker also notes whether the newest packet leaves a frame open, for
    /// [`poll_tail`](Self::poll_tail).
    pub fn on_video_packet(&mut self, now: Instant, seq: SeqNo, marker: bool) -> bool {
        let s = self.unwrap_seq(seq);
        let filled = self.record(Some(now), seq);
        if self.highest == Some(s) {
            self.open_frame = (!marker).then_some(now);
        }
        filled
    }

    /// A lost last packet of a frame shows as a gap only when the next frame arrives, a frame
    /// interval later (33 ms at 30 fps), and each of those ms is repair delay. When the newest
    /// packet left its frame open and nothing followed for `wait`, the next sequence number
    /// is asked for now (once per silence), as TCP's tail loss probe does. If that packet was
    /// only late, the cost is one needless resend, which the receiving side drops as a
    /// duplicate. `wait` must exceed the spacing of packets within a frame.
    pub fn poll_tail(&mut self, now: Instant, wait: Duration) -> Option<SeqNo> {
        let since = self.open_frame?;
        if now.saturating_duration_since(since) < wait {
            return None;
        }
        self.open_frame = None;
        let next = self.highest? + 1;
        self.missing.entry(next).or_insert(Missing {
            requests: 1,
            last_request: Some(now),
            // Speculative already: no second copy of the probe itself (its retries get one).
            copied: 1,
            probe: true,
        });
        Some(SeqNo(next as u16))
    }

    /// The request-to-repair time measured so far, if any.
    pub fn measured_rtt(&self) -> Option<Duration> {
        self.repair_rtt.is_measured().then(|| self.repair_rtt.get())
    }

    fn record(&mut self, now: Option<Instant>, seq: SeqNo) -> bool {
        let s = self.unwrap_seq(seq);
        let Some(h) = self.highest else {
            self.highest = Some(s);
            return false;
        };
        if s > h {
            let gap = s - h - 1;
            let resumed = match (now, self.newest_at) {
                (Some(now), Some(t)) => now.saturating_duration_since(t) > self.config.pause,
                _ => false,
            };
            if let Some(now) = now {
                self.newest_at = Some(now);
            }
            if resumed {
                // A paused stream: the jump is what it did not send.
            } else if gap > self.config.max_gap {
                // A new sequence space (the source restarted): nothing before it is owed.
                self.outcome.lost += self.missing.len() as u64;
                self.missing.clear();
            } else {
                for m in h + 1..s {
                    // A tail probe may have asked for the first of them already.
                    self.missing.entry(m).or_insert(Missing {
                        requests: 0,
                        last_request: None,
                        copied: 0,
                        probe: false,
                    });
                }
            }
            self.highest = Some(s);
            // The packet a tail probe asked for, arriving on its own or as the answer.
            let probed = self.missing.remove(&s).is_some();
            if probed {
                self.outcome.recovered += 1;
            }
            probed
        } else if let Some(m) = self.missing.remove(&s) {
            self.outcome.recovered += 1;
            if let (Some(now), Some(asked), 1, false) = (now, m.last_request, m.requests, m.probe) {
                self.repair_rtt.update(now.saturating_duration_since(asked));
            }
            true
        } else {
            false
        }
    }

    /// The sequence numbers to request now.
    ///
    /// `rtt` is the link's measured round trip, or zero when unknown; then the tracker's own
    /// request-to-repair time stands in once it has one. Unknown, a request is repeated
    /// every `resend_interval` (Jitsi's 150 ms). Known, it is repeated once its answer is
    /// overdue: RTT + 25% + 10 ms. On a 60 ms Octo link a lost repair is asked again after
    /// 85 ms instead of 150, which decides whether a twice-lost packet still makes a 300 ms
    /// playout deadline.
    pub fn poll(&mut self, now: Instant, rtt: Duration) -> Vec<SeqNo> {
        let rtt = if rtt.is_zero() {
            self.measured_rtt().unwrap_or_default()
        } else {
            rtt
        };
        let interval = if rtt.is_zero() {
            self.config.resend_interval
        } else {
            (rtt + rtt / 4 + Duration::from_millis(10)).max(MIN_RESEND_INTERVAL)
        };
        let mut out = Vec::new();
        let mut given_up = Vec::new();
        for (seq, m) in self.missing.iter_mut() {
            let due = m
                .last_request
                .is_none_or(|t| now.saturating_duration_since(t) >= interval);
            if !due {
                continue;
            }
            if m.requests >= self.config.max_requests {
                given_up.push(*seq);
                continue;
            }
            m.requests += 1;
            m.last_request = Some(now);
            out.push(SeqNo(*seq as u16));
        }
        for s in given_up {
            self.missing.remove(&s);
            self.outcome.lost += 1;
        }
        out
    }

    /// Whether `seq` is a gap still being requested: a receiver asking for it downstream
    /// will get it when the repair arrives.
    pub fn is_missing(&self, seq: SeqNo) -> bool {
        self.highest.is_some() && self.missing.contains_key(&self.unwrap_seq(seq))
    }

    /// Gaps whose latest request went out `after` ago or longer and was not copied yet: to be
    /// asked again now, as insurance against the request itself being lost. A lost request
    /// costs a whole retry interval; a second copy a few ms later costs a few bytes (the
    /// answering side must not resend twice within an RTT). Every request gets its copy, retries
    /// too: a retry is due because a round already failed, and losing it as well cost a
    /// third round (seen in the repair bench). Does not count as a retry.
    pub fn poll_redundant(&mut self, now: Instant, after: Duration) -> Vec<SeqNo> {
        let mut out = Vec::new();
        for (seq, m) in self.missing.iter_mut() {
            if m.copied < m.requests
                && m.last_request
                    .is_some_and(|t| now.saturating_duration_since(t) >= after)
            {
                m.copied = m.requests;
                out.push(SeqNo(*seq as u16));
            }
        }
        out
    }

    /// Whether the newest packet left its frame open: [`poll_tail`](Self::poll_tail) will
    /// have something to do once the wait is over.
    pub fn frame_open(&self) -> bool {
        self.open_frame.is_some()
    }

    pub fn pending(&self) -> usize {
        self.missing.len()
    }

    /// Counts since the last call.
    pub fn take_outcome(&mut self) -> NackOutcome {
        std::mem::take(&mut self.outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn a_frame_left_open_asks_for_its_tail_once() {
        let t0 = Instant::now();
        let wait = Duration::from_millis(10);
        let mut n = NackTracker::default();
        // A frame that ends (marker) leaves nothing to ask for, however long the silence.
        n.on_video_packet(t0, SeqNo(65_534), false);
        n.on_video_packet(ms(t0, 1), SeqNo(65_535), true);
        assert_eq!(n.poll_tail(ms(t0, 40), wait), None);
        // The next frame's marker packet is lost: after `wait` of silence, ask for it.
        n.on_video_packet(ms(t0, 40), SeqNo(0), false);
        n.on_video_packet(ms(t0, 41), SeqNo(1), false);
        assert_eq!(
            n.poll_tail(ms(t0, 50), wait),
            None,
            "not silent long enough"
        );
        assert_eq!(n.poll_tail(ms(t0, 51), wait), Some(SeqNo(2)));
        assert_eq!(n.poll_tail(ms(t0, 60), wait), None, "once per silence");
        assert!(n.is_missing(SeqNo(2)));
        // Already asked: neither the copy nor the first retry comes early.
        assert!(
            n.poll_redundant(ms(t0, 70), Duration::from_millis(10))
                .is_empty()
        );
        assert!(n.poll(ms(t0, 52), Duration::from_millis(60)).is_empty());
        // The answer arrives (newest now): recovered, and it does not time the round trip.
        assert!(n.on_video_packet(ms(t0, 53), SeqNo(2), true));
        assert!(!n.is_missing(SeqNo(2)));
        assert_eq!(n.take_outcome().recovered, 1);
        assert_eq!(n.measured_rtt(), None);
    }

    #[test]
    fn a_probed_tail_that_a_later_gap_also_shows_is_asked_for_once() {
        let t0 = Instant::now();
        let mut n = NackTracker::default();
        n.on_video_packet(t0, SeqNo(10), false);
        assert_eq!(
            n.poll_tail(ms(t0, 12), Duration::from_millis(10)),
            Some(SeqNo(11))
        );
        // The next frame shows 11 and 12 missing: 12 is new, 11 was asked for already.
        n.on_video_packet(ms(t0, 33), SeqNo(13), false);
        let asked = n.poll(ms(t0, 33), Duration::from_millis(60));
        assert_eq!(asked, vec![SeqNo(12)]);
        // 11's retry comes one interval (60 + 15 + 10 ms) after the probe.
        assert_eq!(
            n.poll(ms(t0, 97), Duration::from_millis(60)),
            vec![SeqNo(11)]
        );
    }

    #[test]
    fn a_stream_resuming_after_a_pause_owes_nothing() {
        let t0 = Instant::now();
        let mut n = NackTracker::default();
        n.on_packet_at(t0, SeqNo(100));
        n.on_packet_at(ms(t0, 10), SeqNo(102));
        // 40 packets later, after 2 s of silence: a layer resumed, nothing was lost.
        n.on_packet_at(ms(t0, 2010), SeqNo(143));
        assert!(!n.is_missing(SeqNo(120)));
        assert_eq!(n.poll(ms(t0, 2010), Duration::ZERO), vec![SeqNo(101)]);
        // Within the pause a jump is still loss.
        n.on_packet_at(ms(t0, 2500), SeqNo(146));
        assert!(n.is_missing(SeqNo(144)) && n.is_missing(SeqNo(145)));
    }

    #[test]
    fn knows_which_packets_are_still_missing() {
        let mut n = NackTracker::default();
        assert!(!n.is_missing(SeqNo(5)));
        n.on_packet(SeqNo(65_534));
        n.on_packet(SeqNo(2));
        for s in [65_535, 0, 1] {
            assert!(n.is_missing(SeqNo(s)), "{s} is a gap across the wrap");
        }
        assert!(!n.is_missing(SeqNo(2)) && !n.is_missing(SeqNo(65_534)));
        n.on_packet(SeqNo(0));
        assert!(!n.is_missing(SeqNo(0)), "repaired");
        assert!(n.is_missing(SeqNo(1)));
    }

    #[test]
    fn requests_a_gap_then_repeats_every_interval_up_to_ten_times() {
        let t0 = Instant::now();
        let mut n = NackTracker::default();
        n.on_packet(SeqNo(10));
        n.on_packet(SeqNo(13));
        assert_eq!(n.poll(t0, Duration::ZERO), vec![SeqNo(11), SeqNo(12)]);
        assert!(
            n.poll(ms(t0, 100), Duration::ZERO).is_empty(),
            "not before 150 ms"
        );
        assert_eq!(n.poll(ms(t0, 150), Duration::ZERO).len(), 2);
        n.on_packet(SeqNo(11));
        for i in 2..10 {
            assert_eq!(n.poll(ms(t0, 150 * i), Duration::ZERO), vec![SeqNo(12)]);
        }
        // The tenth request went out; the next due instant gives up.
        assert!(n.poll(ms(t0, 1500), Duration::ZERO).is_empty());
        assert_eq!(n.pending(), 0);
        assert_eq!(
            n.take_outcome(),
            NackOutcome {
                recovered: 1,
                lost: 1
            }
        );
    }

    #[test]
    fn each_request_is_repeated_once_as_insurance() {
        let t0 = Instant::now();
        let mut n = NackTracker::default();
        n.on_packet(SeqNo(1));
        n.on_packet(SeqNo(3));
        let rtt = Duration::from_millis(60);
        assert_eq!(n.poll(t0, rtt), vec![SeqNo(2)]);
        let after = Duration::from_millis(10);
        assert!(n.poll_redundant(ms(t0, 9), after).is_empty());
        assert_eq!(n.poll_redundant(ms(t0, 10), after), vec![SeqNo(2)]);
        assert!(n.poll_redundant(ms(t0, 30), after).is_empty(), "only once");
        // The copy is not a retry: the retry comes on schedule, and the RTT sample holds.
        assert!(n.poll(ms(t0, 84), rtt).is_empty());
        assert_eq!(n.poll(ms(t0, 85), rtt), vec![SeqNo(2)]);
        // The retry gets its copy too, once.
        assert!(n.poll_redundant(ms(t0, 94), after).is_empty());
        assert_eq!(n.poll_redundant(ms(t0, 95), after), vec![SeqNo(2)]);
        assert!(
            n.poll_redundant(ms(t0, 200), after).is_empty(),
            "once per request"
        );
    }

    #[test]
    fn answered_requests_time_the_link() {
        let t0 = Instant::now();
        let mut n = NackTracker::default();
        assert!(!n.on_packet_at(t0, SeqNo(1)));
        assert!(!n.on_packet_at(t0, SeqNo(4)));
        assert_eq!(n.poll(t0, Duration::ZERO), vec![SeqNo(2), SeqNo(3)]);
        assert_eq!(n.measured_rtt(), None);
        // 2 answered after 30 ms: the uplink's RTT, and the interval follows it.
        assert!(n.on_packet_at(ms(t0, 30), SeqNo(2)));
        assert_eq!(n.measured_rtt(), Some(Duration::from_millis(30)));
        assert!(n.poll(ms(t0, 47), Duration::ZERO).is_empty());
        assert_eq!(
            n.poll(ms(t0, 48), Duration::ZERO),
            vec![SeqNo(3)],
            "asked again after 30 + 7.5 + 10 ms"
        );
        // An answer to a repeated request says nothing certain about the RTT.
        assert!(n.on_packet_at(ms(t0, 200), SeqNo(3)));
        assert_eq!(n.measured_rtt(), Some(Duration::from_millis(30)));
        assert!(
            !n.on_packet_at(ms(t0, 200), SeqNo(3)),
            "a duplicate fills nothing"
        );
    }

    #[test]
    fn a_known_rtt_sets_the_interval() {
        let t0 = Instant::now();
        let mut n = NackTracker::default();
        n.on_packet(SeqNo(1));
        n.on_packet(SeqNo(3));
        // 300 ms link: asked again after 385 ms, not 150.
        let rtt = Duration::from_millis(300);
        assert_eq!(n.poll(t0, rtt).len(), 1);
        assert!(n.poll(ms(t0, 384), rtt).is_empty());
        assert_eq!(n.poll(ms(t0, 385), rtt).len(), 1);
        // 60 ms link: after 85 ms.
        let rtt = Duration::from_millis(60);
        assert!(n.poll(ms(t0, 385 + 84), rtt).is_empty());
        assert_eq!(n.poll(ms(t0, 385 + 85), rtt).len(), 1);
        // 4 ms link: never more often than every 20 ms.
        let rtt = Duration::from_millis(4);
        assert!(n.poll(ms(t0, 470 + 19), rtt).is_empty());
        assert_eq!(n.poll(ms(t0, 470 + 20), rtt).len(), 1);
    }

    #[test]
    fn gaps_across_the_wrap_and_resets() {
        let t0 = Instant::now();
        let mut n = NackTracker::default();
        n.on_packet(SeqNo(65534));
        n.on_packet(SeqNo(1));
        assert_eq!(n.poll(t0, Duration::ZERO), vec![SeqNo(65535), SeqNo(0)]);
        // Reordered old packets are not new gaps.
        n.on_packet(SeqNo(65535));
        assert_eq!(n.pending(), 1);
        // A jump over 100 is a reset: nothing is requested for it.
        n.on_packet(SeqNo(500));
        assert_eq!(n.pending(), 0);
        assert!(n.poll(ms(t0, 1000), Duration::ZERO).is_empty());
        n.on_packet(SeqNo(502));
        assert_eq!(n.poll(ms(t0, 1000), Duration::ZERO), vec![SeqNo(501)]);
    }
}
