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
    if !demux.is_learned(&addr) {
        debug!(leg = leg_id.0, %addr, "learned address");
        demux.learn(leg_id, addr);
    }
    out.push((addr, w.message));
    true
}

impl Shard {
    pub(super) fn send_out(&mut self, socket: &UdpSocket, octo_socket: Option<&UdpSocket>) {
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
