//! What arrives from peer bridges: Octo datagrams opened and checked, control messages
//! (announcements, layer demand, chat), remote media, NACKs and keyframe requests.

use super::*;

impl Shard {
    pub(in crate::shard) fn octo_drop(&self, reason: &str) {
        self.metrics.octo_dropped.with_label_values(&[reason]).inc();
    }

    /// Drops a packet from `sender` (`None`: feedback about one of ours) naming an SSRC no
    /// track here has: `track_ended` if one had it a moment ago, else `unknown_track`.
    fn drop_no_track(&self, now: Instant, sender: Option<BridgeId>, ssrc: u32) {
        let reason = self
            .octo
            .as_ref()
            .map_or("unknown_track", |o| o.no_track(now, sender, ssrc));
        self.octo_drop(reason);
    }

    /// One datagram from the Octo socket, received at `stamp`. On a node of several shards
    /// this is the gateway (shard 0): a packet of another shard's conference is handed to it
    /// once opened (shard/siblings.rs).
    pub(crate) fn on_octo_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &mut [u8],
        stamp: super::super::rxtime::Stamp,
    ) {
        let Some(octo) = self.octo.as_mut() else {
            return;
        };
        let (header, range) = match octo.opener.open_in_place(data) {
            Ok(r) => r,
            Err(e) => {
                let label = e.label();
                if e == OpenError::Auth
                    && octo
                        .last_auth_warning
                        .is_none_or(|t| now.saturating_duration_since(t) >= AUTH_WARNING_EVERY)
                {
                    // The usual cause is a cluster secret or suite that differs between
                    // bridges: the cascade silently never forms, so say it (rate-limited).
                    octo.last_auth_warning = Some(now);
                    warn!(%from, "Octo packets fail authentication: do all bridges share octo.secret and octo.suite?");
                } else {
                    debug!(%from, error = %e, "octo packet dropped");
                }
                self.octo_drop(label);
                return;
            }
        };
        let Some(peer) = octo.peers.get(&header.sender) else {
            self.octo_drop("unknown_sender");
            return;
        };
        peer.packets_in.inc();
        peer.bytes_in.inc_by(data.len() as u64);
        let Some(payload) = data.get(range) else {
            return;
        };
        if header.packet_type != PacketType::Control
            && let Some(siblings) = self.siblings.as_ref()
        {
            let targets = octo.shards_for(&header);
            let me = siblings.me();
            for shard in targets.iter().filter(|s| *s != me) {
                let h = super::super::siblings::Handoff::OctoIn {
                    header,
                    payload: payload.to_vec(),
                    stamp,
                };
                match siblings.send(shard, h) {
                    Ok(()) => self.metrics.handoffs_out.inc(),
                    Err(_) => self.octo_drop("handoff_full"),
                }
            }
            if !targets.contains(me) {
                return;
            }
        }
        self.on_octo_packet(now, header, payload);
    }

    /// An opened Octo packet of one of this shard's conferences (or a link's control).
    pub(in crate::shard) fn on_octo_packet(
        &mut self,
        now: Instant,
        header: kaskade_octo::Header,
        payload: &[u8],
    ) {
        let sender = header.sender;
        let conference = ConferenceId(header.conference.0);
        let endpoint = EndpointId(header.endpoint.0);
        match header.packet_type {
            PacketType::Control => self.on_octo_control(now, sender, payload),
            PacketType::Message => match serde_json::from_slice::<OctoMessage>(payload) {
                Ok(m) => self.on_octo_message(now, sender, conference, endpoint, m),
                Err(e) => {
                    debug!(error = %e, "octo message does not parse");
                    self.octo_drop("bad_message");
                }
            },
            PacketType::Rtp => {
                let mut buf = payload;
                match rtc::rtp::Packet::unmarshal(&mut buf) {
                    Ok(p) => self.on_octo_rtp(now, sender, conference, p),
                    Err(_) => self.octo_drop("bad_rtp"),
                }
            }
            PacketType::Rtcp => {
                let mut buf = payload;
                match rtc::rtcp::packet::unmarshal(&mut buf) {
                    Ok(packets) => {
                        for p in packets {
                            if let Some(nack) = p
                                .as_any()
                                .downcast_ref::<rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack>()
                            {
                                self.on_octo_nack(now, sender, nack);
                                continue;
                            }
                            if let Some(pli) = p
                                .as_any()
                                .downcast_ref::<rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
                            {
                                self.on_octo_keyframe_request(now, sender, pli.media_ssrc);
                            }
                        }
                    }
                    Err(_) => self.octo_drop("bad_rtcp"),
                }
            }
        }
    }

    pub(in crate::shard) fn on_octo_control(
        &mut self,
        now: Instant,
        sender: BridgeId,
        payload: &[u8],
    ) {
        let Some(octo) = self.octo.as_mut() else {
            return;
        };
        match Control::decode(payload) {
            Ok(Control::Ping { token }) => {
                let (bytes, len) = Control::Pong {
                    token,
                    hold_micros: 0,
                }
                .to_bytes();
                if let Some(b) = bytes.get(..len) {
                    octo.send(sender, &PacketMeta::control(), b);
                }
            }
            Ok(Control::Pong { token, hold_micros }) => {
                let sent = octo.epoch + Duration::from_micros(token);
                let rtt = now
                    .saturating_duration_since(sent)
                    .saturating_sub(Duration::from_micros(u64::from(hold_micros)));
                if let Some(p) = octo.peers.get(&sender) {
                    p.rtt.set(rtt.as_secs_f64());
                }
            }
            Err(_) => self.octo_drop("bad_control"),
        }
    }

    /// Whether `conference` and `room` pair differently from a conference hosted here or a
    /// remote participant already known.
    pub(in crate::shard) fn room_conflict(&self, conference: ConferenceId, room: &str) -> bool {
        let local = self
            .core
            .iter()
            .any(|c| (c.id == conference) != (c.name == room));
        local
            || self.octo.as_ref().is_some_and(|o| {
                o.remote
                    .values()
                    .any(|r| (r.conference == conference) != (r.room == room))
            })
    }

    pub(in crate::shard) fn on_octo_message(
        &mut self,
        now: Instant,
        sender: BridgeId,
        conference: ConferenceId,
        endpoint: EndpointId,
        m: OctoMessage,
    ) {
        match m {
            OctoMessage::Participant { room, name, tracks } => {
                // One id, one room: an announcement that pairs them differently from what
                // this bridge hosts or has heard is refused, so two rooms are never mixed
                // (a directory handing out ids twice, or hashed ids colliding).
                if self.room_conflict(conference, &room) {
                    self.octo_drop("conference_mismatch");
                    return;
                }
                if self.core.participant(endpoint).is_some_and(|p| !p.remote) {
                    // Another bridge claims one of our own ids: never let it touch (or, by
                    // expiring, remove) a participant we host.
                    self.octo_drop("endpoint_conflict");
                    return;
                }
                let Some(octo) = self.octo.as_mut() else {
                    return;
                };
                match octo.remote.get_mut(&endpoint) {
                    Some(r) if r.bridge != sender => {
                        self.octo_drop("endpoint_conflict");
                        return;
                    }
                    Some(r) => {
                        r.last_seen = now;
                        r.name = name;
                        r.tracks = tracks;
                    }
                    None => {
                        octo.remote.insert(
                            endpoint,
                            RemoteParticipant {
                                bridge: sender,
                                conference,
                                room,
                                name,
                                tracks,
                                last_seen: now,
                            },
                        );
                        octo.recompute_peers(conference);
                    }
                }
                self.sync_remote(now, endpoint);
            }
            OctoMessage::Bye => {
                if self
                    .octo
                    .as_ref()
                    .and_then(|o| o.remote.get(&endpoint))
                    .is_some_and(|r| r.bridge == sender)
                {
                    self.remove_remote(now, endpoint);
                }
            }
            OctoMessage::LayerDemand { tracks, shard } => {
                for d in tracks.iter().take(MAX_DEMAND_ENTRIES) {
                    let Some(tid) = TrackId::parse(&d.id) else {
                        self.octo_drop("bad_message");
                        continue;
                    };
                    let layer = d.max_layer.and_then(Layer::new);
                    if d.max_layer.is_some() && layer.is_none() {
                        self.octo_drop("bad_message");
                        continue;
                    }
                    // Only for tracks this bridge is the origin of.
                    let from = DemandFrom {
                        bridge: sender,
                        shard: shard.unwrap_or(0),
                    };
                    match self.sources.get_mut(&tid) {
                        Some(src) if matches!(src.origin, Origin::Local { .. }) => {
                            debug!(track = %tid, peer = sender.0, ?layer, "layer demand");
                            src.demand.on_request(now, from, layer);
                        }
                        // Every shard of a spread conference hears a peer's demand for the
                        // node's tracks: the others' are theirs to serve.
                        _ if self.octo.as_ref().is_some_and(|o| o.is_spread(conference)) => {}
                        _ => {
                            debug!(track = %tid, peer = sender.0, "layer demand for no track of ours");
                            let reason = self
                                .octo
                                .as_ref()
                                .map_or("unknown_track", |o| o.no_demanded_track(now, tid));
                            self.octo_drop(reason)
                        }
                    }
                }
            }
            OctoMessage::Chat { name, text } => {
                if self.core.get(conference).is_none() {
                    self.octo_drop("unknown_conference");
                    return;
                }
                let text: String = text.chars().take(MAX_CHAT_CHARS).collect();
                // From the peer bridge itself: the admin API's message to the conference.
                let from = if endpoint.0 == kaskade_octo::EndpointId::BRIDGE.0 {
                    crate::shard::admin::SERVER_SENDER.to_owned()
                } else {
                    endpoint.to_string()
                };
                self.tell_locals(conference, &ServerMsg::Message { from, name, text });
            }
        }
    }

    /// RTP from another bridge: forwarded to local legs only.
    pub(in crate::shard) fn on_octo_rtp(
        &mut self,
        now: Instant,
        sender: BridgeId,
        conference: ConferenceId,
        packet: rtc::rtp::Packet,
    ) {
        let Some(octo) = self.octo.as_ref() else {
            return;
        };
        let Some((tid, layer)) = octo.by_ssrc.get(&(sender, packet.header.ssrc)).copied() else {
            // A shard that has just joined a conference's span gets a peer's media for it
            // before that peer's next announcement (at most a second later) says what it is.
            let unheard = octo.is_spread(conference)
                && !octo
                    .remote
                    .values()
                    .any(|r| r.bridge == sender && r.conference == conference);
            debug!(peer = sender.0, ssrc = packet.header.ssrc, %conference, unheard, "Octo RTP of no known track");
            if unheard {
                self.octo_drop("not_announced");
            } else {
                self.drop_no_track(now, Some(sender), packet.header.ssrc);
            }
            return;
        };
        self.route(now, tid, layer, packet);
    }

    /// A peer lost packets of a track published here: resend them from the cache, flagged as
    /// retransmissions, to that peer only.
    pub(in crate::shard) fn on_octo_nack(
        &mut self,
        now: Instant,
        sender: BridgeId,
        nack: &rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack,
    ) {
        self.metrics.repair_octo.nacks_received.inc();
        let Some(&(tid, layer)) = self.by_out_ssrc.get(&nack.media_ssrc) else {
            debug!(
                peer = sender.0,
                ssrc = nack.media_ssrc,
                "Octo NACK for no track of ours"
            );
            self.drop_no_track(now, None, nack.media_ssrc);
            return;
        };
        let Some(src) = self.sources.get(&tid) else {
            return;
        };
        let Some(lin) = src.layers.get(layer.index()) else {
            return;
        };
        let (conference, owner, kind) = (src.conference, src.owner, src.kind);
        let mut resend = Vec::new();
        let mut upstream = Vec::new();
        for pair in &nack.nacks {
            for seq in pair.packet_list() {
                match lin.cache.as_ref().and_then(|c| c.get(SeqNo(seq))) {
                    Some(p) => resend.push(p.clone()),
                    None => {
                        self.metrics.repair_octo.cache_misses.inc();
                        upstream.push(seq);
                    }
                }
            }
        }
        // End to end, what the origin never got is the publisher's to resend.
        if self.limits.repair == RepairMode::EndToEnd
            && !upstream.is_empty()
            && let Origin::Local { leg, receiver } = src.origin
        {
            let ssrc = lin.ssrc;
            self.nack_publisher(now, leg, receiver, ssrc, &upstream);
        }
        let Some(octo) = self.octo.as_mut() else {
            return;
        };
        // However short the link, the guard must outlast the NACK copy's delay.
        let rtt = octo
            .peers
            .get(&sender)
            .map(|p| Duration::from_secs_f64(p.rtt.get().max(0.0)))
            .filter(|r| !r.is_zero())
            .unwrap_or(kaskade_sfu::resend::DEFAULT_RTT)
            .max(NACK_COPY_AFTER * 5 / 2);
        let guard = octo
            .resend_guards
            .entry((sender, nack.media_ssrc))
            .or_default();
        let before = resend.len();
        resend.retain(|p| guard.allow(now, SeqNo(p.header.sequence_number), rtt));
        self.metrics
            .retransmissions_suppressed
            .inc_by((before - resend.len()) as u64);
        let meta = octo_meta(PacketType::Rtp, media_of(kind), conference, owner)
            .with_flags(kaskade_octo::Flags::RETRANSMISSION);
        // Between shards nothing is lost on the way: no copy.
        let copy_at = octo
            .repair_copy_after
            .filter(|_| self.limits.repair == RepairMode::PerHop)
            .filter(|_| spread::sibling_of(sender).is_none())
            .map(|d| now + d);
        let mut scratch = std::mem::take(&mut octo.scratch);
        for mut p in resend {
            p.header.ssrc = nack.media_ssrc;
            if let Ok(len) = p.marshal_to(&mut scratch)
                && let Some(bytes) = scratch.get(..len)
            {
                octo.send(sender, &meta, bytes);
                self.metrics.repair_octo.retransmissions.inc();
                self.metrics
                    .repair_octo
                    .retransmitted_bytes
                    .inc_by(len as u64);
                if let Some(due) = copy_at {
                    let mut rtp = octo.spare.pop().unwrap_or_default();
                    rtp.clear();
                    rtp.extend_from_slice(bytes);
                    octo.repair_copies.push_back(RepairCopy {
                        due,
                        peer: sender,
                        meta,
                        rtp,
                    });
                }
            }
        }
        octo.scratch = scratch;
        // The copies go out from the NACK tick, which may be idle.
        self.nack_wanted |= !octo.repair_copies.is_empty();
    }

    /// Another bridge's receivers want a keyframe of a track published here.
    pub(in crate::shard) fn on_octo_keyframe_request(
        &mut self,
        now: Instant,
        sender: BridgeId,
        ssrc: u32,
    ) {
        let Some(&(tid, layer)) = self.by_out_ssrc.get(&ssrc) else {
            debug!(
                peer = sender.0,
                ssrc, "Octo keyframe request for no track of ours"
            );
            self.drop_no_track(now, None, ssrc);
            return;
        };
        // The peer bridge's own throttles have already merged its receivers' requests and its
        // layer switches; here each (peer, layer) counts as one requester under the switch
        // throttle, whose per-layer budget a peer's switches and starts fit in (a receiver's
        // 3 per 10 s would hold a switch up for seconds).
        // A shard of this node (shard/cascade/spread.rs) gets its own slots, apart from the
        // bridge whose Octo id equals its index.
        let shard = u32::from(spread::sibling_of(sender).is_some());
        let requester = EndpointId(
            ((sender.0 & 0xff) << 24) | 0x00ff_0000 | (shard << 8) | layer.index() as u32,
        );
        let decision = self.switch_keyframes.request(now, requester, tid);
        if self.count_keyframe_decision(decision) {
            self.send_keyframe_request(now, tid, layer);
        }
    }
}
