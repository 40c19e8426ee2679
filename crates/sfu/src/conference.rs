//! Conferences, their participants and their published tracks.
//!
//! This is the membership and routing state of one bridge. It knows nothing about
//! PeerConnections: the shell asks it who is in a room, who receives a track, and tells it
//! when things come and go. Who-receives-what is derived here so that the rule ("everyone but
//! the publisher, if allowed to subscribe") lives in one place.

use std::collections::{BTreeMap, HashMap};

use crate::ids::{ConferenceId, EndpointId, Ssrc, TrackId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrackKind {
    Audio,
    Video,
}

impl TrackKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::Audio => "audio",
            TrackKind::Video => "video",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Participant {
    pub id: EndpointId,
    pub identity: String,
    pub name: String,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub tracks: Vec<TrackId>,
}

#[derive(Clone, Debug)]
pub struct Track {
    pub id: TrackId,
    pub owner: EndpointId,
    pub kind: TrackKind,
    /// The SSRC receivers see for this track, whatever the publisher uses: chosen by the bridge
    /// so that a later change on the publisher side (simulcast layer, re-publish) stays invisible.
    pub out_ssrc: Ssrc,
}

#[derive(Debug)]
pub struct Conference {
    pub id: ConferenceId,
    pub name: String,
    participants: BTreeMap<EndpointId, Participant>,
    tracks: BTreeMap<TrackId, Track>,
}

impl Conference {
    pub fn participants(&self) -> impl Iterator<Item = &Participant> {
        self.participants.values()
    }
    pub fn participant(&self, id: EndpointId) -> Option<&Participant> {
        self.participants.get(&id)
    }
    pub fn tracks(&self) -> impl Iterator<Item = &Track> {
        self.tracks.values()
    }
    pub fn len(&self) -> usize {
        self.participants.len()
    }
    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
    }
    /// Who receives `track`: every participant but its publisher that may subscribe.
    pub fn subscribers(&self, track: &Track) -> impl Iterator<Item = EndpointId> + '_ {
        let owner = track.owner;
        self.participants
            .values()
            .filter(move |p| p.id != owner && p.can_subscribe)
            .map(|p| p.id)
    }
    /// The tracks `receiver` should receive right now.
    pub fn subscriptions(&self, receiver: EndpointId) -> impl Iterator<Item = &Track> + '_ {
        let allowed = self
            .participants
            .get(&receiver)
            .is_some_and(|p| p.can_subscribe);
        self.tracks
            .values()
            .filter(move |t| allowed && t.owner != receiver)
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConferenceError {
    #[error("the conference is full ({0} participants)")]
    Full(usize),
    #[error("the identity is already in the conference as {0}")]
    IdentityInUse(EndpointId),
    #[error("no such participant")]
    UnknownParticipant,
    #[error("the participant may not publish")]
    Forbidden,
}

/// What a join produced.
#[derive(Debug, Clone, Copy)]
pub struct Joined {
    pub conference: ConferenceId,
    pub endpoint: EndpointId,
}

/// What a leave removed.
#[derive(Debug)]
pub struct Left {
    pub conference: ConferenceId,
    pub participant: Participant,
    pub tracks: Vec<Track>,
    /// Whether the conference ended with this leave.
    pub conference_closed: bool,
}

/// All conferences of a bridge.
#[derive(Debug, Default)]
pub struct Conferences {
    by_name: HashMap<String, ConferenceId>,
    conferences: HashMap<ConferenceId, Conference>,
    endpoint_conference: HashMap<EndpointId, ConferenceId>,
    track_conference: HashMap<TrackId, ConferenceId>,
    next_conference: u32,
    next_endpoint: u32,
    next_track: u32,
}

/// Who joins, and with which rights.
#[derive(Debug, Clone)]
pub struct JoinRequest<'a> {
    pub room: &'a str,
    pub identity: &'a str,
    pub name: &'a str,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub max_participants: usize,
}

