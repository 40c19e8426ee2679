//! Loss repair on client legs (DESIGN.md section 6, issue 4).
//!
//! Per hop, which is the default:
//! - uplink: gaps in a publisher's video are NACKed toward it (our [`NackTracker`], Jitsi's
//!   timing), and its resends arrive on the media SSRC (no RTX is negotiated: Chrome's
//!   rid-simulcast RTX carries only RRID, which `rtc` cannot bind);
//! - downlink: a subscriber's NACK is answered from this bridge's cache of the source, in the
//!   receiver's sequence space, at most once per receiver RTT; a NACK for a packet this bridge
//!   is itself still waiting for is remembered, and the packet goes out the moment its repair
//!   arrives (every local receiver gets it then, since none had it);
//! - NACKs are never forwarded.
//!
//! End to end ([`RepairMode::EndToEnd`], for the benchmark only): no bridge looks for gaps;
//! a subscriber's NACK travels to the source's origin bridge (over Octo when it is remote),
//! which stands in for the publisher: it resends from its cache what it received, and NACKs
//! the publisher for what it never got. (The publisher itself cannot answer for packets the
//! origin already has: without RTX its resend repeats an SRTP index that leg has seen, and
//! `rtc` keeps replay protection on whatever the window setting. Answering one hop early only
//! flatters the end-to-end figures.) Retransmissions are relayed like originals, duplicates
//! included.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kaskade_sfu::resend::rtt_from_report;
use kaskade_sfu::{NackTracker, SeqNo, TrackId, TrackKind};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use tracing::debug;

use kaskade_sfu::simulcast::{Layer, Mapping};

use super::{Origin, Role, Shard, simulcast};
use crate::config::RepairMode;
use crate::demux::LegId;

/// Receivers' NACKs remembered per source for packets still missing here. A handful covers a
/// burst; beyond it the receiver's next NACK (it repeats them) finds the packet in the cache.
const MAX_AWAITED: usize = 64;

/// RTP fixed header, for the byte counts (our copies carry no CSRC and, for video, no
/// extensions).
const RTP_HEADER: u64 = 12;

/// Now as a 64-bit NTP timestamp: `rtc` stamps its sender reports from the wall clock, so the
/// receiver reports that echo them are measured against it.
fn ntp_now() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() + 2_208_988_800;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

impl Shard {
    /// A subscriber leg's receiver report: its RTT, for the once-per-RTT resend rule.
    pub(super) fn on_receiver_report(&mut self, now: Instant, leg_id: LegId, rr: &ReceiverReport) {
        let now_ntp = ntp_now();
        let Some(leg) = self
            .legs
            .get_mut(leg_id.0 as usize)
            .and_then(|l| l.as_mut())
        else {
            return;
        };
        let subscriber = leg.role == Role::Subscriber;
        for block in &rr.reports {
            if let Some(rtt) = rtt_from_report(now_ntp, block.last_sender_report, block.delay) {
                leg.rtt.update(rtt);
            }
            if subscriber
                && let Some((tid, _)) = self.by_out_ssrc.get(&block.ssrc)
                && let Some(s) = leg.senders.get_mut(tid)
            {
                s.reported_loss = Some((block.fraction_lost, block.total_lost));
            }
            // The loss of the video this leg receives drives its bandwidth estimate.
            if subscriber
                && let Some((tid, _)) = self.by_out_ssrc.get(&block.ssrc)
                && leg.senders.get(tid).is_some_and(|s| s.rewriter.is_some())
            {
                leg.bandwidth.on_report_block(
                    now,
                    block.ssrc,
                    block.last_sequence_number,
                    block.total_lost,
                );
            }
        }
    }

