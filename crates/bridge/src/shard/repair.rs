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
//! End to end ([`RepairMode::EndToEnd`], for the benchmark only): no caches and no NACKs of
//! our own; a subscriber's NACK goes to the publisher (over Octo when it is remote) and its
//! retransmissions are relayed like originals.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kaskade_sfu::resend::rtt_from_report;
use kaskade_sfu::{NackTracker, SeqNo, TrackId, TrackKind};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use tracing::debug;

use super::{Origin, Role, Shard};
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
    pub(super) fn on_receiver_report(&mut self, leg_id: LegId, rr: &ReceiverReport) {
        let now_ntp = ntp_now();
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        for block in &rr.reports {
            if let Some(rtt) = rtt_from_report(now_ntp, block.last_sender_report, block.delay) {
                leg.rtt.update(rtt);
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
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        if leg.role != Role::Subscriber {
            return;
        }
        let Some(&tid) = self.by_out_ssrc.get(&nack.media_ssrc) else {
            return;
        };
        // Our copies keep the source's sequence numbers, so the receiver's space is the
        // source's space.
        let seqs: Vec<SeqNo> = nack
            .nacks
            .iter()
            .flat_map(|p| p.packet_list())
            .map(SeqNo)
            .collect();
        match self.limits.repair {
            RepairMode::PerHop => self.answer_nack(now, leg_id, tid, &seqs),
            RepairMode::EndToEnd => self.relay_nack_upstream(now, tid, &seqs),
        }
    }

    /// Resends what the cache has, at most once per RTT per packet and receiver; remembers
    /// what is still on its way here.
    fn answer_nack(&mut self, now: Instant, leg_id: LegId, tid: TrackId, seqs: &[SeqNo]) {
        let Some(src) = self.sources.get_mut(&tid) else {
            return;
        };
        let mut resend = Vec::new();
        for &seq in seqs {
            match src.cache.as_ref().and_then(|c| c.get(seq)) {
                Some(p) => resend.push(p.clone()),
                None if src.nack.as_ref().is_some_and(|n| n.is_missing(seq)) => {
                    self.metrics.repairs_waiting_upstream.inc();
                    if src.awaited.len() >= MAX_AWAITED {
                        src.awaited.pop_front();
                    }
                    if !src.awaited.contains(&seq) {
                        src.awaited.push_back(seq);
                    }
                }
                None => self.metrics.repair_client.cache_misses.inc(),
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
        let (out_ssrc, pt, sender_id) = (sender.out_ssrc, sender.payload_type, sender.id);
        let mut sent = 0u64;
        let mut bytes = 0u64;
        for mut p in resend {
            let seq = SeqNo(p.header.sequence_number);
            tracing::trace!(leg = leg_id.0, seq = seq.0, ?rtt, "resend requested");
            if !sender.resend.allow(now, seq, rtt) {
                self.metrics.retransmissions_suppressed.inc();
                continue;
            }
            p.header.ssrc = out_ssrc;
            p.header.payload_type = pt;
            let len = RTP_HEADER + p.payload.len() as u64;
            let Some(mut s) = leg.pc.rtp_sender(sender_id) else {
                return;
            };
            match s.write_rtp(now, p) {
                Ok(()) => {
                    sent += 1;
                    bytes += len;
                }
                Err(e) => debug!(leg = leg_id.0, error = %e, "resend refused"),
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
    pub(super) fn note_arrival(&mut self, tid: TrackId, seq: SeqNo) {
        let Some(src) = self.sources.get_mut(&tid) else {
            return;
        };
        if src.awaited.is_empty() {
            return;
        }
        if let Some(i) = src.awaited.iter().position(|s| *s == seq) {
            src.awaited.remove(i);
            self.metrics.repairs_answered_on_arrival.inc();
        }
    }

    /// End-to-end mode: a receiver's NACK goes to whoever holds the publisher.
    fn relay_nack_upstream(&mut self, now: Instant, tid: TrackId, seqs: &[SeqNo]) {
        let Some(src) = self.sources.get(&tid) else {
            return;
        };
        let raw: Vec<u16> = seqs.iter().map(|s| s.0).collect();
        match src.origin {
            Origin::Local {
                leg,
                receiver,
                in_ssrc,
            } => self.nack_publisher(now, leg, receiver, in_ssrc, &raw),
            Origin::Remote { bridge, ssrc } => {
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

    /// Every NACK tick: asks publishers for the video packets that did not arrive.
    pub(super) fn uplink_nack_tick(&mut self, now: Instant) {
        let mut requests = Vec::new();
        for src in self.sources.values_mut() {
            let Origin::Local {
                leg,
                receiver,
                in_ssrc,
            } = src.origin
            else {
                continue;
            };
            let Some(n) = src.nack.as_mut() else {
                continue;
            };
            // The uplink RTT is not measured (a publisher leg receives no media, so there is
            // no report to time); the 150 ms floor covers browsers on any sane uplink.
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
            if !seqs.is_empty() {
                requests.push((leg, receiver, in_ssrc, seqs));
            }
        }
        for (leg, receiver, ssrc, seqs) in requests {
            let raw: Vec<u16> = seqs.iter().map(|s| s.0).collect();
            self.nack_publisher(now, leg, receiver, ssrc, &raw);
        }
    }

    /// Drops the caches of streams silent for 15 s (a paused or stopped camera).
    pub(super) fn expire_caches(&mut self, now: Instant) {
        for src in self.sources.values_mut() {
            if let Some(c) = src.cache.as_mut()
                && c.is_idle(now, kaskade_sfu::cache::DEFAULT_IDLE)
            {
                c.clear();
            }
        }
    }
}

/// The repair state a new source starts with: a cache and a gap tracker for video when this
/// hop repairs, nothing end to end.
pub(super) fn repair_state(
    kind: TrackKind,
    mode: RepairMode,
) -> (
    Option<kaskade_sfu::PacketCache<rtc::rtp::Packet>>,
    Option<NackTracker>,
) {
    if kind != TrackKind::Video || mode == RepairMode::EndToEnd {
        return (None, None);
    }
    (
        Some(kaskade_sfu::PacketCache::new(
            kaskade_sfu::cache::DEFAULT_CAPACITY,
        )),
        Some(NackTracker::default()),
    )
}
