//! What a bridge sends its peers: forwarded media (only the layers each peer asked for), its
//! participants' announcements and goodbyes, chat, demand and keyframe requests.

use super::*;

impl Shard {
    /// Sends one RTP packet of a local track's `layer` to every peer in its conference that
    /// needs it (every peer, for a track without simulcast); returns the copies sent.
    pub(crate) fn octo_forward(
        &mut self,
        now: Instant,
        tid: TrackId,
        layer: Layer,
        packet: &rtc::rtp::Packet,
        audio_level: Option<&Bytes>,
    ) -> u64 {
        let Some(octo) = self.octo.as_mut() else {
            return 0;
        };
        let Some(src) = self.sources.get(&tid) else {
            return 0;
        };
        // Peers are few; the copy frees `octo` for sending.
        let Some(peers) = octo.conference_peers.get(&src.conference).cloned() else {
            return 0;
        };
        let Some(out_ssrc) = src.layers.get(layer.index()).map(|l| l.octo_ssrc) else {
            return 0;
        };
        let simulcast = src.is_simulcast();
        let (conference, owner, kind) = (src.conference, src.owner, src.kind);
        let mut p = packet.clone();
        p.header.ssrc = out_ssrc;
        if let Some(level) = audio_level {
            crate::rtpext::add_audio_level(&mut p.header, OCTO_AUDIO_LEVEL_ID, level.clone());
        }
        let mut scratch = std::mem::take(&mut octo.scratch);
        let len = match p.marshal_to(&mut scratch) {
            Ok(n) => n,
            Err(e) => {
                debug!(error = %e, "marshalling RTP for Octo");
                octo.scratch = scratch;
                return 0;
            }
        };
        let meta = octo_meta(PacketType::Rtp, media_of(kind), conference, owner);
        let mut sent = 0;
        let mut saved = 0u64;
        for peer in peers {
            // A simulcast layer goes only to peers whose receivers need it (or did until
            // less than the grace period ago).
            if simulcast
                && octo.layer_suppression
                && src.demand.needed_by(now, |d| d.bridge == peer) < Some(layer)
            {
                saved += len as u64;
                continue;
            }
            if let Some(bytes) = scratch.get(..len) {
                octo.send(peer, &meta, bytes);
                sent += u64::from(spread::sibling_of(peer).is_none());
            }
        }
        self.metrics.octo_rtp_out.inc_by(sent);
        self.metrics.octo_bytes_saved.inc_by(saved);
        octo.scratch = scratch;
        sent
    }

    /// Every layer tick: tells origin bridges which layers of their simulcast tracks this
    /// bridge's receivers need (changes at once, unchanged demands every 2 s).
    pub(crate) fn demand_tick(&mut self, now: Instant) {
        if self.octo.is_none() {
            return;
        }
        let mut by_origin: HashMap<(BridgeId, ConferenceId), Vec<OctoDemand>> = HashMap::new();
        for (tid, layer) in self.demand.poll(now) {
            let Some(src) = self.sources.get(&tid) else {
                continue;
            };
            let Origin::Remote { bridge } = src.origin else {
                continue;
            };
            by_origin
                .entry((bridge, src.conference))
                .or_default()
                .push(OctoDemand {
                    id: tid.to_string(),
                    max_layer: layer.map(|l| l.index() as u8),
                });
        }
        let Some(octo) = self.octo.as_mut() else {
            return;
        };
        // A node of several shards says which one asks: an origin keeps each shard's demand.
        let shard = octo
            .spread
            .as_ref()
            .filter(|s| s.shards() > 1)
            .map(|s| s.me().0);
        for ((bridge, conference), tracks) in by_origin {
            for chunk in tracks.chunks(MAX_DEMAND_ENTRIES) {
                let m = OctoMessage::LayerDemand {
                    tracks: chunk.to_vec(),
                    shard,
                };
                let Ok(json) = serde_json::to_vec(&m) else {
                    continue;
                };
                let meta = octo_meta(
                    PacketType::Message,
                    MediaType::Data,
                    conference,
                    EndpointId(0),
                );
                debug!(peer = bridge.0, tracks = chunk.len(), "layer demand sent");
                octo.send(bridge, &meta, &json);
            }
        }
    }

    /// Asks a remote track's origin bridge for a keyframe.
    pub(crate) fn octo_keyframe_request(
        &mut self,
        bridge: BridgeId,
        conference: ConferenceId,
        owner: EndpointId,
        ssrc: u32,
    ) {
        let Some(octo) = self.octo.as_mut() else {
            return;
        };
        let pli = rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        octo.send_rtcp(bridge, conference, owner, &pli);
    }

    /// Sends a message about `endpoint` (a local participant) to every peer bridge and to the
    /// conference's other shards.
    pub(in crate::shard) fn octo_message_all(
        &mut self,
        conference: ConferenceId,
        endpoint: EndpointId,
        m: &OctoMessage,
    ) {
        self.octo_message(conference, endpoint, m, true);
    }

    /// Sends a message about `conference` to the peer bridges only (not the node's shards).
    pub(in crate::shard) fn octo_message_peers(
        &mut self,
        conference: ConferenceId,
        endpoint: EndpointId,
        m: &OctoMessage,
    ) {
        self.octo_message(conference, endpoint, m, false);
    }

    fn octo_message(
        &mut self,
        conference: ConferenceId,
        endpoint: EndpointId,
        m: &OctoMessage,
        shards_too: bool,
    ) {
        let Some(octo) = self.octo.as_mut() else {
            return;
        };
        let Ok(json) = serde_json::to_vec(m) else {
            return;
        };
        let meta = octo_meta(PacketType::Message, MediaType::Data, conference, endpoint);
        for p in octo.message_targets(conference, shards_too) {
            octo.send(p, &meta, &json);
        }
    }

    /// Announces one local participant (with its current tracks) to every peer.
    pub(crate) fn octo_announce(&mut self, endpoint: EndpointId) {
        if self.octo.is_none() {
            return;
        }
        let Some(conf) = self.core.conference_of(endpoint) else {
            return;
        };
        let Some(p) = conf.participant(endpoint).filter(|p| !p.remote) else {
            return;
        };
        let now = Instant::now();
        let tracks = p
            .tracks
            .iter()
            .filter_map(|t| conf.tracks().find(|x| x.id == *t))
            .map(|t| OctoTrack {
                id: t.id.to_string(),
                kind: t.kind.as_str().into(),
                ssrc: t.out_ssrc.0,
                muted: self.sources.get(&t.id).is_some_and(|s| s.muted),
                layers: self
                    .sources
                    .get(&t.id)
                    .filter(|s| s.is_simulcast())
                    .map(|s| {
                        s.layers
                            .iter()
                            .zip(s.layer_stats(now))
                            .map(|(l, st)| OctoLayer {
                                rid: l.rid.clone(),
                                ssrc: l.octo_ssrc,
                                height: st.height,
                                bitrate: st.bitrate_bps,
                                active: st.active,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
        let m = OctoMessage::Participant {
            room: conf.name.clone(),
            name: p.name.clone(),
            tracks,
        };
        let conference = conf.id;
        self.octo_message_all(conference, endpoint, &m);
    }

    pub(crate) fn octo_bye(&mut self, conference: ConferenceId, endpoint: EndpointId) {
        self.octo_message_all(conference, endpoint, &OctoMessage::Bye);
    }

    pub(crate) fn octo_chat(
        &mut self,
        conference: ConferenceId,
        endpoint: EndpointId,
        name: String,
        text: String,
    ) {
        self.octo_message_all(conference, endpoint, &OctoMessage::Chat { name, text });
    }
}
