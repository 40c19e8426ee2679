//! What the admin API asks of a shard: a conference's participants in detail, and what an
//! operator does to one (kick it, mute one of its tracks, send the conference a message).
//! Each request is one command on the media thread; nothing here runs per packet.

use std::time::Instant;

use kaskade_sfu::{EndpointId, TrackId, TrackKind};
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::info;

use super::{Origin, Shard};
use crate::messages::{ErrorCode, ServerMsg};

/// Who signs messages the admin API sends into a conference.
pub const SERVER_SENDER: &str = "server";

#[derive(Debug)]
pub enum AdminRequest {
    Participants {
        room: String,
        reply: oneshot::Sender<Result<Vec<ParticipantDetail>, AdminError>>,
    },
    Kick {
        room: String,
        participant: String,
        reply: oneshot::Sender<Result<(), AdminError>>,
    },
    Mute {
        room: String,
        participant: String,
        track: String,
        muted: bool,
        reply: oneshot::Sender<Result<(), AdminError>>,
    },
    Message {
        room: String,
        text: String,
        /// Local participants it reached.
        reply: oneshot::Sender<Result<usize, AdminError>>,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdminError {
    #[error("no conference {0:?} on this bridge")]
    NoConference(String),
    #[error("no participant {0:?} in the conference")]
    NoParticipant(String),
    #[error("the participant has no track {0:?}")]
    NoTrack(String),
    /// Kicking or muting acts where the participant is connected.
    #[error("participant {participant} is connected to bridge {bridge}: ask that bridge")]
    Remote { participant: String, bridge: String },
}

impl AdminError {
    /// The admin API's error code (proto/admin.openapi.yaml).
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::NoConference(_) => "conference_not_found",
            AdminError::NoParticipant(_) => "participant_not_found",
            AdminError::NoTrack(_) => "track_not_found",
            AdminError::Remote { .. } => "participant_on_another_bridge",
        }
    }
}

