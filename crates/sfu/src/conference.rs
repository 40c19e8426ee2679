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
    /// Hosted by another bridge and relayed over Octo: it receives through its own bridge, so
    /// it is never a subscriber here, and it does not keep a conference alive.
    pub remote: bool,
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
    /// Participants hosted by this bridge.
    pub fn local_len(&self) -> usize {
        self.participants.values().filter(|p| !p.remote).count()
    }
    /// Who receives `track`: every participant but its publisher that may subscribe.
    pub fn subscribers(&self, track: &Track) -> impl Iterator<Item = EndpointId> + '_ {
        let owner = track.owner;
        self.participants
            .values()
            .filter(move |p| p.id != owner && p.can_subscribe && !p.remote)
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
    #[error("conference id {0} is already used by another room")]
    IdCollision(ConferenceId),
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
    /// Whether the conference ended with this leave (its last local participant left).
    pub conference_closed: bool,
    /// Remote participants dropped with the conference, with their tracks.
    pub dropped_remote: Vec<(Participant, Vec<Track>)>,
}

/// Where the endpoint and track ids a [`Conferences`] allocates come from: a high byte (the
/// bridge's), and a low 24 bits that are `lane` modulo `lanes` (the shard's, of the bridge's
/// shards), so that every allocator of a cluster draws from its own numbers.
#[derive(Debug, Clone, Copy)]
struct IdSpace {
    prefix: u32,
    lane: u32,
    lanes: u32,
}

impl Default for IdSpace {
    fn default() -> Self {
        Self {
            prefix: 0,
            lane: 0,
            lanes: 1,
        }
    }
}

impl IdSpace {
    /// The next id after `counter` (which it advances); never 0 in the low 24 bits.
    fn next(self, counter: &mut u32) -> u32 {
        let per_lane = (1u32 << 24) / self.lanes;
        loop {
            *counter = counter.wrapping_add(1) % per_lane;
            let low = *counter * self.lanes + self.lane;
            if low != 0 {
                return self.prefix | low;
            }
        }
    }
}

/// All conferences of a bridge.
#[derive(Debug, Default)]
pub struct Conferences {
    by_name: HashMap<String, ConferenceId>,
    conferences: HashMap<ConferenceId, Conference>,
    endpoint_conference: HashMap<EndpointId, ConferenceId>,
    track_conference: HashMap<TrackId, ConferenceId>,
    /// High byte of every endpoint and track id this bridge allocates, so that ids stay
    /// distinct across the bridges of a cascade (256 bridges, 16M ids each before wrapping).
    ids: IdSpace,
    next_endpoint: u32,
    next_track: u32,
}

