//! Dominant speaker identification per conference, from the audio levels this bridge already
//! forwards (local publishers and Octo-relayed audio alike). Each bridge decides alone: fed the
//! same levels, every bridge of a cascade reaches the same decision, so no speaker protocol
//! runs between bridges.

use std::time::{Duration, Instant};

use kaskade_sfu::{
    ConferenceId, DominantSpeaker, EndpointId, SpeakerChange, SpeakerConfig, TrackKind,
};

use super::Shard;
use crate::messages::ServerMsg;

/// How often conferences without audio traffic are given their decision (silence filling).
pub const SPEAKER_TICK: Duration = Duration::from_millis(100);

impl Shard {
    fn speakers_of(&mut self, conference: ConferenceId) -> &mut DominantSpeaker<EndpointId> {
        self.speakers
            .entry(conference)
            .or_insert_with(|| DominantSpeaker::new(SpeakerConfig::default()))
    }

    /// An audio track was published (here or on a peer bridge): its owner may speak.
    pub(crate) fn speaker_added(
        &mut self,
        now: Instant,
        conference: ConferenceId,
        owner: EndpointId,
        kind: TrackKind,
    ) {
        if kind != TrackKind::Audio {
            return;
        }
        if let Some(change) = self.speakers_of(conference).add_speaker(owner, now) {
            self.speaker_changed(now, conference, change);
        }
    }

    /// An audio track went away, or its owner left.
    pub(crate) fn speaker_removed(
        &mut self,
        now: Instant,
        conference: ConferenceId,
        owner: EndpointId,
    ) {
        let Some(dsi) = self.speakers.get_mut(&conference) else {
            return;
        };
        let change = dsi.remove_speaker(owner, now);
        if dsi.is_empty() {
            self.speakers.remove(&conference);
        }
        if let Some(change) = change {
            self.speaker_changed(now, conference, change);
        }
    }

    /// One RFC 6464 audio level byte (V bit + level in -dBov) of `owner`'s audio.
    pub(crate) fn speaker_level(
        &mut self,
        now: Instant,
        conference: ConferenceId,
        owner: EndpointId,
        level: u8,
    ) {
        let Some(dsi) = self.speakers.get_mut(&conference) else {
            return;
        };
        // Decisions due before this level are taken first, so the level lands in the window
        // of the interval it belongs to.
        let change = if dsi.poll_timeout().is_some_and(|t| t <= now) {
            let t0 = Instant::now();
            let c = dsi.handle_timeout(now);
            self.metrics
                .speaker_decision_seconds
                .observe(t0.elapsed().as_secs_f64());
            c
        } else {
            None
        };
        if let Some(dsi) = self.speakers.get_mut(&conference) {
            dsi.level(owner, level & 0x7f, now);
        }
        if let Some(change) = change {
            self.speaker_changed(now, conference, change);
        }
    }

    /// Runs the decisions that are due in every conference.
    pub(crate) fn speakers_tick(&mut self, now: Instant) {
        let due: Vec<ConferenceId> = self
            .speakers
            .iter()
            .filter(|(_, d)| d.poll_timeout().is_some_and(|t| t <= now))
            .map(|(c, _)| *c)
            .collect();
        for c in due {
            let t0 = Instant::now();
            let change = self
                .speakers
                .get_mut(&c)
                .and_then(|d| d.handle_timeout(now));
            self.metrics
                .speaker_decision_seconds
                .observe(t0.elapsed().as_secs_f64());
            if let Some(change) = change {
                self.speaker_changed(now, c, change);
            }
        }
    }

    fn speaker_changed(
        &mut self,
        now: Instant,
        conference: ConferenceId,
        change: SpeakerChange<EndpointId>,
    ) {
        self.metrics.dominant_speaker_changes.inc();
        let recent: Vec<String> = self
            .speakers
            .get(&conference)
            .map(|d| d.recent_speakers().map(|e| e.to_string()).collect())
            .unwrap_or_default();
        let msg = ServerMsg::DominantSpeaker {
            participant_id: change.dominant.map(|e| e.to_string()),
            recent,
        };
        let Some(conf) = self.core.get(conference) else {
            return;
        };
        let locals: Vec<EndpointId> = conf
            .participants()
            .filter(|p| !p.remote)
            .map(|p| p.id)
            .collect();
        // Receivers put the new dominant speaker on stage: ask for a keyframe of its video
        // now rather than leaving the stage frozen until the publisher's next natural one.
        let video: Vec<kaskade_sfu::TrackId> = change
            .dominant
            .and_then(|d| conf.participant(d))
            .map(|p| {
                p.tracks
                    .iter()
                    .copied()
                    .filter(|t| {
                        conf.tracks()
                            .any(|x| x.id == *t && x.kind == TrackKind::Video)
                    })
                    .collect()
            })
            .unwrap_or_default();
        for ep in locals {
            self.send_to(ep, msg.clone());
            if Some(ep) != change.dominant {
                for t in &video {
                    self.request_receiver_keyframe(now, ep, *t);
                }
            }
        }
    }
}