impl Conferences {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.conferences.len()
    }
    pub fn is_empty(&self) -> bool {
        self.conferences.is_empty()
    }
    pub fn participant_count(&self) -> usize {
        self.endpoint_conference.len()
    }
    pub fn track_count(&self) -> usize {
        self.track_conference.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Conference> {
        self.conferences.values()
    }
    pub fn get(&self, id: ConferenceId) -> Option<&Conference> {
        self.conferences.get(&id)
    }
    pub fn by_name(&self, room: &str) -> Option<&Conference> {
        self.by_name
            .get(room)
            .and_then(|id| self.conferences.get(id))
    }
    pub fn conference_of(&self, endpoint: EndpointId) -> Option<&Conference> {
        self.endpoint_conference
            .get(&endpoint)
            .and_then(|c| self.conferences.get(c))
    }
    pub fn participant(&self, endpoint: EndpointId) -> Option<&Participant> {
        self.conference_of(endpoint)?.participant(endpoint)
    }
    pub fn track(&self, id: TrackId) -> Option<&Track> {
        let c = self.track_conference.get(&id)?;
        self.conferences.get(c)?.tracks.get(&id)
    }
    /// The conference that holds `track`, with the track.
    pub fn track_with_conference(&self, id: TrackId) -> Option<(&Conference, &Track)> {
        let c = self.conferences.get(self.track_conference.get(&id)?)?;
        Some((c, c.tracks.get(&id)?))
    }

    /// Adds a participant, creating the conference on first join.
    ///
    /// An identity may be present once per conference: the caller decides what to do with the
    /// holder named in [`ConferenceError::IdentityInUse`] (kaskade replaces it) and joins again.
    pub fn join(&mut self, req: &JoinRequest<'_>) -> Result<Joined, ConferenceError> {
        if let Some(conf) = self.by_name(req.room) {
            if let Some(p) = conf.participants().find(|p| p.identity == req.identity) {
                return Err(ConferenceError::IdentityInUse(p.id));
            }
            if conf.len() >= req.max_participants {
                return Err(ConferenceError::Full(conf.len()));
            }
        } else if req.max_participants == 0 {
            return Err(ConferenceError::Full(0));
        }
        let conference = match self.by_name.get(req.room) {
            Some(id) => *id,
            None => {
                self.next_conference = self.next_conference.wrapping_add(1);
                let id = ConferenceId(self.next_conference);
                self.by_name.insert(req.room.to_owned(), id);
                self.conferences.insert(
                    id,
                    Conference {
                        id,
                        name: req.room.to_owned(),
                        participants: BTreeMap::new(),
                        tracks: BTreeMap::new(),
                    },
                );
                id
            }
        };
        self.next_endpoint = self.next_endpoint.wrapping_add(1);
        let endpoint = EndpointId(self.next_endpoint);
        let conf = self
            .conferences
            .get_mut(&conference)
            .ok_or(ConferenceError::UnknownParticipant)?;
        conf.participants.insert(
            endpoint,
            Participant {
                id: endpoint,
                identity: req.identity.to_owned(),
                name: req.name.to_owned(),
                can_publish: req.can_publish,
                can_subscribe: req.can_subscribe,
                tracks: Vec::new(),
            },
        );
        self.endpoint_conference.insert(endpoint, conference);
        Ok(Joined {
            conference,
            endpoint,
        })
    }

    /// Removes a participant and everything it published; ends the conference when empty.
    pub fn leave(&mut self, endpoint: EndpointId) -> Option<Left> {
        let conference = self.endpoint_conference.remove(&endpoint)?;
        let conf = self.conferences.get_mut(&conference)?;
        let participant = conf.participants.remove(&endpoint)?;
        let mut tracks = Vec::with_capacity(participant.tracks.len());
        for t in &participant.tracks {
            if let Some(track) = conf.tracks.remove(t) {
                self.track_conference.remove(t);
                tracks.push(track);
            }
        }
        let conference_closed = conf.participants.is_empty();
        if conference_closed {
            let name = conf.name.clone();
            self.conferences.remove(&conference);
            self.by_name.remove(&name);
        }
        Some(Left {
            conference,
            participant,
            tracks,
            conference_closed,
        })
    }

    /// Registers a track published by `owner`.
    pub fn publish(
        &mut self,
        owner: EndpointId,
        kind: TrackKind,
        out_ssrc: Ssrc,
    ) -> Result<TrackId, ConferenceError> {
        let conference = *self
            .endpoint_conference
            .get(&owner)
            .ok_or(ConferenceError::UnknownParticipant)?;
        let conf = self
            .conferences
            .get_mut(&conference)
            .ok_or(ConferenceError::UnknownParticipant)?;
        let p = conf
            .participants
            .get_mut(&owner)
            .ok_or(ConferenceError::UnknownParticipant)?;
        if !p.can_publish {
            return Err(ConferenceError::Forbidden);
        }
        self.next_track = self.next_track.wrapping_add(1);
        let id = TrackId(self.next_track);
        p.tracks.push(id);
        conf.tracks.insert(
            id,
            Track {
                id,
                owner,
                kind,
                out_ssrc,
            },
        );
        self.track_conference.insert(id, conference);
        Ok(id)
    }

    /// Removes a track; returns it if it existed.
    pub fn unpublish(&mut self, id: TrackId) -> Option<Track> {
        let conference = self.track_conference.remove(&id)?;
        let conf = self.conferences.get_mut(&conference)?;
        let track = conf.tracks.remove(&id)?;
        if let Some(p) = conf.participants.get_mut(&track.owner) {
            p.tracks.retain(|t| *t != id);
        }
        Some(track)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(room: &'a str, identity: &'a str) -> JoinRequest<'a> {
        JoinRequest {
            room,
            identity,
            name: identity,
            can_publish: true,
            can_subscribe: true,
            max_participants: 3,
        }
    }

    #[test]
    fn join_publish_route_leave() {
        let mut c = Conferences::new();
        let a = c.join(&req("r", "alice")).expect("join");
        let b = c.join(&req("r", "bob")).expect("join");
        let other = c.join(&req("other", "carol")).expect("join");
        assert_eq!(a.conference, b.conference);
        assert_ne!(a.conference, other.conference);

        let t = c
            .publish(a.endpoint, TrackKind::Video, Ssrc(1))
            .expect("publish");
        let (conf, track) = c.track_with_conference(t).expect("track");
        let subs: Vec<_> = conf.subscribers(track).collect();
        assert_eq!(
            subs,
            vec![b.endpoint],
            "never to the publisher, never across rooms"
        );
        assert_eq!(conf.subscriptions(b.endpoint).count(), 1);
        assert_eq!(conf.subscriptions(a.endpoint).count(), 0);

        let left = c.leave(a.endpoint).expect("leave");
        assert_eq!(left.tracks.len(), 1);
        assert!(!left.conference_closed);
        assert!(c.track(t).is_none());
        assert_eq!(c.track_count(), 0);
        let left = c.leave(b.endpoint).expect("leave");
        assert!(left.conference_closed);
        assert!(c.by_name("r").is_none());
        assert_eq!(c.len(), 1);
        assert!(c.leave(b.endpoint).is_none(), "leave is idempotent");
    }

    #[test]
    fn full_and_duplicate_identity() {
        let mut c = Conferences::new();
        let mut r = req("r", "a");
        r.max_participants = 2;
        let a = c.join(&r).expect("join");
        r.identity = "b";
        c.join(&r).expect("join");
        r.identity = "c";
        assert_eq!(c.join(&r).unwrap_err(), ConferenceError::Full(2));
        r.identity = "a";
        assert_eq!(
            c.join(&r).unwrap_err(),
            ConferenceError::IdentityInUse(a.endpoint)
        );
    }

    #[test]
    fn permissions() {
        let mut c = Conferences::new();
        let mut r = req("r", "viewer");
        r.can_publish = false;
        let v = c.join(&r).expect("join");
        assert_eq!(
            c.publish(v.endpoint, TrackKind::Audio, Ssrc(9))
                .unwrap_err(),
            ConferenceError::Forbidden
        );
        let mut r = req("r", "mute");
        r.can_subscribe = false;
        let m = c.join(&r).expect("join");
        let p = c.join(&req("r", "pub")).expect("join");
        let t = c
            .publish(p.endpoint, TrackKind::Audio, Ssrc(2))
            .expect("publish");
        let (conf, track) = c.track_with_conference(t).expect("track");
        let subs: Vec<_> = conf.subscribers(track).collect();
        assert_eq!(subs, vec![v.endpoint]);
        assert_eq!(conf.subscriptions(m.endpoint).count(), 0);
        assert!(c.unpublish(t).is_some());
        assert!(c.unpublish(t).is_none());
        assert!(c.participant(p.endpoint).expect("p").tracks.is_empty());
    }
}
