//! Published tracks: a publisher's new track becomes a source, announced and subscribed by every
//! receiver of the conference; a removed one is torn down everywhere.

use super::*;

impl Shard {
    pub(super) fn on_track_open(
        &mut self,
        now: Instant,
        leg_id: LegId,
        owner: EndpointId,
        init: RTCTrackEventInit,
    ) {
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        // Every rid layer of a track fires its own OnTrack (same track id, its own SSRC and
        // rid); the rid's rank in the offer is the layer.
        let rids = leg.rids.clone();
        let layer = match init.rid.as_deref().filter(|r| !r.is_empty()) {
            None => Layer::BASE,
            Some(rid) => match rids
                .iter()
                .position(|r| r == rid)
                .and_then(|i| Layer::new(i as u8))
            {
                Some(l) => l,
                None => {
                    warn!(endpoint = %owner, rid, "a layer with a rid the offer did not list is ignored");
                    return;
                }
            },
        };
        // A re-offer can fire OnTrack again for a track we know: keep one track per id.
        if let Some(&tid) = leg.published.get(&init.track_id) {
            self.by_ssrc.insert((leg_id, init.ssrc), (tid, layer));
            if let Some(src) = self.sources.get_mut(&tid) {
                src.origin = Origin::Local {
                    leg: leg_id,
                    receiver: init.receiver_id,
                };
                if let Some(l) = src.layers.get_mut(layer.index()) {
                    l.ssrc = init.ssrc;
                }
                debug!(track = %tid, %layer, ssrc = init.ssrc, "layer bound");
            }
            return;
        }
        let Some(mut receiver) = leg.pc.rtp_receiver(init.receiver_id) else {
            return;
        };
        let kind = match receiver.track().kind() {
            rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio => TrackKind::Audio,
            _ => TrackKind::Video,
        };
        let audio_level_id = receiver
            .get_parameters()
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|h| h.uri == AUDIO_LEVEL_URI)
            .and_then(|h| u8::try_from(h.id).ok());
        let out_ssrc = self.fresh_ssrc();
        let tid = match self.core.publish(owner, kind, Ssrc(out_ssrc)) {
            Ok(t) => t,
            Err(e) => {
                warn!(endpoint = %owner, error = %e, "track refused");
                return;
            }
        };
        info!(endpoint = %owner, track = %tid, kind = kind.as_str(), ssrc = init.ssrc, rid = ?init.rid, "track published");
        if let Some(leg) = self.leg_mut(leg_id) {
            leg.published.insert(init.track_id.clone(), tid);
        }
        self.by_ssrc.insert((leg_id, init.ssrc), (tid, layer));
        self.by_out_ssrc.insert(out_ssrc, (tid, Layer::BASE));
        let Some(conference) = self.core.conference_of(owner).map(|c| c.id) else {
            return;
        };
        // Simulcast video: one layer per offered rid, each with its own Octo SSRC (layer 0
        // goes with the track's).
        let repair = self.limits.repair;
        let mut layers: Vec<LayerIn> = if kind == TrackKind::Video && init.rid.is_some() {
            rids.iter()
                .map(|r| LayerIn::new(kind, repair, 0, r.clone()))
                .collect()
        } else {
            vec![LayerIn::new(kind, repair, 0, String::new())]
        };
        for (i, l) in layers.iter_mut().enumerate() {
            if i == layer.index() {
                l.ssrc = init.ssrc;
            }
            l.octo_ssrc = if i == 0 { out_ssrc } else { self.fresh_ssrc() };
            if let Some(lay) = Layer::new(i as u8) {
                self.by_out_ssrc.insert(l.octo_ssrc, (tid, lay));
            }
        }
        self.sources.insert(
            tid,
            Source::new(
                kind,
                owner,
                conference,
                Origin::Local {
                    leg: leg_id,
                    receiver: init.receiver_id,
                },
                audio_level_id,
                repair,
                layers,
            ),
        );
        self.announce_track(now, owner, tid, kind);
        self.octo_announce(owner);
    }

    /// Tells the conference about a new track and subscribes every local receiver to it.
    pub(super) fn announce_track(
        &mut self,
        now: Instant,
        owner: EndpointId,
        tid: TrackId,
        kind: TrackKind,
    ) {
        if let Some(conference) = self.core.conference_of(owner).map(|c| c.id) {
            self.speaker_added(now, conference, owner, kind);
        }
        let subscribers: Vec<EndpointId> = self
            .core
            .track_with_conference(tid)
            .map(|(c, t)| c.subscribers(t).collect())
            .unwrap_or_default();
        let announce = ServerMsg::TrackPublished {
            participant_id: owner.to_string(),
            track: TrackInfo {
                id: tid.to_string(),
                kind: kind.as_str().into(),
                muted: false,
            },
        };
        self.broadcast(owner, &announce);
        for sub in subscribers {
            self.subscribe(now, sub, tid);
        }
    }

    /// Adds `track` to `receiver`'s subscriber leg (creating it) and renegotiates.
    pub(super) fn subscribe(&mut self, now: Instant, receiver: EndpointId, tid: TrackId) {
        let Some(leg_id) = self.subscriber_leg(now, receiver) else {
            return;
        };
        let Some(track) = self.core.track(tid) else {
            return;
        };
        let (kind, owner, out_ssrc) = (track.kind, track.owner, track.out_ssrc.0);
        let simulcast = self.sources.get(&tid).is_some_and(Source::is_simulcast);
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        if leg.senders.contains_key(&tid) {
            return;
        }
        let (codec_kind, codec, payload_type) = leg::send_codec(kind);
        let media = MediaStreamTrack::new(
            owner.to_string(),
            tid.to_string(),
            tid.to_string(),
            codec_kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(out_ssrc),
                    ..Default::default()
                },
                codec,
                ..Default::default()
            }],
        );
        // Every video copy goes through a rewriter, simulcast or not, so that every receiver's
        // stream is numbered the same way; a simulcast one gets its layer from the allocator.
        let rewriter = (kind == TrackKind::Video).then(|| {
            if simulcast {
                kaskade_sfu::Rewriter::new()
            } else {
                kaskade_sfu::Rewriter::single_layer()
            }
        });
        match leg.pc.add_track(media) {
            Ok(id) => {
                leg.senders.insert(
                    tid,
                    Sender {
                        id,
                        wrote: false,
                        out_ssrc,
                        payload_type,
                        audio_level_id: None,
                        resend: kaskade_sfu::ResendGuard::default(),
                        rewriter,
                        reported_loss: None,
                        stats: leg::SenderStats::default(),
                        clock_rate: match kind {
                            TrackKind::Audio => 48_000,
                            TrackKind::Video => 90_000,
                        },
                    },
                );
                leg.needs_offer = true;
                if let Some(src) = self.sources.get_mut(&tid) {
                    src.fanout.push(leg_id);
                }
                self.offer_if_needed(now, leg_id);
                if kind == TrackKind::Video {
                    self.allocate_for(now, receiver);
                }
            }
            Err(e) => {
                warn!(endpoint = %receiver, track = %tid, error = %e, "cannot add track to subscriber leg")
            }
        }
    }

    pub(super) fn subscriber_leg(&mut self, now: Instant, ep: EndpointId) -> Option<LegId> {
        let existing = self.peers.get(&ep)?.subscriber;
        if existing.is_some() {
            return existing;
        }
        let leg_id = match self.new_leg(now, ep, Role::Subscriber) {
            Ok(l) => l,
            Err(e) => {
                let (code, reason) = e.code_and_reason();
                self.fail(now, ep, code, &reason);
                return None;
            }
        };
        if let Some(p) = self.peers.get_mut(&ep) {
            p.subscriber = Some(leg_id);
        }
        Some(leg_id)
    }

    pub(super) fn offer_if_needed(&mut self, now: Instant, leg_id: LegId) {
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        if leg.awaiting_answer || !leg.needs_offer {
            return;
        }
        let owner = leg.owner;
        let sdp = leg
            .pc
            .create_offer(None)
            .and_then(|o| {
                let sdp = o.sdp.clone();
                leg.pc.set_local_description(now, o).map(|_| sdp)
            })
            .map_err(|e| e.to_string());
        match sdp {
            Ok(sdp) => {
                leg.awaiting_answer = true;
                leg.needs_offer = false;
                self.mark(leg_id);
                self.send_to(
                    owner,
                    ServerMsg::Offer {
                        target: Target::Subscriber,
                        sdp,
                    },
                );
            }
            Err(e) => self.fail(
                now,
                owner,
                ErrorCode::Internal,
                &format!("creating subscriber offer: {e}"),
            ),
        }
    }

    pub(super) fn unpublish(&mut self, now: Instant, tid: TrackId) {
        let Some(track) = self.core.unpublish(tid) else {
            return;
        };
        info!(track = %tid, endpoint = %track.owner, "track unpublished");
        if track.kind == TrackKind::Audio
            && let Some(conference) = self.core.conference_of(track.owner).map(|c| c.id)
        {
            self.speaker_removed(now, conference, track.owner);
        }
        self.teardown_source(now, tid, track.owner, track.out_ssrc);
    }

    pub(super) fn teardown_source(
        &mut self,
        now: Instant,
        tid: TrackId,
        owner: EndpointId,
        out_ssrc: Ssrc,
    ) {
        self.keyframes.forget_source(tid);
        self.switch_keyframes.forget_source(tid);
        self.by_out_ssrc.remove(&out_ssrc.0);
        self.demand.remove_source(tid);
        if let Some(src) = self.sources.remove(&tid) {
            for l in &src.layers {
                self.by_out_ssrc.remove(&l.octo_ssrc);
            }
            match src.origin {
                Origin::Local { .. } => {
                    self.by_ssrc.retain(|_, (t, _)| *t != tid);
                    if let Some(o) = self.octo.as_mut() {
                        let octo_ssrcs = src.layers.iter().map(|l| l.octo_ssrc);
                        o.track_ended(now, None, tid, octo_ssrcs.chain([out_ssrc.0]));
                    }
                }
                Origin::Remote { bridge } => {
                    if let Some(o) = self.octo.as_mut() {
                        for l in &src.layers {
                            o.by_ssrc.remove(&(bridge, l.ssrc));
                        }
                        o.track_ended(now, Some(bridge), tid, src.layers.iter().map(|l| l.ssrc));
                    }
                }
            }
            for sub in src.fanout {
                let Some(leg) = self.leg_mut(sub) else {
                    continue;
                };
                if let Some(sender) = leg.senders.remove(&tid) {
                    leg.bandwidth.forget_ssrc(sender.out_ssrc);
                    let r = if sender.wrote {
                        leg.pc.remove_track(sender.id)
                    } else {
                        // A receiver that never got a packet of this track does not take the
                        // next track `rtc` would put on the same transceiver (its stream was
                        // never bound): retire the transceiver, so the next one gets a new one.
                        let t = rtc::rtp_transceiver::RTCRtpTransceiverId::from(sender.id);
                        match leg.pc.rtp_transceiver(t) {
                            Some(mut t) => t.stop(),
                            None => Ok(()),
                        }
                    };
                    if let Err(e) = r {
                        debug!(error = %e, "removing a track from a subscriber leg failed");
                    }
                    leg.needs_offer = true;
                    self.offer_if_needed(now, sub);
                }
            }
        }
        self.broadcast(
            owner,
            &ServerMsg::TrackUnpublished {
                participant_id: owner.to_string(),
                track_id: tid.to_string(),
            },
        );
    }
}
