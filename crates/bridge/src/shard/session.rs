//! Signaling commands: join, offers and answers, candidates, leave, chat, and the session's
//! events back to its WebSocket.

use super::*;

impl Shard {
    pub fn on_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Join {
                session,
                conference,
                room,
                identity,
                name,
                can_publish,
                can_subscribe,
                events,
                started,
            } => self.join(
                now,
                session,
                JoinRequest {
                    conference,
                    room: &room,
                    identity: &identity,
                    name: &name,
                    can_publish,
                    can_subscribe,
                    max_participants: self.limits.max_participants,
                },
                events,
                started,
            ),
            Command::Offer { session, sdp } => {
                if let Some(ep) = self.sessions.get(&session).copied() {
                    self.publisher_offer(now, ep, sdp);
                }
            }
            Command::Answer { session, sdp } => {
                if let Some(ep) = self.sessions.get(&session).copied() {
                    self.subscriber_answer(now, ep, sdp);
                }
            }
            Command::Candidate {
                session,
                target,
                candidate,
            } => {
                if let Some(ep) = self.sessions.get(&session).copied() {
                    self.remote_candidate(ep, target, candidate);
                }
            }
            Command::Leave { session } => {
                if let Some(ep) = self.sessions.get(&session).copied() {
                    self.leave(now, ep);
                }
            }
            Command::Chat { session, text } => {
                if let Some(ep) = self.sessions.get(&session).copied() {
                    self.chat(ep, text);
                }
            }
            Command::VideoConstraints {
                session,
                max_height,
                tracks,
            } => {
                if let Some(ep) = self.sessions.get(&session).copied() {
                    self.set_video_constraints(now, ep, max_height, tracks);
                }
            }
            Command::Snapshot { reply } => {
                let _ = reply.send(self.snapshot());
            }
            Command::Admin(req) => self.on_admin(now, req),
            Command::OctoPeers { peers } => {
                if let Some(octo) = self.octo.as_mut() {
                    octo.set_directory_peers(&peers, &self.metrics);
                }
            }
            Command::Span { conference, shards } => self.set_span(conference, shards),
        }
    }

    pub(super) fn join(
        &mut self,
        now: Instant,
        session: SessionId,
        req: JoinRequest<'_>,
        events: mpsc::UnboundedSender<ServerMsg>,
        started: Instant,
    ) {
        let mut joined = self.core.join(&req);
        if let Err(ConferenceError::IdentityInUse(old)) = joined {
            // The newest session of an identity wins (a reload, a second tab).
            self.fail(
                now,
                old,
                ErrorCode::Replaced,
                "the same identity joined from another session",
            );
            joined = self.core.join(&req);
        }
        let joined = match joined {
            Ok(j) => j,
            Err(ConferenceError::Full(n)) => {
                self.reject(
                    &events,
                    ErrorCode::RoomFull,
                    format!("the conference has {n} participants, the maximum"),
                );
                return;
            }
            Err(e) => {
                self.reject(&events, ErrorCode::Internal, e.to_string());
                return;
            }
        };
        let ep = joined.endpoint;
        // Participants other bridges announced before this conference existed here.
        self.materialize_remote(now, joined.conference);
        self.sessions.insert(session, ep);
        self.peers.insert(
            ep,
            Peer {
                session,
                events,
                publisher: None,
                subscriber: None,
                video: simulcast::ReceiverVideo::new(),
            },
        );
        let Some(conf) = self.core.get(joined.conference) else {
            return;
        };
        let me = self.participant_info(conf.id, ep);
        let others: Vec<ParticipantInfo> = conf
            .participants()
            .filter(|p| p.id != ep)
            .map(|p| self.participant_info(conf.id, p.id))
            .collect();
        let subscriptions: Vec<TrackId> = conf.subscriptions(ep).map(|t| t.id).collect();
        info!(endpoint = %ep, room = %conf.name, conference = %conf.id, identity = req.identity, "participant joined");
        self.send_to(
            ep,
            ServerMsg::Joined {
                room: conf.name.clone(),
                participant: me.clone(),
                participants: others,
                bridge: self.bridge.clone(),
            },
        );
        self.metrics
            .join_seconds
            .observe(now.saturating_duration_since(started).as_secs_f64());
        self.broadcast(ep, &ServerMsg::ParticipantJoined { participant: me });
        self.octo_announce(ep);
        // A newcomer hears the current dominant speaker at once, not at the next change.
        if let Some(dsi) = self.speakers.get(&joined.conference)
            && dsi.dominant().is_some()
        {
            let msg = ServerMsg::DominantSpeaker {
                participant_id: dsi.dominant().map(|e| e.to_string()),
                recent: dsi.recent_speakers().map(|e| e.to_string()).collect(),
            };
            self.send_to(ep, msg);
        }
        for tid in subscriptions {
            self.subscribe(now, ep, tid);
        }
    }

    pub(super) fn reject(
        &self,
        events: &mpsc::UnboundedSender<ServerMsg>,
        code: ErrorCode,
        reason: String,
    ) {
        self.metrics
            .signaling_errors
            .with_label_values(&[code.as_str()])
            .inc();
        let _ = events.send(ServerMsg::error(code, reason));
    }

    pub(super) fn publisher_offer(&mut self, now: Instant, ep: EndpointId, sdp: String) {
        let sections = sdp.lines().filter(|l| l.starts_with("m=")).count();
        if sections > self.limits.max_media_sections {
            self.fail(
                now,
                ep,
                ErrorCode::BadSdp,
                &format!(
                    "{sections} media sections, at most {} allowed",
                    self.limits.max_media_sections
                ),
            );
            return;
        }
        let rids = match simulcast::offered_rids(&sdp) {
            Ok(r) => r,
            Err(why) => {
                self.fail(now, ep, ErrorCode::BadSdp, &why);
                return;
            }
        };
        let leg_id = match self.peers.get(&ep).and_then(|p| p.publisher) {
            Some(l) => l,
            None => match self.new_leg(now, ep, Role::Publisher) {
                Ok(l) => {
                    if let Some(p) = self.peers.get_mut(&ep) {
                        p.publisher = Some(l);
                    }
                    l
                }
                Err(e) => {
                    let (code, reason) = e.code_and_reason();
                    self.fail(now, ep, code, &reason);
                    return;
                }
            },
        };
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        leg.rids = rids;
        let answer = RTCSessionDescription::offer(sdp)
            .and_then(|offer| leg.pc.set_remote_description(now, offer))
            .and_then(|_| leg.pc.create_answer(None))
            .and_then(|answer| {
                let sdp = answer.sdp.clone();
                leg.pc.set_local_description(now, answer).map(|_| sdp)
            });
        match answer {
            Ok(sdp) if accepts_no_media(&sdp) => self.fail(
                now,
                ep,
                ErrorCode::BadSdp,
                "the offer has no audio or video with a codec this bridge takes (Opus, VP8)",
            ),
            Ok(sdp) => {
                self.mark(leg_id);
                self.send_to(
                    ep,
                    ServerMsg::Answer {
                        target: Target::Publisher,
                        sdp,
                    },
                );
            }
            Err(e) => self.fail(
                now,
                ep,
                ErrorCode::BadSdp,
                &format!("publisher offer refused: {e}"),
            ),
        }
    }

    pub(super) fn subscriber_answer(&mut self, now: Instant, ep: EndpointId, sdp: String) {
        let Some(leg_id) = self.peers.get(&ep).and_then(|p| p.subscriber) else {
            self.fail(
                now,
                ep,
                ErrorCode::BadMessage,
                "no subscriber offer is waiting for an answer",
            );
            return;
        };
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        if !leg.awaiting_answer {
            self.fail(
                now,
                ep,
                ErrorCode::BadMessage,
                "no subscriber offer is waiting for an answer",
            );
            return;
        }
        let r = RTCSessionDescription::answer(sdp)
            .and_then(|answer| leg.pc.set_remote_description(now, answer));
        if let Err(e) = r {
            self.fail(
                now,
                ep,
                ErrorCode::BadSdp,
                &format!("subscriber answer refused: {e}"),
            );
            return;
        }
        leg.awaiting_answer = false;
        leg.answered = true;
        let early = std::mem::take(&mut leg.early_stun);
        // Now the extension ids of this leg are known.
        let ids: Vec<(TrackId, RTCRtpSenderId)> =
            leg.senders.iter().map(|(t, s)| (*t, s.id)).collect();
        for (tid, sid) in ids {
            let level_id = leg.pc.rtp_sender(sid).and_then(|mut s| {
                s.get_parameters()
                    .rtp_parameters
                    .header_extensions
                    .iter()
                    .find(|h| h.uri == AUDIO_LEVEL_URI)
                    .and_then(|h| u8::try_from(h.id).ok())
            });
            if let Some(s) = leg.senders.get_mut(&tid) {
                s.audio_level_id = level_id;
            }
        }
        let connected = leg.connected;
        // The checks that came too early are answered now, not at the client's next try.
        for (from, data) in early {
            self.read_into(now, from, leg_id, data);
        }
        self.mark(leg_id);
        if connected {
            self.request_keyframes_for(now, leg_id);
        }
        self.offer_if_needed(now, leg_id);
    }

    pub(super) fn remote_candidate(
        &mut self,
        ep: EndpointId,
        target: Target,
        c: Option<IceCandidate>,
    ) {
        let Some(peer) = self.peers.get(&ep) else {
            return;
        };
        let leg_id = match target {
            Target::Publisher => peer.publisher,
            Target::Subscriber => peer.subscriber,
        };
        // An ICE-lite bridge learns the client's addresses from its checks; candidates only
        // help `rtc` pair faster, so one that does not fit is reported and ignored.
        let (Some(leg_id), Some(c)) = (leg_id, c) else {
            return;
        };
        if c.candidate.is_empty() {
            return;
        }
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        if leg.pc.remote_description().is_none() {
            return;
        }
        let init = RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: c.username_fragment,
            ..Default::default()
        };
        if let Err(e) = leg.pc.add_remote_candidate(init) {
            self.send_error(
                ep,
                ErrorCode::BadCandidate,
                format!("candidate ignored: {e}"),
            );
        }
    }

    /// Removes a participant and everything it had.
    pub(super) fn leave(&mut self, now: Instant, ep: EndpointId) {
        let Some(peer) = self.peers.remove(&ep) else {
            return;
        };
        self.sessions.remove(&peer.session);
        for leg_id in [peer.publisher, peer.subscriber].into_iter().flatten() {
            self.close_leg(leg_id);
        }
        self.keyframes.forget_receiver(ep);
        self.demand.remove_receiver(ep);
        // Subscriber legs of others that carried this participant's tracks.
        for src in self.sources.values_mut() {
            src.fanout
                .retain(|l| Some(*l) != peer.subscriber && Some(*l) != peer.publisher);
        }
        // Unpublish first, while the participant is still a member, so the others hear
        // track_unpublished before participant_left.
        let tracks = self
            .core
            .participant(ep)
            .map(|p| p.tracks.clone())
            .unwrap_or_default();
        for t in tracks {
            self.unpublish(now, t);
        }
        if let Some(conf) = self.core.conference_of(ep).map(|c| c.id) {
            self.octo_bye(conf, ep);
        }
        let Some(left) = self.core.leave(ep) else {
            return;
        };
        info!(endpoint = %ep, conference = %left.conference, identity = %left.participant.identity, "participant left");
        for (_, tracks) in &left.dropped_remote {
            for t in tracks {
                self.teardown_source(now, t.id, t.owner, t.out_ssrc);
            }
        }
        if let Some(conf) = self.core.get(left.conference) {
            let others: Vec<EndpointId> = conf.participants().map(|p| p.id).collect();
            for o in others {
                self.send_to(
                    o,
                    ServerMsg::ParticipantLeft {
                        participant_id: ep.to_string(),
                    },
                );
            }
        }
    }

    /// Ends one participant's session with a fatal error; nobody else is affected.
    pub(super) fn fail(&mut self, now: Instant, ep: EndpointId, code: ErrorCode, reason: &str) {
        if !self.peers.contains_key(&ep) {
            return;
        }
        warn!(endpoint = %ep, code = code.as_str(), reason, "closing session");
        self.send_error(ep, code, reason.to_owned());
        self.leave(now, ep);
    }

    pub(super) fn send_error(&self, ep: EndpointId, code: ErrorCode, reason: String) {
        self.metrics
            .signaling_errors
            .with_label_values(&[code.as_str()])
            .inc();
        self.send_to(ep, ServerMsg::error(code, reason));
    }

    pub(super) fn send_to(&self, ep: EndpointId, msg: ServerMsg) {
        if let Some(p) = self.peers.get(&ep) {
            let _ = p.events.send(msg);
        }
    }

    /// Sends `msg` to everyone in `from`'s conference but `from`.
    pub(super) fn broadcast(&self, from: EndpointId, msg: &ServerMsg) {
        let Some(conf) = self.core.conference_of(from) else {
            return;
        };
        for p in conf.participants().filter(|p| p.id != from) {
            self.send_to(p.id, msg.clone());
        }
    }

    /// A chat line from a local participant: to everyone here and on every peer bridge.
    pub(super) fn chat(&mut self, ep: EndpointId, text: String) {
        let Some(conf) = self.core.conference_of(ep) else {
            return;
        };
        let name = conf
            .participant(ep)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let conference = conf.id;
        let msg = ServerMsg::Message {
            from: ep.to_string(),
            name: name.clone(),
            text: text.clone(),
        };
        self.tell_locals(conference, &msg);
        self.octo_chat(conference, ep, name, text);
    }

    /// Sends `msg` to every participant of `conference` connected to this bridge; how many.
    pub(super) fn tell_locals(&mut self, conference: ConferenceId, msg: &ServerMsg) -> usize {
        let Some(conf) = self.core.get(conference) else {
            return 0;
        };
        let locals: Vec<EndpointId> = conf
            .participants()
            .filter(|p| !p.remote)
            .map(|p| p.id)
            .collect();
        for &l in &locals {
            self.send_to(l, msg.clone());
        }
        locals.len()
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            conferences: self
                .core
                .iter()
                .map(|c| ConferenceSnapshot {
                    id: c.id.to_string(),
                    conference: c.id,
                    name: c.name.clone(),
                    participants: c
                        .participants()
                        .map(|p| self.participant_info(c.id, p.id))
                        .collect(),
                })
                .collect(),
            legs: self.demux.leg_count(),
            learned_addresses: self.demux.addr_count(),
            octo_peers: self.peer_list(),
        }
    }
}

/// Whether an answer rejects every audio and video section (port 0 or no formats): the offer
/// had nothing we can receive.
pub(super) fn accepts_no_media(answer: &str) -> bool {
    !answer.lines().any(|l| {
        let mut f = l.split_whitespace();
        let kind = f.next();
        let port = f.next();
        let formats = f.skip(1).count();
        matches!(kind, Some("m=audio" | "m=video")) && port != Some("0") && formats > 0
    })
}
