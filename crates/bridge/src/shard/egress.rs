//! What leaves a shard: legs' encrypted output gathered after each pass, handed to the kernel in
//! batches (txbatch.rs), client and Octo sockets alike.

use super::*;

/// Moves what a leg has to send to `out`.
///
/// A lite leg writes only to addresses whose checks it answered (after MESSAGE-INTEGRITY
/// passed): that is when a 4-tuple becomes trustworthy, and is learned here.
pub(super) fn take_writes(
    leg_id: LegId,
    leg: &mut Leg,
    out: &mut Vec<(SocketAddr, BytesMut)>,
    demux: &mut Demux,
) {
    while take_write(leg_id, leg, out, demux) {}
}

/// Moves one datagram a leg has to send to `out`; false when it had none.
///
/// The routing path takes one right after each RTP write: the copy is on its way before the
/// next packet is forwarded, and `rtc`'s queues (one per pipeline stage and interceptor, each
/// keeping the capacity of the largest burst it ever held: ~125 KiB per subscriber leg at 720p
/// when a whole receive batch was written at once) never hold more than a packet. One poll,
/// not a drain to empty: an empty poll walks the whole pipeline too, and what else the write
/// produced (a sender report) is taken when the leg is serviced after the batch.
pub(super) fn take_write(
    leg_id: LegId,
    leg: &mut Leg,
    out: &mut Vec<(SocketAddr, BytesMut)>,
    demux: &mut Demux,
) -> bool {
    let Some(w) = leg.pc.poll_write() else {
        return false;
    };
    let addr = w.transport.peer_addr;
    if let Some(lean) = leg.lean.as_mut() {
        lean.on_rtc_datagram(addr);
    }
    if !demux.is_learned(&addr) {
        debug!(leg = leg_id.0, %addr, "learned address");
        demux.learn(leg_id, addr);
    }
    out.push((addr, w.message));
    true
}

/// Where copies go: the shard's output, its demux (addresses learned from what legs send) and
/// its counters.
pub(super) struct Tx<'a> {
    pub out: &'a mut Vec<(SocketAddr, BytesMut)>,
    pub demux: &'a mut Demux,
    pub metrics: &'a Metrics,
}

/// How a copy left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Copy {
    /// Encrypted by the leg's lean egress, queued in `out`.
    Lean,
    /// Written through `rtc`, its datagram queued in `out` (unless `rtc` holds it).
    Rtc,
    /// `rtc` refused it.
    Refused,
}

/// Sends one copy on a subscriber leg's sender for `tid`: on the lean path once verified,
/// else through `rtc`, whose first copies verify the lean path (leg/lean.rs). Forwarded media
/// and retransmissions both come here, so that one SRTP context encrypts a stream's every
/// packet once the leg is lean (its rollover counter follows the stream).
pub(super) fn write_copy(
    now: Instant,
    leg_id: LegId,
    leg: &mut Leg,
    tid: TrackId,
    p: rtc::rtp::Packet,
    tx: Tx<'_>,
) -> Copy {
    let Tx {
        out,
        demux,
        metrics,
    } = tx;
    let Some(sender) = leg.senders.get_mut(&tid) else {
        return Copy::Refused;
    };
    if let Some(lean) = leg.lean.as_mut() {
        if let Some(dgram) = lean.protect(&p) {
            sender.stats.on_sent(now, &p);
            sender.wrote = true;
            out.push(dgram);
            return Copy::Lean;
        }
        if let Some(outcome) = lean.take_rekeyed() {
            metrics
                .lean_egress_legs
                .with_label_values(&[outcome.label()])
                .inc();
        }
    }
    let probe = match leg.lean.as_mut().map(|l| l.begin_probe(&p)) {
        Some(Ok(probe)) => probe,
        Some(Err(outcome)) => {
            metrics
                .lean_egress_legs
                .with_label_values(&[outcome.label()])
                .inc();
            None
        }
        None => None,
    };
    let Some(mut s) = leg.pc.rtp_sender(sender.id) else {
        return Copy::Refused;
    };
    let stats_before = sender.stats;
    sender.stats.on_sent(now, &p);
    if let Err(e) = s.write_rtp(now, p) {
        sender.stats = stats_before;
        debug!(leg = leg_id.0, error = %e, "write_rtp refused");
        return Copy::Refused;
    }
    sender.wrote = true;
    match probe {
        Some(probe) => {
            // Everything the write produced, to find the packet among it.
            let start = out.len();
            take_writes(leg_id, leg, out, demux);
            let sent = out.get(start..).unwrap_or_default();
            if let Some(outcome) = leg.lean.as_mut().and_then(|l| l.end_probe(probe, sent)) {
                metrics
                    .lean_egress_legs
                    .with_label_values(&[outcome.label()])
                    .inc();
            }
        }
        None => {
            take_write(leg_id, leg, out, demux);
        }
    }
    Copy::Rtc
}

impl Shard {
    /// Writes a sender report for every stream of every connected subscriber leg that has
    /// sent media: RTT measurement (its receiver reports refer to them) and lip sync (the
    /// NTP/media time pair) need them, and `rtc` does not see the copies of the lean path.
    pub(super) fn sender_reports(&mut self, now: Instant) {
        let mut written = 0u64;
        for (i, slot) in self.legs.iter_mut().enumerate() {
            let Some(leg) = slot.as_mut() else {
                continue;
            };
            if leg.role != Role::Subscriber || !leg.connected {
                continue;
            }
            let mut any = false;
            for sender in leg.senders.values() {
                let Some(sr) = sender.stats.report(sender.out_ssrc, sender.clock_rate, now) else {
                    continue;
                };
                let Some(mut s) = leg.pc.rtp_sender(sender.id) else {
                    continue;
                };
                match s.write_rtcp(now, vec![Box::new(sr)]) {
                    Ok(()) => {
                        written += 1;
                        any = true;
                    }
                    Err(e) => debug!(leg = i, error = %e, "sender report refused"),
                }
            }
            if any && !leg.queued {
                leg.queued = true;
                self.dirty.push(LegId(i as u32));
            }
        }
        self.metrics.sender_reports.inc_by(written);
    }

    pub(super) fn send_out(&mut self, socket: &UdpSocket, octo_socket: Option<&UdpSocket>) {
        self.announce_addresses();
        if let (Some(octo), Some(sock)) = (self.octo.as_mut(), octo_socket) {
            let out = std::mem::take(&mut octo.out);
            let sent = txbatch::send_all(sock, &out);
            if sent.failed > 0 {
                self.metrics.send_errors.inc_by(sent.failed);
                debug!(failed = sent.failed, "Octo sends failed");
            }
            for (_, bytes) in out {
                octo.recycle(bytes);
            }
        }
        if !self.out.is_empty() {
            let sent = txbatch::send_all(socket, &self.out);
            self.out.clear();
            self.metrics.packets_out.inc_by(sent.packets);
            self.metrics.bytes_out.inc_by(sent.bytes);
            if sent.failed > 0 {
                self.metrics.send_errors.inc_by(sent.failed);
                debug!(failed = sent.failed, "media sends failed");
            }
        }
    }
}
