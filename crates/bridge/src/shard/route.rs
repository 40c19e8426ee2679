//! The per-packet path: a decrypted RTP packet from a publisher leg (or an Octo link) is checked,
//! cached, and copied to every receiver and peer bridge that should get it.

use super::egress::{Copy, Tx, write_copy};
use super::*;

impl Shard {
    /// Forwards one RTP packet from a publisher leg to every subscriber leg of its track.
    pub(super) fn forward(
        &mut self,
        now: Instant,
        leg_id: LegId,
        rtc_track: &str,
        packet: rtc::rtp::Packet,
    ) {
        let ssrc = packet.header.ssrc;
        let (tid, layer) = match self.by_ssrc.get(&(leg_id, ssrc)) {
            Some(t) => *t,
            None => {
                // Before OnTrack was seen for a new SSRC of a known track (re-offer). Only a
                // single-layer track can be attributed without it: a simulcast layer's rank
                // comes from its rid, which OnTrack carries.
                let known = self
                    .leg_mut(leg_id)
                    .and_then(|l| l.published.get(rtc_track).copied())
                    .filter(|t| self.sources.get(t).is_some_and(|s| !s.is_simulcast()));
                match known {
                    Some(t) => {
                        self.by_ssrc.insert((leg_id, ssrc), (t, Layer::BASE));
                        if let Some(l) = self.sources.get_mut(&t).and_then(|s| s.layers.first_mut())
                        {
                            l.ssrc = ssrc;
                        }
                        (t, Layer::BASE)
                    }
                    None => {
                        self.metrics.rtp_unroutable.inc();
                        return;
                    }
                }
            }
        };
        self.route(now, tid, layer, packet);
    }