    /// A NACK from a leg: a subscriber's for a track it receives.
    pub(super) fn on_receiver_nack(
        &mut self,
        now: Instant,
        leg_id: LegId,
        nack: &TransportLayerNack,
    ) {
        self.metrics.repair_client.nacks_received.inc();
        let Some(leg) = self.legs.get(leg_id.0 as usize).and_then(|l| l.as_ref()) else {
            return;
        };
        if leg.role != Role::Subscriber {
            return;
        }
        let Some(&(tid, _)) = self.by_out_ssrc.get(&nack.media_ssrc) else {
            return;
        };
        let Some(sender) = leg.senders.get(&tid) else {
            return;
        };
        // Video is renumbered per receiver: its rewriter maps each requested sequence number
        // back to the layer and source sequence number it was, and how it was rewritten.
        // Audio keeps the source's numbers.
        let wanted: Vec<(SeqNo, Layer, SeqNo, Option<Mapping>)> = nack
            .nacks
            .iter()
            .flat_map(|p| p.packet_list())
            .filter_map(|out| {
                let out = SeqNo(out);
                match sender.rewriter.as_ref() {
                    Some(rw) => match rw.retransmission(out) {
                        Some(r) => Some((out, r.layer, r.seq, Some(r.mapping))),
                        None => {
                            self.metrics.repair_client.cache_misses.inc();
                            None
                        }
                    },
                    None => Some((out, Layer::BASE, out, None)),
                }
            })
            .collect();
        let remote = self
            .sources
            .get(&tid)
            .is_some_and(|s| matches!(s.origin, Origin::Remote { .. }));
        match self.limits.repair {
            RepairMode::PerHop => self.answer_nack(now, leg_id, tid, &wanted),
            // The origin bridge stands in for the publisher (module docs).
            RepairMode::EndToEnd if !remote => self.answer_nack(now, leg_id, tid, &wanted),
            RepairMode::EndToEnd => {
                for layer in Layer::all() {
                    let seqs: Vec<SeqNo> = wanted
                        .iter()
                        .filter(|w| w.1 == layer)
                        .map(|w| w.2)
                        .collect();
                    if !seqs.is_empty() {
                        self.relay_nack_upstream(now, tid, layer, &seqs);
                    }
                }
            }
        }
    }

    /// Resends what the cache has, at most once per RTT per packet and receiver; remembers
    /// what is still on its way here. `wanted`: (receiver's sequence number, layer, source
    /// sequence number, the rewrite it got).
    fn answer_nack(
        &mut self,
        now: Instant,
        leg_id: LegId,
        tid: TrackId,
        wanted: &[(SeqNo, Layer, SeqNo, Option<Mapping>)],
    ) {
        let Some(src) = self.sources.get_mut(&tid) else {
            return;
        };
        let mut resend = Vec::new();
        let mut upstream: Vec<(Layer, SeqNo)> = Vec::new();
        let end_to_end = self.limits.repair == RepairMode::EndToEnd;
        for &(out, layer, seq, mapping) in wanted {
            let Some(lin) = src.layers.get_mut(layer.index()) else {
                continue;
            };
            match lin.cache.as_ref().and_then(|c| c.get(seq)) {
                Some(p) => {
                    let p = match mapping {
                        // Exactly as first sent: the same mapping on the same original.
                        Some(m) => {
                            let sp = simulcast::source_packet(layer, p);
                            simulcast::rewritten_packet(p, &sp, &m.apply(&sp), &mut None)
                        }
                        None => p.clone(),
                    };
                    resend.push((out, p));
                }
                None if end_to_end => upstream.push((layer, seq)),
                None if lin.nack.as_ref().is_some_and(|n| n.is_missing(seq)) => {
                    self.metrics.repairs_waiting_upstream.inc();
                    if lin.awaited.len() >= MAX_AWAITED {
                        lin.awaited.pop_front();
                    }
                    if !lin.awaited.contains(&seq) {
                        lin.awaited.push_back(seq);
                    }
                }
                None => self.metrics.repair_client.cache_misses.inc(),
            }
        }
        for layer in Layer::all() {
            let seqs: Vec<SeqNo> = upstream
                .iter()
                .filter(|(l, _)| *l == layer)
                .map(|(_, s)| *s)
                .collect();
            if !seqs.is_empty() {
                self.relay_nack_upstream(now, tid, layer, &seqs);
            }
        }
        if resend.is_empty() {
            return;
        }
        let Some(leg) = self
            .legs
            .get_mut(leg_id.0 as usize)
            .and_then(|l| l.as_mut())
        else {
            return;
        };
        let rtt = leg.rtt.get();
        let Some(sender) = leg.senders.get_mut(&tid) else {
            return;
        };
        let (out_ssrc, pt) = (sender.out_ssrc, sender.payload_type);
        let mut sent = 0u64;
        let mut bytes = 0u64;
        for (seq, mut p) in resend {
            tracing::trace!(leg = leg_id.0, seq = seq.0, ?rtt, "resend requested");
            let allowed = leg
                .senders
                .get_mut(&tid)
                .is_some_and(|s| s.resend.allow(now, seq, rtt));
            if !allowed {
                self.metrics.retransmissions_suppressed.inc();
                continue;
            }
            p.header.ssrc = out_ssrc;
            p.header.payload_type = pt;
            let len = RTP_HEADER + p.payload.len() as u64;
            let copy = super::egress::write_copy(
                now,
                leg_id,
                leg,
                tid,
                p,
                super::egress::Tx {
                    out: &mut self.out,
                    demux: &mut self.demux,
                    metrics: &self.metrics,
                },
            );
            if copy != super::egress::Copy::Refused {
                sent += 1;
                bytes += len;
            }
        }
        if sent > 0 {
            self.metrics.repair_client.retransmissions.inc_by(sent);
            self.metrics.repair_client.retransmitted_bytes.inc_by(bytes);
            self.mark(leg_id);
        }
    }

