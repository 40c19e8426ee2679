//! Keyframe request throttling (DESIGN.md section 6).
//!
//! A receiver whose decoder is stuck asks for a keyframe with PLI or FIR; a publisher that
//! answers every request from every receiver sends nothing but keyframes. Jitsi's limits: per
//! receiver and source at most one request per 200 ms and three per 10 s; per source (all
//! receivers together) one per 200 ms.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::ids::{EndpointId, TrackId};

/// Limits of one throttle; `Default` holds the reference parameters.
#[derive(Clone, Copy, Debug)]
pub struct KeyframeLimits {
    pub per_receiver_interval: Duration,
    pub per_receiver_burst: usize,
    pub per_receiver_window: Duration,
    pub per_source_interval: Duration,
}

impl Default for KeyframeLimits {
    fn default() -> Self {
        Self {
            per_receiver_interval: Duration::from_millis(200),
            per_receiver_burst: 3,
            per_receiver_window: Duration::from_secs(10),
            per_source_interval: Duration::from_millis(200),
        }
    }
}

/// What to do with one keyframe request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyframeDecision {
    /// Ask the publisher.
    Forward,
    /// This receiver asked too often.
    SuppressedReceiver,
    /// Someone else asked for this source a moment ago; that keyframe serves everyone.
    SuppressedSource,
}

#[derive(Default)]
pub struct KeyframeThrottle {
    limits: KeyframeLimits,
    per_receiver: HashMap<(EndpointId, TrackId), VecDeque<Instant>>,
    per_source: HashMap<TrackId, Instant>,
}

impl KeyframeThrottle {
    pub fn new(limits: KeyframeLimits) -> Self {
        Self {
            limits,
            ..Default::default()
        }
    }

    /// Decides on a request from `receiver` for `source`, and records it when forwarded.
    pub fn request(
        &mut self,
        now: Instant,
        receiver: EndpointId,
        source: TrackId,
    ) -> KeyframeDecision {
        let l = self.limits;
        let history = self.per_receiver.entry((receiver, source)).or_default();
        while history
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= l.per_receiver_window)
        {
            history.pop_front();
        }
        if history
            .back()
            .is_some_and(|t| now.saturating_duration_since(*t) < l.per_receiver_interval)
            || history.len() >= l.per_receiver_burst
        {
            return KeyframeDecision::SuppressedReceiver;
        }
        // The receiver's request counts against its budget even when the source-wide limit
        // absorbs it: the keyframe already on its way answers it.
        history.push_back(now);
        if self
            .per_source
            .get(&source)
            .is_some_and(|t| now.saturating_duration_since(*t) < l.per_source_interval)
        {
            return KeyframeDecision::SuppressedSource;
        }
        self.per_source.insert(source, now);
        KeyframeDecision::Forward
    }

    /// Forgets a receiver (it left), so the maps do not grow without bound.
    pub fn forget_receiver(&mut self, receiver: EndpointId) {
        self.per_receiver.retain(|(r, _), _| *r != receiver);
    }

    /// Forgets a source (it was unpublished).
    pub fn forget_source(&mut self, source: TrackId) {
        self.per_source.remove(&source);
        self.per_receiver.retain(|(_, s), _| *s != source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use KeyframeDecision::*;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn per_receiver_interval_and_burst() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::default();
        let (r, s) = (EndpointId(1), TrackId(7));
        assert_eq!(k.request(ms(t0, 0), r, s), Forward);
        assert_eq!(k.request(ms(t0, 100), r, s), SuppressedReceiver);
        assert_eq!(k.request(ms(t0, 250), r, s), Forward);
        assert_eq!(k.request(ms(t0, 500), r, s), Forward);
        // Three in the last 10 s: the fourth waits until the first leaves the window.
        assert_eq!(k.request(ms(t0, 800), r, s), SuppressedReceiver);
        assert_eq!(k.request(ms(t0, 9_999), r, s), SuppressedReceiver);
        assert_eq!(k.request(ms(t0, 10_000), r, s), Forward);
    }

    #[test]
    fn source_wide_interval_covers_other_receivers() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::default();
        let s = TrackId(7);
        assert_eq!(k.request(ms(t0, 0), EndpointId(1), s), Forward);
        assert_eq!(k.request(ms(t0, 50), EndpointId(2), s), SuppressedSource);
        assert_eq!(k.request(ms(t0, 210), EndpointId(3), s), Forward);
        // Another source is independent.
        assert_eq!(k.request(ms(t0, 211), EndpointId(3), TrackId(8)), Forward);
    }

    #[test]
    fn forgetting_frees_state() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::default();
        assert_eq!(k.request(t0, EndpointId(1), TrackId(1)), Forward);
        k.forget_receiver(EndpointId(1));
        k.forget_source(TrackId(1));
        assert!(k.per_receiver.is_empty() && k.per_source.is_empty());
        assert_eq!(k.request(t0, EndpointId(1), TrackId(1)), Forward);
    }
}
