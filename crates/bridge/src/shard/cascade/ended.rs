//! Tracks that ended a moment ago. A call's last packets are still in flight when its
//! participants leave: a peer's RTP after its `bye`, keyframe requests and layer demand about
//! a track just unpublished here. They are counted as `track_ended`, apart from
//! `unknown_track`, which then only counts packets about tracks never known: a sign of a
//! misrouted or broken peer worth an operator's look.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kaskade_octo::BridgeId;
use kaskade_sfu::TrackId;

/// How long an ended track is remembered: past a link's worst round trip and the one-second
/// announcement and demand period.
const KEEP: Duration = Duration::from_secs(5);

/// At most this many remembered at once, whatever the churn: past it, late packets of the
/// surplus count as `unknown_track`, which is only a label.
const MAX: usize = 4096;

/// What a late packet names an ended track by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum EndedKey {
    /// The SSRC the track's RTP carried on Octo, with the bridge that sent it (ours for the
    /// tracks published here).
    Ssrc(BridgeId, u32),
    /// The track itself (layer demand names it).
    Track(TrackId),
}

#[derive(Default)]
pub(crate) struct Ended {
    at: HashMap<EndedKey, Instant>,
}

impl Ended {
    pub(crate) fn note(&mut self, now: Instant, key: EndedKey) {
        if self.at.len() < MAX || self.at.contains_key(&key) {
            self.at.insert(key, now);
        }
    }

    /// Whether `key` ended within the last few seconds.
    fn recent(&self, now: Instant, key: EndedKey) -> bool {
        self.at
            .get(&key)
            .is_some_and(|t| now.saturating_duration_since(*t) <= KEEP)
    }

    /// The drop reason for a packet about `key`, a track this bridge does not have.
    pub(crate) fn reason(&self, now: Instant, key: EndedKey) -> &'static str {
        if self.recent(now, key) {
            "track_ended"
        } else {
            "unknown_track"
        }
    }

    pub(crate) fn prune(&mut self, now: Instant) {
        self.at
            .retain(|_, t| now.saturating_duration_since(*t) <= KEEP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_track_is_told_apart_for_a_few_seconds() {
        let t0 = Instant::now();
        let mut e = Ended::default();
        let key = EndedKey::Ssrc(BridgeId(2), 1234);
        assert_eq!(e.reason(t0, key), "unknown_track");
        e.note(t0, key);
        assert_eq!(e.reason(t0 + Duration::from_secs(1), key), "track_ended");
        assert_eq!(
            e.reason(t0, EndedKey::Ssrc(BridgeId(3), 1234)),
            "unknown_track",
            "another bridge's SSRC"
        );
        assert_eq!(e.reason(t0 + KEEP * 2, key), "unknown_track");
        e.prune(t0 + KEEP * 2);
        assert!(e.at.is_empty());
    }

    #[test]
    fn churn_cannot_grow_it_past_its_bound() {
        let t0 = Instant::now();
        let mut e = Ended::default();
        for ssrc in 0..(MAX as u32 + 100) {
            e.note(t0, EndedKey::Ssrc(BridgeId(2), ssrc));
        }
        assert_eq!(e.at.len(), MAX);
        e.prune(t0 + KEEP * 2);
        e.note(t0 + KEEP * 2, EndedKey::Ssrc(BridgeId(2), u32::MAX));
        assert_eq!(e.at.len(), 1);
    }
}