    /// Called for every packet accepted on a source: was it one receivers asked for before it
    /// got here? It is being forwarded to them right now.
    pub(super) fn note_arrival(&mut self, tid: TrackId, layer: Layer, seq: SeqNo) {
        let Some(lin) = self
            .sources
            .get_mut(&tid)
            .and_then(|s| s.layers.get_mut(layer.index()))
        else {
            return;
        };
        if lin.awaited.is_empty() {
            return;
        }
        if let Some(i) = lin.awaited.iter().position(|s| *s == seq) {
            lin.awaited.remove(i);
            self.metrics.repairs_answered_on_arrival.inc();
        }
    }

    /// End-to-end mode: a receiver's NACK goes to whoever holds the publisher.
    fn relay_nack_upstream(&mut self, now: Instant, tid: TrackId, layer: Layer, seqs: &[SeqNo]) {
        let Some(src) = self.sources.get(&tid) else {
            return;
        };
        let Some(ssrc) = src.layers.get(layer.index()).map(|l| l.ssrc) else {
            return;
        };
        let raw: Vec<u16> = seqs.iter().map(|s| s.0).collect();
        match src.origin {
            Origin::Local { leg, receiver } => self.nack_publisher(now, leg, receiver, ssrc, &raw),
            Origin::Remote { bridge } => {
                let (conference, owner) = (src.conference, src.owner);
                self.octo_nack(bridge, conference, owner, ssrc, &raw);
            }
        }
    }

    /// Sends one NACK to a publisher leg for its stream `media_ssrc`.
    pub(super) fn nack_publisher(
        &mut self,
        now: Instant,
        leg_id: LegId,
        receiver: rtc::rtp_transceiver::RTCRtpReceiverId,
        media_ssrc: u32,
        seqs: &[u16],
    ) {
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        let Some(mut r) = leg.pc.rtp_receiver(receiver) else {
            return;
        };
        let nack = TransportLayerNack {
            sender_ssrc: 0,
            media_ssrc,
            nacks: nack_pairs_from_sequence_numbers(seqs),
        };
        match r.write_rtcp(now, vec![Box::new(nack)]) {
            Ok(()) => {
                self.metrics.repair_client.nacks_sent.inc();
                self.mark(leg_id);
            }
            Err(e) => debug!(leg = leg_id.0, error = %e, "sending NACK failed"),
        }
    }

