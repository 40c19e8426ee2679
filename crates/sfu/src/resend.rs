//! Answering a receiver's retransmission requests at this hop (DESIGN.md section 6).
//!
//! A receiver repeats its NACK until the packet arrives. If the first resend is still in
//! flight when the second request comes, answering again only doubles the bytes on a link
//! that is already losing packets. So a packet goes to the same receiver at most once per
//! `min(0.9 RTT, RTT - 5 ms)`, Jitsi's rule: long enough for the first resend to have arrived,
//! short enough that a resend that was itself lost is repeated on the next request.
//!
//! Also here: the round-trip time of a leg from the RTCP receiver reports it sends us, which
//! is what the rule above needs.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use crate::ids::SeqNo;

/// Sequence numbers remembered per receiver and stream: a power of two so the slot of a
/// sequence number stays contiguous across the 16-bit wrap. A NACK for a packet older than
/// this is answered from the cache (if still there) without the per-RTT limit, which only
/// makes a resend possible, never a storm: receivers give up after ~10 requests.
pub const GUARD_SLOTS: usize = 256;

/// The RTT assumed until a receiver report told us better.
pub const DEFAULT_RTT: Duration = Duration::from_millis(100);

/// Remembers when each recent packet was resent to one receiver.
///
/// Memory: nothing until the first resend, then `GUARD_SLOTS` x 8 bytes (2 KB) per receiver
/// and stream: times are kept as milliseconds since the guard's first resend.
#[derive(Default)]
pub struct ResendGuard {
    /// What the times in `slots` count from: the first resend.
    base: Option<Instant>,
    /// Per slot: the sequence number last resent and when (ms since `base`, plus one).
    slots: Vec<Option<(SeqNo, NonZeroU32)>>,
}

/// The shortest time between two resends of one packet to one receiver.
pub fn min_resend_interval(rtt: Duration) -> Duration {
    let ninety = rtt.mul_f64(0.9);
    let minus5 = rtt.saturating_sub(Duration::from_millis(5));
    ninety.min(minus5)
}

impl ResendGuard {
    /// Whether `seq` may be resent now; if so, records the resend.
    pub fn allow(&mut self, now: Instant, seq: SeqNo, rtt: Duration) -> bool {
        if self.slots.is_empty() {
            self.slots = vec![None; GUARD_SLOTS];
        }
        let base = *self.base.get_or_insert(now);
        // Wraps after 49 days; only differences are compared, and within half that range.
        let now_ms = (now.saturating_duration_since(base).as_millis() as u32).wrapping_add(1);
        let slot = usize::from(seq.0) % GUARD_SLOTS;
        let Some(entry) = self.slots.get_mut(slot) else {
            return false;
        };
        if let Some((s, at)) = *entry
            && s == seq
        {
            // A negative difference (a caller's clock going backwards) counts as no time.
            let elapsed = now_ms.wrapping_sub(at.get());
            let elapsed = if elapsed > u32::MAX / 2 { 0 } else { elapsed };
            if u128::from(elapsed) < min_resend_interval(rtt).as_millis() {
                return false;
            }
        }
        *entry = Some((seq, NonZeroU32::new(now_ms).unwrap_or(NonZeroU32::MIN)));
        true
    }
}

/// The round-trip time a receiver report block implies (RFC 3550 section 6.4.1).
///
/// `now_ntp` is the full 64-bit NTP time now, on the same clock as the sender reports that
/// were sent (wall clock); `lsr` and `dlsr` come from the report block. `None` when the block
/// refers to no sender report yet, or when clocks make the result nonsense (negative, or over
/// a minute).
pub fn rtt_from_report(now_ntp: u64, lsr: u32, dlsr: u32) -> Option<Duration> {
    if lsr == 0 {
        return None;
    }
    // The middle 32 bits of NTP, in units of 1/65536 s, wrap every 18 hours: wrapping
    // arithmetic gives the right difference across it.
    let now_compact = (now_ntp >> 16) as u32;
    let rtt = now_compact.wrapping_sub(lsr).wrapping_sub(dlsr);
    if rtt > 60 << 16 {
        return None;
    }
    Some(Duration::from_micros(u64::from(rtt) * 1_000_000 / 65_536))
}

