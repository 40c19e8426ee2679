//! Keyframe policy: receivers' PLI/FIR and the bridge's own needs, throttled, turned into requests
//! toward the publisher leg or the origin bridge.

use super::*;

impl Shard {
    /// A receiver asked for a keyframe of the track it receives as `out_ssrc`: of the layer
    /// it is being sent (or switched to).
    pub(super) fn on_keyframe_request(&mut self, now: Instant, leg_id: LegId, out_ssrc: u32) {
        let Some(&(tid, _)) = self.by_out_ssrc.get(&out_ssrc) else {
            return;
        };
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        let receiver = leg.owner;
        let layer = leg
            .senders
            .get(&tid)
            .and_then(|s| s.rewriter.as_ref())
            .and_then(|rw| rw.target().or(rw.current()))
            .unwrap_or(Layer::BASE);
        self.request_keyframe(now, receiver, tid, layer);
    }

    /// Asks `tid`'s publisher for a keyframe of `layer` on behalf of `receiver`, through the
    /// throttle.
    pub(super) fn request_keyframe(
        &mut self,
        now: Instant,
        receiver: EndpointId,
        tid: TrackId,
        layer: Layer,
    ) {
        let decision = self.keyframes.request(now, receiver, tid);
        if self.count_keyframe_decision(decision) {
            self.send_keyframe_request(now, tid, layer);
        }
    }

    /// Counts a throttle decision; whether the request goes out.
    pub(super) fn count_keyframe_decision(&self, decision: KeyframeDecision) -> bool {
        let label = match decision {
            KeyframeDecision::Forward => "forwarded",
            KeyframeDecision::SuppressedReceiver => "suppressed_receiver",
            KeyframeDecision::SuppressedSource => "suppressed_source",
        };
        self.metrics
            .keyframe_requests
            .with_label_values(&[label])
            .inc();
        decision == KeyframeDecision::Forward
    }

    /// Asks `tid`'s publisher (or origin bridge) for a keyframe of `layer`, unthrottled.
    pub(super) fn send_keyframe_request(&mut self, now: Instant, tid: TrackId, layer: Layer) {
        let Some(src) = self.sources.get(&tid) else {
            return;
        };
        // A layer whose SSRC is not known yet: the base layer's stands in (browsers answer a
        // PLI on any layer with keyframes on all of them, or at least on that one).
        let media_ssrc = src
            .layers
            .get(layer.index())
            .map(|l| l.ssrc)
            .filter(|s| *s != 0)
            .or_else(|| src.layers.first().map(|l| l.ssrc))
            .unwrap_or(0);
        let (pub_leg, rid) = match src.origin {
            Origin::Local { leg, receiver } => (leg, receiver),
            Origin::Remote { bridge } => {
                // The origin bridge owns the publisher; it throttles again on its side.
                let (conference, owner) = (src.conference, src.owner);
                self.octo_keyframe_request(bridge, conference, owner, media_ssrc);
                return;
            }
        };
        let Some(leg) = self.leg_mut(pub_leg) else {
            return;
        };
        let Some(mut r) = leg.pc.rtp_receiver(rid) else {
            return;
        };
        // FIR and PLI both become PLI: every WebRTC publisher answers PLI.
        if let Err(e) = r.write_rtcp(
            now,
            vec![Box::new(PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            })],
        ) {
            debug!(error = %e, "sending PLI failed");
        }
        self.mark(pub_leg);
    }

    /// Asks for a keyframe of the layer `receiver` gets (or is switching to) of `tid`.
    pub(super) fn request_receiver_keyframe(
        &mut self,
        now: Instant,
        receiver: EndpointId,
        tid: TrackId,
    ) {
        let layer = self
            .peers
            .get(&receiver)
            .and_then(|p| p.subscriber)
            .and_then(|l| self.legs.get(l.0 as usize)?.as_ref())
            .and_then(|l| l.senders.get(&tid)?.rewriter.as_ref())
            .and_then(|rw| rw.target().or(rw.current()));
        if let Some(layer) = layer {
            self.request_keyframe(now, receiver, tid, layer);
        }
    }

    /// A subscriber leg just connected or renegotiated: its decoders need a keyframe of every
    /// video track, or they show nothing until the publisher's next natural one.
    pub(super) fn request_keyframes_for(&mut self, now: Instant, leg_id: LegId) {
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        let tracks: Vec<(TrackId, Option<Layer>)> = leg
            .senders
            .iter()
            .map(|(t, s)| (*t, s.rewriter.as_ref().and_then(|rw| rw.target())))
            .collect();
        // The stream starts like a layer switch: at a keyframe of the layer it gets.
        for (tid, layer) in tracks {
            if let Some(layer) = layer {
                self.request_layer_keyframe(now, tid, layer);
            }
        }
    }
}