    /// Every NACK tick: asks publishers for the video packets that did not arrive. True while
    /// some are still missing.
    pub(super) fn uplink_nack_tick(&mut self, now: Instant) -> bool {
        let mut busy = false;
        let mut requests = Vec::new();
        for src in self.sources.values_mut() {
            let Origin::Local { leg, receiver } = src.origin else {
                continue;
            };
            for lin in &mut src.layers {
                let Some(n) = lin.nack.as_mut() else {
                    continue;
                };
                // The uplink RTT is not measured (a publisher leg receives no media, so there
                // is no report to time); the 150 ms floor covers browsers on any sane uplink.
                let seqs = n.poll(now, Duration::ZERO);
                let outcome = n.take_outcome();
                self.metrics
                    .repair_client
                    .recovered
                    .inc_by(outcome.recovered);
                self.metrics
                    .repair_client
                    .lost_unrecovered
                    .inc_by(outcome.lost);
                busy |= n.pending() > 0;
                if !seqs.is_empty() {
                    requests.push((leg, receiver, lin.ssrc, seqs));
                }
            }
        }
        for (leg, receiver, ssrc, seqs) in requests {
            let raw: Vec<u16> = seqs.iter().map(|s| s.0).collect();
            self.nack_publisher(now, leg, receiver, ssrc, &raw);
        }
        busy
    }

    /// Drops the caches of streams silent for 15 s (a paused or stopped camera or layer).
    pub(super) fn expire_caches(&mut self, now: Instant) {
        for lin in self.sources.values_mut().flat_map(|s| s.layers.iter_mut()) {
            if let Some(c) = lin.cache.as_mut()
                && c.is_idle(now, kaskade_sfu::cache::DEFAULT_IDLE)
            {
                c.clear();
            }
        }
        self.size_caches();
    }

    /// Sizes each source's caches by the RTT of whoever may ask them for a resend: its
    /// receivers here, and the peer bridges of its conference when it originates here
    /// (`cache::age_for_rtt`: three round trips, 1 to 1.5 s). Memory that is media: a 2.5 Mbps
    /// publisher's 1.5 s is ~470 KB, its 1 s ~310 KB. While one of them is not measured yet,
    /// 1 s, libwebrtc's floor.
    fn size_caches(&mut self) {
        let octo = self.octo.as_ref();
        for src in self.sources.values_mut() {
            if !src.layers.iter().any(|l| l.cache.is_some()) {
                continue;
            }
            // The longest measured RTT; receivers not measured yet count as the floor.
            let local = src
                .fanout
                .iter()
                .filter_map(|l| self.legs.get(l.0 as usize).and_then(|l| l.as_ref()))
                .filter(|leg| leg.rtt.is_measured())
                .map(|leg| leg.rtt.get());
            let peers = octo
                .filter(|_| matches!(src.origin, Origin::Local { .. }))
                .and_then(|o| Some((o, o.conference_peers.get(&src.conference)?)))
                .into_iter()
                .flat_map(|(o, peers)| {
                    peers
                        .iter()
                        .filter_map(|p| o.peers.get(p).and_then(|p| p.measured_rtt()))
                });
            let rtt = local.chain(peers).max();
            let age = kaskade_sfu::cache::age_for_rtt(rtt);
            for c in src.layers.iter_mut().filter_map(|l| l.cache.as_mut()) {
                c.set_max_age(age);
            }
        }
    }
}

/// The repair state a new video source (or layer) starts with.
pub(super) fn repair_state(
    kind: TrackKind,
    mode: RepairMode,
) -> (
    Option<kaskade_sfu::PacketCache<rtc::rtp::Packet>>,
    Option<NackTracker>,
) {
    let cache = || {
        kaskade_sfu::PacketCache::new(kaskade_sfu::cache::DEFAULT_CAPACITY)
            .with_max_age(kaskade_sfu::cache::DEFAULT_MAX_AGE)
    };
    match (kind, mode) {
        (TrackKind::Audio, _) => (None, None),
        (TrackKind::Video, RepairMode::PerHop) => (Some(cache()), Some(NackTracker::default())),
        // End to end only the origin's cache answers (a remote source's goes unused), and no
        // bridge looks for gaps.
        (TrackKind::Video, RepairMode::EndToEnd) => (Some(cache()), None),
    }
}
impl Shard {
    /// Turns gaps into NACKs, toward publishers and origin bridges. True while there is more
    /// to do in later ticks: gaps still missing, remote frames open, resend copies queued.
    pub(super) fn nack_tick(&mut self, now: Instant) -> bool {
        if self.limits.repair == crate::config::RepairMode::PerHop {
            let uplink = self.uplink_nack_tick(now);
            let octo = self.octo_nack_tick(now);
            uplink || octo
        } else {
            false
        }
    }
}