/// Who joins, and with which rights.
#[derive(Debug, Clone)]
pub struct JoinRequest<'a> {
    /// The room's cluster-wide id, from the directory.
    pub conference: ConferenceId,
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

    /// Ids allocated here start with `prefix` in their high byte.
    pub fn with_id_prefix(prefix: u8) -> Self {
        Self::with_id_space(prefix, 0, 1)
    }

    /// Ids allocated here start with `prefix` in their high byte, and their low 24 bits are
    /// `lane` modulo `lanes`: one of `lanes` allocators sharing a prefix (a bridge's shards).
    pub fn with_id_space(prefix: u8, lane: u8, lanes: u8) -> Self {
        let lanes = u32::from(lanes.max(1));
        Self {
            ids: IdSpace {
                prefix: u32::from(prefix) << 24,
                lane: u32::from(lane) % lanes,
                lanes,
            },
            ..Self::default()
        }
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
            if let Some(p) = conf
                .participants()
                .find(|p| !p.remote && p.identity == req.identity)
            {
                return Err(ConferenceError::IdentityInUse(p.id));
            }
            if conf.local_len() >= req.max_participants {
                return Err(ConferenceError::Full(conf.local_len()));
            }
        } else if req.max_participants == 0 {
            return Err(ConferenceError::Full(0));
        } else if self.conferences.contains_key(&req.conference) {
            return Err(ConferenceError::IdCollision(req.conference));
        }
        let conference = match self.by_name.get(req.room) {
            Some(id) => *id,
            None => {
                let id = req.conference;
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
        let endpoint = EndpointId(self.ids.next(&mut self.next_endpoint));
        self.insert_participant(
            conference,
            Participant {
                id: endpoint,
                identity: req.identity.to_owned(),
                name: req.name.to_owned(),
                can_publish: req.can_publish,
                can_subscribe: req.can_subscribe,
                tracks: Vec::new(),
                remote: false,
            },
        )?;
        Ok(Joined {
            conference,
            endpoint,
        })
    }

    fn insert_participant(
        &mut self,
        conference: ConferenceId,
        p: Participant,
    ) -> Result<(), ConferenceError> {
        let conf = self
            .conferences
            .get_mut(&conference)
            .ok_or(ConferenceError::UnknownParticipant)?;
        self.endpoint_conference.insert(p.id, conference);
        conf.participants.insert(p.id, p);
        Ok(())
    }

    /// Adds a participant another bridge hosts, with the id that bridge gave it. Only into a
    /// conference that exists here: a bridge with no local participant has no one to forward
    /// to. Returns whether it was added (false if the conference is not here or the id is taken).
    pub fn join_remote(
        &mut self,
        conference: ConferenceId,
        endpoint: EndpointId,
        name: &str,
    ) -> bool {
        if !self.conferences.contains_key(&conference)
            || self.endpoint_conference.contains_key(&endpoint)
        {
            return false;
        }
        self.insert_participant(
            conference,
            Participant {
                id: endpoint,
                identity: String::new(),
                name: name.to_owned(),
                can_publish: true,
                can_subscribe: false,
                tracks: Vec::new(),
                remote: true,
            },
        )
        .is_ok()
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
        let conference_closed = conf.participants.values().all(|p| p.remote);
        let mut dropped_remote = Vec::new();
        if conference_closed {
            let name = conf.name.clone();
            if let Some(conf) = self.conferences.remove(&conference) {
                for (_, p) in conf.participants {
                    self.endpoint_conference.remove(&p.id);
                    let ts: Vec<Track> = p
                        .tracks
                        .iter()
                        .filter_map(|t| conf.tracks.get(t).cloned())
                        .collect();
                    for t in &ts {
                        self.track_conference.remove(&t.id);
                    }
                    dropped_remote.push((p, ts));
                }
            }
            self.by_name.remove(&name);
        }
        Some(Left {
            conference,
            participant,
            tracks,
            conference_closed,
            dropped_remote,
        })
    }

    /// Registers a track published by `owner`.
    pub fn publish(
        &mut self,
        owner: EndpointId,
        kind: TrackKind,
        out_ssrc: Ssrc,
    ) -> Result<TrackId, ConferenceError> {
        match self.participant(owner) {
            None => return Err(ConferenceError::UnknownParticipant),
            // Remote tracks come with their origin's id: see `publish_remote`.
            Some(p) if !p.can_publish || p.remote => return Err(ConferenceError::Forbidden),
            Some(_) => {}
        }
        let id = TrackId(self.ids.next(&mut self.next_track));
        self.add_track(Track {
            id,
            owner,
            kind,
            out_ssrc,
        })?;
        Ok(id)
    }

    /// Registers a track of a remote participant under the id its bridge gave it.
    pub fn publish_remote(
        &mut self,
        id: TrackId,
        owner: EndpointId,
        kind: TrackKind,
        out_ssrc: Ssrc,
    ) -> Result<(), ConferenceError> {
        if !self.participant(owner).is_some_and(|p| p.remote) {
            return Err(ConferenceError::UnknownParticipant);
        }
        if let Some(&c) = self.track_conference.get(&id) {
            return Err(ConferenceError::IdCollision(c));
        }
        self.add_track(Track {
            id,
            owner,
            kind,
            out_ssrc,
        })
    }

    /// Adds a track to its owner and to the owner's conference.
    fn add_track(&mut self, track: Track) -> Result<(), ConferenceError> {
        let conference = *self
            .endpoint_conference
            .get(&track.owner)
            .ok_or(ConferenceError::UnknownParticipant)?;
        let conf = self
            .conferences
            .get_mut(&conference)
            .ok_or(ConferenceError::UnknownParticipant)?;
        let p = conf
            .participants
            .get_mut(&track.owner)
            .ok_or(ConferenceError::UnknownParticipant)?;
        p.tracks.push(track.id);
        self.track_conference.insert(track.id, conference);
        conf.tracks.insert(track.id, track);
        Ok(())
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
            conference: ConferenceId(room.bytes().map(u32::from).sum()),
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
    fn shards_of_a_bridge_draw_ids_from_their_own_lanes() {
        let mut seen = std::collections::HashSet::new();
        for lane in 0..3u8 {
            let mut c = Conferences::with_id_space(7, lane, 3);
            let mut counter = 0;
            for _ in 0..1000 {
                let id = c.ids.next(&mut counter);
                assert_eq!(id >> 24, 7, "the bridge's prefix");
                assert_eq!((id & 0x00ff_ffff) % 3, u32::from(lane), "the shard's lane");
                assert_ne!(id & 0x00ff_ffff, 0);
                assert!(seen.insert(id), "{id:#x} twice");
            }
            let a = c.join(&req("r", &format!("a{lane}"))).expect("join");
            assert_eq!((a.endpoint.0 & 0x00ff_ffff) % 3, u32::from(lane));
        }
        // The counter wraps inside the 24 bits, and never yields a 0 low part.
        let s = IdSpace {
            prefix: 0,
            lane: 0,
            lanes: 4,
        };
        let mut counter = (1 << 22) - 2;
        let ids: Vec<u32> = (0..3).map(|_| s.next(&mut counter)).collect();
        assert_eq!(ids, vec![(1 << 24) - 4, 4, 8]);
    }

    #[test]
    fn remote_participants_are_relayed_not_served() {
        let mut c = Conferences::with_id_prefix(2);
        let a = c.join(&req("r", "alice")).expect("join");
        assert_eq!(a.endpoint.0 >> 24, 2, "ids carry the bridge prefix");
        assert!(!c.join_remote(ConferenceId(999), EndpointId(0x0300_0001), "elsewhere"));
        let remote = EndpointId(0x0300_0001);
        assert!(c.join_remote(a.conference, remote, "bob"));
        assert!(!c.join_remote(a.conference, remote, "bob"), "once");
        c.publish_remote(TrackId(0x0300_0009), remote, TrackKind::Video, Ssrc(5))
            .expect("remote track");
        assert_eq!(
            c.publish(remote, TrackKind::Audio, Ssrc(6)).unwrap_err(),
            ConferenceError::Forbidden,
            "remote tracks only come with their origin's id"
        );
        let local_t = c
            .publish(a.endpoint, TrackKind::Audio, Ssrc(7))
            .expect("publish");
        let (conf, t) = c.track_with_conference(local_t).expect("track");
        assert_eq!(
            conf.subscribers(t).count(),
            0,
            "remote participants are not served here"
        );
        assert_eq!(
            conf.subscriptions(a.endpoint).count(),
            1,
            "alice receives bob's video"
        );
        // The last local participant leaving ends the conference and drops the remote ones.
        let left = c.leave(a.endpoint).expect("leave");
        assert!(left.conference_closed);
        assert_eq!(left.dropped_remote.len(), 1);
        assert_eq!(left.dropped_remote[0].1.len(), 1);
        assert_eq!(c.participant_count(), 0);
        assert_eq!(c.track_count(), 0);
    }

    #[test]
    fn conference_id_collision_is_refused() {
        let mut c = Conferences::new();
        let mut r = req("r1", "a");
        r.conference = ConferenceId(7);
        c.join(&r).expect("join");
        let mut r = req("r2", "b");
        r.conference = ConferenceId(7);
        assert_eq!(
            c.join(&r).unwrap_err(),
            ConferenceError::IdCollision(ConferenceId(7))
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