/// Exponentially smoothed RTT (RFC 6298's alpha = 1/8), so one delayed report does not make
/// the resend rule swing.
#[derive(Clone, Copy, Debug, Default)]
pub struct SmoothedRtt(Option<Duration>);

impl SmoothedRtt {
    pub fn update(&mut self, sample: Duration) {
        self.0 = Some(match self.0 {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        });
    }

    /// The smoothed value, or [`DEFAULT_RTT`] before the first sample.
    pub fn get(&self) -> Duration {
        self.0.unwrap_or(DEFAULT_RTT)
    }

    pub fn is_measured(&self) -> bool {
        self.0.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_interval_is_jitsis_min_of_ninety_percent_and_rtt_minus_five() {
        assert_eq!(min_resend_interval(ms(100)), ms(90));
        assert_eq!(min_resend_interval(ms(20)), ms(15));
        assert_eq!(min_resend_interval(ms(3)), Duration::ZERO);
    }

    #[test]
    fn a_packet_is_resent_once_per_rtt_to_one_receiver() {
        let t0 = Instant::now();
        let mut g = ResendGuard::default();
        let rtt = ms(100);
        assert!(g.allow(t0, SeqNo(7), rtt));
        assert!(
            !g.allow(t0 + ms(10), SeqNo(7), rtt),
            "repeat within the RTT"
        );
        assert!(!g.allow(t0 + ms(89), SeqNo(7), rtt));
        assert!(
            g.allow(t0 + ms(90), SeqNo(7), rtt),
            "the first resend was lost too"
        );
        assert!(!g.allow(t0 + ms(100), SeqNo(7), rtt));
        // Other packets are independent.
        assert!(g.allow(t0 + ms(10), SeqNo(8), rtt));
    }

    #[test]
    fn a_slot_is_eight_bytes() {
        assert_eq!(std::mem::size_of::<Option<(SeqNo, NonZeroU32)>>(), 8);
    }

    #[test]
    fn a_slot_reused_by_a_newer_packet_does_not_block_it() {
        let t0 = Instant::now();
        let mut g = ResendGuard::default();
        assert!(g.allow(t0, SeqNo(1), ms(100)));
        let aliased = SeqNo(1u16.wrapping_add(GUARD_SLOTS as u16));
        assert!(g.allow(t0 + ms(1), aliased, ms(100)));
        // Across the 16-bit wrap as well.
        assert!(g.allow(t0, SeqNo(65_535), ms(100)));
        assert!(g.allow(t0, SeqNo(0), ms(100)));
        assert!(!g.allow(t0 + ms(1), SeqNo(0), ms(100)));
    }

    #[test]
    fn rtt_from_a_report_block() {
        // Sender report sent at NTP 1000.5 s; the receiver held it 0.25 s; now is 1000.8 s.
        let ntp = |secs: f64| ((secs * 65_536.0) as u64) << 16;
        let lsr = (ntp(1000.5) >> 16) as u32;
        let dlsr = (0.25 * 65_536.0) as u32;
        let rtt = rtt_from_report(ntp(1000.8), lsr, dlsr).map(|d| d.as_millis());
        assert!(matches!(rtt, Some(49..=50)), "{rtt:?}");
        assert_eq!(rtt_from_report(ntp(1000.8), 0, 0), None, "no SR seen yet");
        // A clock step that puts the report in the future is not an RTT.
        assert_eq!(rtt_from_report(ntp(1000.0), lsr, dlsr), None);
    }

    #[test]
    fn smoothing_follows_slowly() {
        let mut s = SmoothedRtt::default();
        assert_eq!(s.get(), DEFAULT_RTT);
        assert!(!s.is_measured());
        s.update(ms(40));
        assert_eq!(s.get(), ms(40));
        s.update(ms(120));
        assert_eq!(s.get(), ms(50));
    }
}
