//! What enters a shard from its media socket and its legs' timers: a datagram goes to its leg, a
//! touched leg is serviced (events, then media it decrypted, then its output).

use super::egress::take_writes;
use super::*;

/// Connectivity checks a subscriber leg holds until its answer: a browser's first round over
/// its candidates (one per pair, every ~50 ms) during a signaling round trip. Beyond this, a
/// client checking that hard before answering gets its checks dropped, as `rtc` would.
const EARLY_STUN: usize = 8;

impl Shard {
    /// A datagram from the media socket, received and read at `stamp`: RTP joins the
    /// forwarding-delay batch, observed after the next send pass. One for a leg of another
    /// shard is handed to it (shard/siblings.rs).
    pub(super) fn on_client_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        stamp: rxtime::Stamp,
        pending: &mut rxtime::Pending,
    ) {
        self.metrics.packets_in.inc();
        self.metrics.bytes_in.inc_by(data.len() as u64);
        let mut routed = self.demux.route(from, data);
        if routed.is_err()
            && let Some(siblings) = self.siblings.as_mut()
        {
            // Perhaps another shard's leg learned this address a moment ago, or one of ours
            // lost it to another shard: read the news first (an empty channel costs a load).
            siblings.read_notes(&mut self.demux);
            routed = self.demux.route(from, data);
        }
        match routed {
            Ok(leg_id) => self.on_routed(now, from, leg_id, data.into(), stamp, pending),
            Err(reason) => self.hand_off_or_drop(from, data, reason, stamp),
        }
    }

    /// What another shard passed us: a datagram of one of our legs, an opened Octo packet of
    /// one of our conferences, or (the gateway) an Octo packet to seal and send.
    pub(super) fn on_handed_off(
        &mut self,
        now: Instant,
        h: siblings::Handoff,
        pending: &mut rxtime::Pending,
    ) {
        // What the shards of a spread conference send each other is counted by its sender
        // (kaskade_shard_sibling_packets_total): hand-offs in and out keep matching.
        if !matches!(h, siblings::Handoff::Sibling { .. }) {
            self.metrics.handoffs_in.inc();
        }
        match h {
            siblings::Handoff::Client { from, data, stamp } => {
                match self.demux.route(from, &data) {
                    Ok(leg_id) => self.on_routed(now, from, leg_id, data, stamp, pending),
                    // Its leg closed meanwhile, or the sender lied: never handed on again.
                    Err(reason) => self.drop_datagram(reason),
                }
            }
            siblings::Handoff::OctoIn {
                header,
                payload,
                stamp,
            } => {
                if header.packet_type == kaskade_octo::PacketType::Rtp {
                    pending.push(rxtime::Input::Octo, stamp);
                }
                // Octo media is never relayed on (to other shards either): no stamp to pass.
                self.on_octo_packet(now, header, &payload);
            }
            siblings::Handoff::Heard {
                header,
                payload,
                at,
            } => self.on_heard(now, header, &payload, at),
            siblings::Handoff::OctoOut {
                peer,
                meta,
                payload,
            } => {
                if let Some(octo) = self.octo.as_mut() {
                    octo.seal(peer, &meta, &payload);
                }
            }
            siblings::Handoff::Sibling {
                from,
                meta,
                payload,
                stamp,
            } => {
                let header = meta.header(
                    cascade::spread::sibling_id(from),
                    kaskade_octo::LinkCounter(0),
                );
                // Timed from its arrival at the node; forwarded to our legs only, never on.
                if meta.packet_type == kaskade_octo::PacketType::Rtp
                    && let Some((input, stamp)) = stamp
                {
                    pending.push(input, stamp);
                }
                self.on_octo_packet(now, header, &payload);
            }
        }
    }

    /// The RTP datagram being forwarded now (where and when it entered the node), for the
    /// conference's other shards that forward it on.
    pub(super) fn forwarding(&mut self, stamp: Option<(rxtime::Input, rxtime::Stamp)>) {
        if let Some(s) = self.octo.as_mut().and_then(|o| o.spread.as_mut()) {
            s.stamp = stamp;
        }
    }

    fn on_routed(
        &mut self,
        now: Instant,
        from: SocketAddr,
        leg_id: LegId,
        data: BytesMut,
        stamp: rxtime::Stamp,
        pending: &mut rxtime::Pending,
    ) {
        let rtp = rxtime::is_client_rtp(&data);
        if rtp {
            pending.push(rxtime::Input::Client, stamp);
        }
        if let Some(leg_id) = self.feed(now, from, leg_id, data) {
            // Its media is forwarded now, not after the rest of the receive batch: a packet's
            // time in the bridge is its own fan-out (the copies are taken as they are written).
            // The leg stays marked, so the end of the batch services it again, cheaply.
            if rtp {
                self.forwarding(Some((rxtime::Input::Client, stamp)));
            }
            self.service(now, leg_id);
            self.forwarding(None);
        }
    }

    fn hand_off_or_drop(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        reason: DropReason,
        stamp: rxtime::Stamp,
    ) {
        let Some(siblings) = self.siblings.as_ref() else {
            return self.drop_datagram(reason);
        };
        match siblings.hand_off(from, data, reason, stamp) {
            Ok(_) => self.metrics.handoffs_out.inc(),
            Err(siblings::NotHanded::Nobody) => self.drop_datagram(reason),
            Err(siblings::NotHanded::Full) => self.drop_datagram(DropReason::HandoffFull),
        }
    }

    fn drop_datagram(&self, reason: DropReason) {
        self.metrics
            .udp_dropped
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Feeds one datagram to its leg (or drops and counts it), and marks the leg for service.
    pub fn on_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Option<LegId> {
        self.metrics.packets_in.inc();
        self.metrics.bytes_in.inc_by(data.len() as u64);
        match self.demux.route(from, data) {
            Ok(leg_id) => self.feed(now, from, leg_id, data.into()),
            Err(reason) => {
                self.drop_datagram(reason);
                None
            }
        }
    }

    /// Gives an attributed datagram to its leg, after the STUN limits, and marks the leg.
    fn feed(
        &mut self,
        now: Instant,
        from: SocketAddr,
        leg_id: LegId,
        data: BytesMut,
    ) -> Option<LegId> {
        // STUN is the one thing anyone can make a leg work on: limited before the leg sees it.
        let stun = data.first().is_some_and(|&b| b < 4);
        if stun && let Err(limit) = self.stun_guard.admit(now, from, leg_id) {
            self.drop_datagram(DropReason::StunRateLimited);
            self.metrics
                .limit_hits
                .with_label_values(&[limit.label()])
                .inc();
            return None;
        }
        let leg = self.leg_mut(leg_id)?;
        leg.last_rx = now;
        if stun && leg.role == Role::Subscriber && !leg.answered {
            if leg.early_stun.len() < EARLY_STUN {
                leg.early_stun.push((from, data));
                self.metrics.early_stun.inc();
            } else {
                self.drop_datagram(DropReason::EarlyStun);
            }
            return None;
        }
        self.read_into(now, from, leg_id, data);
        self.mark(leg_id);
        Some(leg_id)
    }

    /// Hands a datagram to its leg's `rtc` stack.
    pub(super) fn read_into(
        &mut self,
        now: Instant,
        from: SocketAddr,
        leg_id: LegId,
        data: BytesMut,
    ) {
        let local_addr = self.settings.advertised;
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        let r = leg.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: data,
        });
        if let Err(e) = r {
            self.metrics.leg_read_errors.inc();
            debug!(leg = leg_id.0, error = %e, "leg refused a datagram");
        }
    }

    /// Tells the other shards the addresses our legs learned and lost; before the answers
    /// that taught them leave, so the client's next datagram finds its way whichever shard's
    /// socket it reaches.
    pub(super) fn announce_addresses(&mut self) {
        if let Some(siblings) = self.siblings.as_ref()
            && self.demux.has_changes()
        {
            siblings.announce(&self.demux.take_changes());
        }
    }

    pub(super) fn on_timers(&mut self, now: Instant) {
        while let Some(&(t, leg_id)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            if let Some(leg) = self.leg_mut(leg_id) {
                leg.deadline = None;
                if let Err(e) = leg.pc.handle_timeout(now) {
                    debug!(leg = leg_id.0, error = %e, "leg timeout handling failed");
                }
                self.mark(leg_id);
            }
        }
    }

    pub(super) fn mark(&mut self, leg_id: LegId) {
        if let Some(leg) = self.leg_mut(leg_id)
            && !leg.queued
        {
            leg.queued = true;
            self.dirty.push(leg_id);
        }
    }

    /// Services every touched leg (see [`Shard::service`]) until none is left.
    pub(super) fn service_dirty(&mut self, now: Instant) {
        while let Some(leg_id) = self.dirty.pop() {
            if let Some(leg) = self.leg_mut(leg_id) {
                leg.queued = false;
            } else {
                continue;
            }
            self.service(now, leg_id);
        }
    }

    /// Services one leg: events, then application reads (which may touch other legs), then
    /// network writes, then its timer. Idempotent: a leg with nothing new costs a few polls.
    pub(super) fn service(&mut self, now: Instant, leg_id: LegId) {
        self.drain_events(now, leg_id);
        self.drain_reads(now, leg_id);
        let Some(leg) = self
            .legs
            .get_mut(leg_id.0 as usize)
            .and_then(|l| l.as_mut())
        else {
            return;
        };
        take_writes(leg_id, leg, &mut self.out, &mut self.demux);
        let next = leg.pc.poll_timeout();
        let prev = std::mem::replace(&mut leg.deadline, next);
        if prev != next {
            if let Some(p) = prev {
                self.timers.remove(&(p, leg_id));
            }
            if let Some(n) = next {
                self.timers.insert((n, leg_id));
            }
        }
    }

    pub(super) fn drain_events(&mut self, now: Instant, leg_id: LegId) {
        loop {
            let Some(leg) = self.leg_mut(leg_id) else {
                return;
            };
            let Some(ev) = leg.pc.poll_event() else {
                return;
            };
            let (owner, role) = (leg.owner, leg.role);
            match ev {
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init))
                    if role == Role::Publisher =>
                {
                    self.on_track_open(now, leg_id, owner, init);
                }
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track))
                    if role == Role::Publisher =>
                {
                    let tid = self
                        .leg_mut(leg_id)
                        .and_then(|l| l.published.remove(&track));
                    if let Some(tid) = tid {
                        self.unpublish(now, tid);
                    }
                }
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                    debug!(leg = leg_id.0, ?role, %state, "leg state");
                    match state {
                        RTCPeerConnectionState::Connected => {
                            if let Some(l) = self.leg_mut(leg_id) {
                                l.connected = true;
                            }
                            if role == Role::Subscriber {
                                self.request_keyframes_for(now, leg_id);
                            }
                        }
                        RTCPeerConnectionState::Failed => {
                            self.fail(now, owner, ErrorCode::MediaTimeout, "connection failed");
                            return;
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }

    pub(super) fn drain_reads(&mut self, now: Instant, leg_id: LegId) {
        loop {
            let Some(leg) = self.leg_mut(leg_id) else {
                return;
            };
            let Some(msg) = leg.pc.poll_read() else {
                return;
            };
            match msg.message {
                RTCMessage::RtpPacket(track, packet) => self.forward(now, leg_id, &track, packet),
                RTCMessage::RtcpPacket(_, packets) => {
                    for p in &packets {
                        let any = p.as_any();
                        if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                            self.on_keyframe_request(now, leg_id, pli.media_ssrc);
                        } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                            for e in &fir.fir {
                                self.on_keyframe_request(now, leg_id, e.ssrc);
                            }
                        } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                            self.on_receiver_nack(now, leg_id, nack);
                        } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                            self.on_receiver_report(now, leg_id, rr);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
