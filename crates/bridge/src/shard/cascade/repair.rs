//! Loss repair on Octo links: gaps in what peers send become NACKs to the origin bridge.

use super::*;

impl Shard {
    /// Asks origin bridges for the video packets that did not arrive (every NACK tick, and at
    /// once when a gap shows), probes open frames' tails and sends due resend copies. True
    /// while there is more to do: gaps missing, frames open, copies queued.
    pub(crate) fn octo_nack_tick(&mut self, now: Instant) -> bool {
        let Some(octo) = self.octo.as_mut() else {
            return false;
        };
        let (copies, copy_bytes) = octo.flush_repair_copies(now);
        self.metrics.octo_repair_copies.inc_by(copies);
        self.metrics
            .repair_octo
            .retransmitted_bytes
            .inc_by(copy_bytes);
        let mut busy = !octo.repair_copies.is_empty();
        let rtts: HashMap<BridgeId, Duration> = octo
            .peers
            .iter()
            .map(|(id, p)| (*id, Duration::from_secs_f64(p.rtt.get().max(0.0))))
            .collect();
        let mut requests = Vec::new();
        for src in self.sources.values_mut() {
            let Origin::Remote { bridge } = src.origin else {
                continue;
            };
            let rtt = rtts.get(&bridge).copied().unwrap_or_default();
            for lin in &mut src.layers {
                let Some(n) = lin.nack.as_mut() else {
                    continue;
                };
                let mut seqs = n.poll(now, rtt);
                // A NACK to another shard of this node cannot be lost: no copy.
                if spread::sibling_of(bridge).is_none() {
                    seqs.extend(n.poll_redundant(now, NACK_COPY_AFTER));
                }
                if let Some(tail) = n.poll_tail(now, TAIL_PROBE_AFTER) {
                    seqs.push(tail);
                    self.metrics.octo_tail_probes.inc();
                }
                busy |= n.pending() > 0 || n.frame_open();
                let outcome = n.take_outcome();
                self.metrics.repair_octo.recovered.inc_by(outcome.recovered);
                self.metrics
                    .repair_octo
                    .lost_unrecovered
                    .inc_by(outcome.lost);
                if !seqs.is_empty() {
                    requests.push((bridge, src.conference, src.owner, lin.ssrc, seqs));
                }
            }
        }
        for (bridge, conference, owner, ssrc, seqs) in requests {
            let raw: Vec<u16> = seqs.iter().map(|s| s.0).collect();
            self.octo_nack(bridge, conference, owner, ssrc, &raw);
        }
        busy
    }

    /// Sends one NACK for a remote track (Octo SSRC `ssrc`) to its origin bridge.
    pub(crate) fn octo_nack(
        &mut self,
        bridge: BridgeId,
        conference: ConferenceId,
        owner: EndpointId,
        ssrc: u32,
        seqs: &[u16],
    ) {
        let Some(octo) = self.octo.as_mut() else {
            return;
        };
        let nack = rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack {
            sender_ssrc: 0,
            media_ssrc: ssrc,
            nacks: rtc::rtcp::transport_feedbacks::transport_layer_nack::nack_pairs_from_sequence_numbers(seqs),
        };
        octo.send_rtcp(bridge, conference, owner, &nack);
        self.metrics.repair_octo.nacks_sent.inc();
    }
}
