//! Participants of other bridges, as this bridge's receivers see them: soft state created from
//! announcements and removed when they stop.

use super::*;

impl Shard {
    /// Brings the core in line with what `endpoint`'s bridge last announced, if its
    /// conference is here.
    pub(crate) fn sync_remote(&mut self, now: Instant, endpoint: EndpointId) {
        let Some(r) = self.octo.as_ref().and_then(|o| o.remote.get(&endpoint)) else {
            return;
        };
        let (conference, bridge, name) = (r.conference, r.bridge, r.name.clone());
        let announced: Vec<OctoTrack> = r.tracks.clone();
        let Some(conf) = self.core.get(conference) else {
            return;
        };
        let present = match conf.participant(endpoint) {
            Some(p) if !p.remote => {
                // Another bridge claims one of our own ids: never let it touch our participant.
                self.octo_drop("endpoint_conflict");
                return;
            }
            Some(_) => true,
            None => false,
        };
        if !present {
            if !self.core.join_remote(conference, endpoint, &name) {
                return;
            }
            let info = self.participant_info(conference, endpoint);
            info!(endpoint = %endpoint, bridge = bridge.0, "remote participant joined");
            self.broadcast(
                endpoint,
                &ServerMsg::ParticipantJoined { participant: info },
            );
        }
        let have: Vec<TrackId> = self
            .core
            .participant(endpoint)
            .map(|p| p.tracks.clone())
            .unwrap_or_default();
        // Gone from the announcement: unpublish.
        for tid in &have {
            if !announced
                .iter()
                .any(|t| TrackId::parse(&t.id) == Some(*tid))
            {
                self.unpublish(now, *tid);
            }
        }
        for t in announced {
            let (Some(tid), Some(kind)) = (TrackId::parse(&t.id), kind_of(&t.kind)) else {
                self.octo_drop("bad_message");
                continue;
            };
            if have.contains(&tid) {
                // Layer statistics change every announcement.
                let mut mute_changed = false;
                if let Some(src) = self.sources.get_mut(&tid) {
                    for (lin, l) in src.layers.iter_mut().zip(&t.layers) {
                        lin.announced = Some(LayerStats {
                            height: l.height,
                            bitrate_bps: l.bitrate,
                            active: l.active,
                        });
                    }
                    mute_changed = src.muted != t.muted;
                    src.muted = t.muted;
                }
                if mute_changed {
                    // Muted at its origin (admin API there): everyone here hears of it too.
                    self.broadcast(
                        endpoint,
                        &ServerMsg::TrackMuted {
                            participant_id: endpoint.to_string(),
                            track_id: tid.to_string(),
                            muted: t.muted,
                        },
                    );
                }
                continue;
            }
            if t.layers.len() > kaskade_sfu::simulcast::MAX_LAYERS {
                self.octo_drop("bad_message");
                continue;
            }
            let out_ssrc = self.fresh_ssrc();
            if let Err(e) = self
                .core
                .publish_remote(tid, endpoint, kind, Ssrc(out_ssrc))
            {
                debug!(track = %tid, error = %e, "remote track refused");
                continue;
            }
            self.by_out_ssrc.insert(out_ssrc, (tid, Layer::BASE));
            let repair = self.limits.repair;
            let layers: Vec<LayerIn> = if t.layers.is_empty() {
                vec![LayerIn::new(kind, repair, t.ssrc, String::new())]
            } else {
                t.layers
                    .iter()
                    .map(|l| {
                        let mut lin = LayerIn::new(kind, repair, l.ssrc, l.rid.clone());
                        lin.announced = Some(LayerStats {
                            height: l.height,
                            bitrate_bps: l.bitrate,
                            active: l.active,
                        });
                        lin
                    })
                    .collect()
            };
            if let Some(o) = self.octo.as_mut() {
                for (i, l) in layers.iter().enumerate() {
                    if let Some(layer) = Layer::new(i as u8) {
                        o.by_ssrc.insert((bridge, l.ssrc), (tid, layer));
                    }
                }
            }
            let mut source = Source::new(
                kind,
                endpoint,
                conference,
                Origin::Remote { bridge },
                Some(OCTO_AUDIO_LEVEL_ID),
                repair,
                layers,
            );
            source.muted = t.muted;
            self.sources.insert(tid, source);
            self.announce_track(now, endpoint, tid, kind);
        }
    }

    /// Drops a remote participant and its tracks.
    pub(crate) fn remove_remote(&mut self, now: Instant, endpoint: EndpointId) {
        let Some(r) = self.octo.as_mut().and_then(|o| o.remote.remove(&endpoint)) else {
            return;
        };
        if let Some(o) = self.octo.as_mut() {
            o.recompute_peers(r.conference);
        }
        let Some(tracks) = self
            .core
            .participant(endpoint)
            .filter(|p| p.remote)
            .map(|p| p.tracks.clone())
        else {
            return;
        };
        for t in tracks {
            self.unpublish(now, t);
        }
        if self.core.leave(endpoint).is_some() {
            info!(endpoint = %endpoint, bridge = r.bridge.0, "remote participant left");
            if let Some(conf) = self.core.get(r.conference) {
                let locals: Vec<EndpointId> = conf
                    .participants()
                    .filter(|p| !p.remote)
                    .map(|p| p.id)
                    .collect();
                for ep in locals {
                    self.send_to(
                        ep,
                        ServerMsg::ParticipantLeft {
                            participant_id: endpoint.to_string(),
                        },
                    );
                }
            }
        }
    }

    /// The bridge a participant is on, for signaling.
    pub(crate) fn bridge_of(&self, endpoint: EndpointId) -> String {
        self.octo
            .as_ref()
            .and_then(|o| {
                let r = o.remote.get(&endpoint)?;
                o.peers.get(&r.bridge).map(|p| p.name.clone())
            })
            .unwrap_or_else(|| self.bridge.id.clone())
    }

    pub(crate) fn participant_info(
        &self,
        conference: ConferenceId,
        ep: EndpointId,
    ) -> ParticipantInfo {
        let conf = self.core.get(conference);
        let p = conf.and_then(|c| c.participant(ep));
        ParticipantInfo {
            id: ep.to_string(),
            name: p.map(|p| p.name.clone()).unwrap_or_default(),
            bridge: self.bridge_of(ep),
            tracks: match (conf, p) {
                (Some(c), Some(p)) => p
                    .tracks
                    .iter()
                    .filter_map(|t| c.tracks().find(|x| x.id == *t))
                    .map(|t| TrackInfo {
                        id: t.id.to_string(),
                        kind: t.kind.as_str().into(),
                        muted: self.sources.get(&t.id).is_some_and(|s| s.muted),
                    })
                    .collect(),
                _ => Vec::new(),
            },
        }
    }

    /// Brings cached remote participants of `conference` into the core: the conference has
    /// just been created here by a local join.
    pub(crate) fn materialize_remote(&mut self, now: Instant, conference: ConferenceId) {
        let eps: Vec<EndpointId> = match self.octo.as_ref() {
            Some(o) => o
                .remote
                .iter()
                .filter(|(_, r)| r.conference == conference)
                .map(|(e, _)| *e)
                .collect(),
            None => return,
        };
        for ep in eps {
            self.sync_remote(now, ep);
        }
    }
}