    /// Forwards one RTP packet of `tid`'s `layer` (from a publisher leg or from Octo) to every
    /// local subscriber leg and, for a local track, to each peer bridge of its conference that
    /// needs the layer.
    pub(super) fn route(
        &mut self,
        now: Instant,
        tid: TrackId,
        layer: Layer,
        packet: rtc::rtp::Packet,
    ) {
        let Some(src) = self.sources.get_mut(&tid) else {
            self.metrics.rtp_unroutable.inc();
            return;
        };
        let layer_count = src.layers.len();
        let Some(lin) = src.layers.get_mut(layer.index()) else {
            self.metrics.rtp_unroutable.inc();
            return;
        };
        let seq = SeqNo(packet.header.sequence_number);
        // A repair: receivers that saw the gap may be NACKing it right now.
        let (filled, new_gap) = lin.nack.as_mut().map_or((false, false), |n| {
            let before = n.pending();
            let filled = n.on_video_packet(now, seq, packet.header.marker);
            (filled, n.pending() > before)
        });
        // Every millisecond before the first NACK is repair delay: ask at once, not at the
        // next tick (a packet that was only reordered costs one needless request).
        self.nack_due |= new_gap;
        // A remote frame still open may need a tail probe (octo_nack_tick).
        self.nack_wanted |= lin.nack.is_some()
            && !packet.header.marker
            && matches!(src.origin, Origin::Remote { .. });
        // End to end, a duplicate video packet is a publisher's retransmission for some
        // receiver downstream: it is relayed like the original (that is the cost measured).
        let repeat = !lin.dedupe.accept(seq);
        if repeat
            && (src.kind == TrackKind::Audio
                || self.limits.repair == crate::config::RepairMode::PerHop)
        {
            self.metrics.rtp_duplicates.inc();
            return;
        }
        // What the rewriters read of a video packet, parsed once for every receiver.
        let codec = (src.kind == TrackKind::Video).then(|| {
            let sp = simulcast::source_packet(layer, &packet);
            if sp.keyframe
                && let Some(h) = simulcast::vp8_keyframe_height(&packet.payload)
            {
                lin.height = h;
            }
            lin.meter.add(now, 12 + packet.payload.len());
            sp
        });
        self.note_arrival(tid, layer, seq);
        let Some(src) = self.sources.get_mut(&tid) else {
            return;
        };
        // Muted: still tracked above (gaps, cache), so repair works again at once on unmute.
        if src.muted {
            self.metrics.rtp_muted.inc();
            return;
        }
        // Only a one-byte level is copied (rtpext::audio_level): an empty element of the
        // two-byte form would not survive being re-sent in the one-byte form.
        let audio_level = src
            .audio_level_id
            .and_then(|id| crate::rtpext::audio_level(&packet.header, id));
        // Header extensions are per leg (ids differ, and `rtc` refuses ids not negotiated on
        // the sending leg); the ones a receiver needs are re-added with that leg's ids.
        let mut base = packet;
        crate::rtpext::strip_extensions(&mut base.header);
        let local_origin = matches!(src.origin, Origin::Local { .. });
        // Another shard's publisher: counted by that shard as local, not as another bridge's.
        let from_shard = matches!(src.origin, Origin::Remote { bridge }
            if super::cascade::spread::sibling_of(bridge).is_some());
        if src.kind == TrackKind::Audio
            && let Some(level) = audio_level.as_ref().and_then(|l| l.first().copied())
        {
            let (conference, owner) = (src.conference, src.owner);
            self.speaker_level(now, conference, owner, level);
        }
        // Peer bridges and the conference's other shards first: a shard that fans out the
        // same packet to its own receivers then works beside this one, not after it. Never
        // relay what came over Octo or from another shard: the full mesh stays loop-free.
        if local_origin {
            let sent = self.octo_forward(now, tid, layer, &base, audio_level.as_ref());
            if repeat {
                let r = &self.metrics.repair_octo;
                r.retransmissions.inc_by(sent);
                r.retransmitted_bytes
                    .inc_by(sent * (12 + base.payload.len() as u64));
            }
        }
        let Some(src) = self.sources.get_mut(&tid) else {
            return;
        };
        if local_origin {
            self.metrics.rtp_routed_local.inc();
        } else if !from_shard {
            self.metrics.rtp_routed_octo.inc();
        }
        let kind = src.kind;
        let fanout = std::mem::take(&mut src.fanout);
        let mut forwarded = 0u64;
        let mut lean = 0u64;
        let mut forwarded_bytes = 0u64;
        let mut shared_payload: simulcast::SharedPayload = None;
        for &sub in &fanout {
            let Some(leg) = self.legs.get_mut(sub.0 as usize).and_then(|l| l.as_mut()) else {
                continue;
            };
            if !leg.connected {
                continue;
            }
            let Some(sender) = leg.senders.get_mut(&tid) else {
                continue;
            };
            let mut p = match (sender.rewriter.as_mut(), codec.as_ref()) {
                (Some(rw), Some(sp)) => {
                    let before = rw.current();
                    match rw.rewrite(now, sp) {
                        Rewrite::Forward(r) => {
                            if r.switched
                                && let Some(before) = before
                            {
                                let m = &self.metrics.simulcast_switches;
                                if layer > before {
                                    m.up.inc();
                                } else if layer < before {
                                    m.down.inc();
                                }
                            }
                            simulcast::rewritten_packet(&base, sp, &r, &mut shared_payload)
                        }
                        Rewrite::Drop(_) => continue,
                    }
                }
                _ => base.clone(),
            };
            p.header.ssrc = sender.out_ssrc;
            p.header.payload_type = sender.payload_type;
            if filled {
                // Counts as this receiver's resend: a NACK it sent before this arrives is not
                // answered with a second copy within the RTT.
                sender
                    .resend
                    .allow(now, SeqNo(p.header.sequence_number), leg.rtt.get());
            }
            if let (Some(level), Some(id)) = (&audio_level, sender.audio_level_id) {
                crate::rtpext::add_audio_level(&mut p.header, id, level.clone());
            }
            let len = 12 + p.payload.len() as u64;
            match write_copy(
                now,
                sub,
                leg,
                tid,
                p,
                Tx {
                    out: &mut self.out,
                    demux: &mut self.demux,
                    metrics: &self.metrics,
                },
            ) {
                Copy::Refused => continue,
                Copy::Lean => lean += 1,
                Copy::Rtc => {
                    if !leg.queued {
                        leg.queued = true;
                        self.dirty.push(sub);
                    }
                }
            }
            forwarded += 1;
            forwarded_bytes += len;
            if kind == TrackKind::Video {
                leg.bandwidth.on_sent(now, len);
            }
        }
        self.metrics.rtp_forwarded.inc_by(forwarded);
        self.metrics.rtp_forwarded_lean.inc_by(lean);
        if kind == TrackKind::Video
            && let Some(c) = self
                .metrics
                .simulcast_forwarded_bytes
                .get(simulcast::layer_label(layer_count, layer))
        {
            c.inc_by(forwarded_bytes);
        }
        if repeat {
            let r = &self.metrics.repair_client;
            r.retransmissions.inc_by(forwarded);
            r.retransmitted_bytes
                .inc_by(forwarded * (12 + base.payload.len() as u64));
        }
        if let Some(src) = self.sources.get_mut(&tid) {
            src.fanout = fanout;
            if let Some(cache) = src
                .layers
                .get_mut(layer.index())
                .and_then(|l| l.cache.as_mut())
            {
                // The payload is reference-counted: caching shares it, it does not copy it.
                cache.insert(now, seq, base.clone());
            }
        }
    }
}