/// A participant as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantDetail {
    pub id: String,
    pub identity: String,
    pub name: String,
    /// The bridge it is connected to.
    pub bridge: String,
    /// Connected to this bridge (else known through Octo, without receive figures).
    pub local: bool,
    pub tracks: Vec<TrackDetail>,
    /// Local participants: what it receives, and how well.
    pub receiving: Vec<ReceivingDetail>,
    /// Local participants: round-trip time of its subscriber leg, from its receiver reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrackDetail {
    pub id: String,
    pub kind: &'static str,
    pub muted: bool,
    /// Simulcast layers (one entry without simulcast), lowest first, as this bridge sees them.
    pub layers: Vec<LayerDetail>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerDetail {
    /// Empty without simulcast.
    pub rid: String,
    /// Frame height from the last keyframe (video), 0 while unknown.
    pub height: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReceivingDetail {
    pub track: String,
    /// The simulcast layer it gets now (0 = lowest); absent for audio, or while none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<u8>,
    /// From its last receiver report on this stream: fraction lost in the last interval
    /// (0-1) and packets lost in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_fraction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packets_lost: Option<u32>,
}

impl Shard {
    pub(super) fn on_admin(&mut self, now: Instant, req: AdminRequest) {
        match req {
            AdminRequest::Participants { room, reply } => {
                let _ = reply.send(self.admin_participants(&room));
            }
            AdminRequest::Kick {
                room,
                participant,
                reply,
            } => {
                let r = self.admin_local(&room, &participant).map(|ep| {
                    info!(endpoint = %ep, room, "kicked by an administrator");
                    self.fail(
                        now,
                        ep,
                        ErrorCode::Kicked,
                        "removed from the conference by an administrator",
                    );
                });
                let _ = reply.send(r);
            }
            AdminRequest::Mute {
                room,
                participant,
                track,
                muted,
                reply,
            } => {
                let _ = reply.send(self.admin_mute(now, &room, &participant, &track, muted));
            }
            AdminRequest::Message { room, text, reply } => {
                let _ = reply.send(self.admin_message(&room, text));
            }
        }
    }

    fn admin_endpoint(&self, room: &str, participant: &str) -> Result<EndpointId, AdminError> {
        let conf = self
            .core
            .by_name(room)
            .ok_or_else(|| AdminError::NoConference(room.to_owned()))?;
        conf.participants()
            .find(|p| p.id.to_string() == participant)
            .map(|p| p.id)
            .ok_or_else(|| AdminError::NoParticipant(participant.to_owned()))
    }

    /// A participant connected to this bridge (remote ones are refused with their bridge).
    fn admin_local(&self, room: &str, participant: &str) -> Result<EndpointId, AdminError> {
        let ep = self.admin_endpoint(room, participant)?;
        if self.peers.contains_key(&ep) {
            Ok(ep)
        } else {
            Err(AdminError::Remote {
                participant: participant.to_owned(),
                bridge: self.bridge_of(ep),
            })
        }
    }

    fn admin_participants(&self, room: &str) -> Result<Vec<ParticipantDetail>, AdminError> {
        let conf = self
            .core
            .by_name(room)
            .ok_or_else(|| AdminError::NoConference(room.to_owned()))?;
        let mut out = Vec::new();
        for p in conf.participants() {
            let tracks = p
                .tracks
                .iter()
                .filter_map(|t| conf.tracks().find(|x| x.id == *t))
                .map(|t| {
                    let src = self.sources.get(&t.id);
                    TrackDetail {
                        id: t.id.to_string(),
                        kind: t.kind.as_str(),
                        muted: src.is_some_and(|s| s.muted),
                        layers: src
                            .map(|s| {
                                s.layers
                                    .iter()
                                    .map(|l| LayerDetail {
                                        rid: l.rid.clone(),
                                        height: l.height,
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    }
                })
                .collect();
            let sub = self
                .peers
                .get(&p.id)
                .and_then(|peer| peer.subscriber)
                .and_then(|l| self.legs.get(l.0 as usize))
                .and_then(|l| l.as_ref());
            let mut receiving: Vec<ReceivingDetail> = sub
                .map(|leg| {
                    leg.senders
                        .iter()
                        .map(|(tid, s)| ReceivingDetail {
                            track: tid.to_string(),
                            layer: s
                                .rewriter
                                .as_ref()
                                .and_then(|rw| rw.current())
                                .map(|l| l.index() as u8),
                            loss_fraction: s.reported_loss.map(|(f, _)| f64::from(f) / 256.0),
                            packets_lost: s.reported_loss.map(|(_, n)| n),
                        })
                        .collect()
                })
                .unwrap_or_default();
            receiving.sort_by(|a, b| a.track.cmp(&b.track));
            out.push(ParticipantDetail {
                id: p.id.to_string(),
                identity: p.identity.clone(),
                name: p.name.clone(),
                bridge: self.bridge_of(p.id),
                local: !p.remote,
                tracks,
                receiving,
                rtt_ms: sub
                    .filter(|l| l.rtt.is_measured())
                    .map(|l| l.rtt.get().as_secs_f64() * 1000.0),
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn admin_mute(
        &mut self,
        now: Instant,
        room: &str,
        participant: &str,
        track: &str,
        muted: bool,
    ) -> Result<(), AdminError> {
        let ep = self.admin_local(room, participant)?;
        let tid = TrackId::parse(track)
            .filter(|t| {
                self.core
                    .participant(ep)
                    .is_some_and(|p| p.tracks.contains(t))
            })
            .ok_or_else(|| AdminError::NoTrack(track.to_owned()))?;
        let Some(src) = self.sources.get_mut(&tid) else {
            return Err(AdminError::NoTrack(track.to_owned()));
        };
        if src.muted == muted {
            return Ok(());
        }
        src.muted = muted;
        let (kind, local) = (src.kind, matches!(src.origin, Origin::Local { .. }));
        info!(endpoint = %ep, track = %tid, muted, "track mute set by an administrator");
        let msg = ServerMsg::TrackMuted {
            participant_id: ep.to_string(),
            track_id: tid.to_string(),
            muted,
        };
        // Everyone here, the owner too: its own page shows it is muted.
        if let Some(conf) = self.core.conference_of(ep) {
            for p in conf.participants() {
                self.send_to(p.id, msg.clone());
            }
        }
        // The other bridges learn it from the announcement, sent now rather than at the next
        // refresh, and tell their participants.
        self.octo_announce(ep);
        if !muted && kind == TrackKind::Video && local {
            // Receivers resume at a keyframe, as after a layer switch.
            let receivers: Vec<super::LegId> = self
                .sources
                .get(&tid)
                .map(|s| s.fanout.clone())
                .unwrap_or_default();
            for leg in receivers {
                self.request_keyframes_for(now, leg);
            }
        }
        Ok(())
    }

    fn admin_message(&mut self, room: &str, text: String) -> Result<usize, AdminError> {
        let conf = self
            .core
            .by_name(room)
            .ok_or_else(|| AdminError::NoConference(room.to_owned()))?;
        let conference = conf.id;
        let msg = ServerMsg::Message {
            from: SERVER_SENDER.to_owned(),
            name: SERVER_SENDER.to_owned(),
            text: text.clone(),
        };
        let delivered = self.tell_locals(conference, &msg);
        // The other bridges of the conference show it as the server's too. Every shard of a
        // spread conference was asked and tells its own; the first tells the other bridges.
        let m = super::cascade::OctoMessage::Chat {
            name: SERVER_SENDER.to_owned(),
            text,
        };
        let first = self
            .octo
            .as_ref()
            .and_then(|o| o.spread.as_ref())
            .is_none_or(|s| s.span(conference).first() == Some(s.me()) || !s.is_spread(conference));
        if first {
            self.octo_message_peers(
                conference,
                EndpointId(kaskade_octo::EndpointId::BRIDGE.0),
                &m,
            );
        }
        Ok(delivered)
    }
}
