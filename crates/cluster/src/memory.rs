//! The embedded directory: the default of `kaskade serve`, a complete single node with
//! nothing else installed.
//!
//! Conference ids are FNV-1a hashes of the room name, so bridges of a static-peer cluster
//! (`[[octo.peers]]`, no Redis) agree on them without talking. Within one directory ids are
//! collision-free: a room whose hash is taken by another live room gets the next free id
//! (such a room then only works on one bridge of a static cluster, which is why clusters use
//! Redis).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::directory::{ConferenceEntry, Directory, DirectoryError, HOST_TTL_MS, NodeSnapshot};
use crate::node::{NodeId, NodeRecord, RECORD_TTL_MS};

/// FNV-1a of the room name, never 0 (0 is the Octo link itself).
pub fn hashed_conference_id(room: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in room.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    if h == 0 { 1 } else { h }
}

#[derive(Default)]
struct State {
    nodes: HashMap<NodeId, NodeRecord>,
    rooms: HashMap<String, Room>,
    ids: HashMap<u32, String>,
    /// When `expire` last swept (0: never).
    swept_ms: u64,
}

struct Room {
    id: u32,
    /// node -> (participants, refreshed at).
    hosts: HashMap<NodeId, (u32, u64)>,
    touched_ms: u64,
}

/// How long an unhosted room keeps its id (a participant reconnecting finds the same one).
const ROOM_TTL_MS: u64 = 60_000;

#[derive(Default)]
pub struct MemoryDirectory {
    state: Mutex<State>,
}

impl MemoryDirectory {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps that are still consistent (every
        // update is a single insert or remove), so a poisoned lock is used as it is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn expire(&mut self, now_ms: u64) {
        // A sweep walks every room: once a second is enough for TTLs counted in seconds.
        if self.swept_ms != 0
            && now_ms.saturating_sub(self.swept_ms) < 1_000
            && now_ms >= self.swept_ms
        {
            return;
        }
        self.swept_ms = now_ms;
        self.nodes
            .retain(|_, r| now_ms.saturating_sub(r.updated_ms) < RECORD_TTL_MS);
        let ids = &mut self.ids;
        self.rooms.retain(|name, room| {
            room.hosts
                .retain(|_, (_, at)| now_ms.saturating_sub(*at) < HOST_TTL_MS);
            let keep =
                !room.hosts.is_empty() || now_ms.saturating_sub(room.touched_ms) < ROOM_TTL_MS;
            if !keep {
                ids.remove(&room.id);
            }
            keep || name.is_empty()
        });
    }

    fn room(&mut self, name: &str, now_ms: u64) -> Result<&mut Room, DirectoryError> {
        if !self.rooms.contains_key(name) {
            let mut id = hashed_conference_id(name);
            let mut tries: u64 = 0;
            while self.ids.contains_key(&id) {
                id = id.wrapping_add(1).max(1);
                tries += 1;
                if tries > u64::from(u32::MAX) {
                    return Err(DirectoryError::Exhausted);
                }
            }
            self.ids.insert(id, name.to_owned());
            self.rooms.insert(
                name.to_owned(),
                Room {
                    id,
                    hosts: HashMap::new(),
                    touched_ms: now_ms,
                },
            );
        }
        let room = self
            .rooms
            .get_mut(name)
            .ok_or_else(|| DirectoryError::Refused("room vanished".into()))?;
        room.touched_ms = now_ms;
        Ok(room)
    }
}

impl Directory for MemoryDirectory {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, record: &NodeRecord) -> Result<(), DirectoryError> {
        record.validate()?;
        self.lock().nodes.insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn withdraw(&self, node: &NodeId) -> Result<(), DirectoryError> {
        let mut s = self.lock();
        s.nodes.remove(node);
        for room in s.rooms.values_mut() {
            room.hosts.remove(node);
        }
        Ok(())
    }

    async fn nodes(&self, now_ms: u64) -> Result<NodeSnapshot, DirectoryError> {
        let mut s = self.lock();
        s.expire(now_ms);
        // Readers judge TTLs themselves: the sweep is only garbage collection.
        let mut nodes: Vec<NodeRecord> = s
            .nodes
            .values()
            .filter(|r| now_ms.saturating_sub(r.updated_ms) < RECORD_TTL_MS)
            .cloned()
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(NodeSnapshot { nodes, refused: 0 })
    }

    async fn conference(&self, room: &str, now_ms: u64) -> Result<ConferenceEntry, DirectoryError> {
        let mut s = self.lock();
        s.expire(now_ms);
        let r = s.room(room, now_ms)?;
        Ok(ConferenceEntry {
            room: room.to_owned(),
            id: r.id,
            hosts: r
                .hosts
                .iter()
                .filter(|(_, (_, at))| now_ms.saturating_sub(*at) < HOST_TTL_MS)
                .map(|(n, (c, _))| (n.clone(), *c))
                .collect(),
        })
    }

    async fn set_host(
        &self,
        room: &str,
        _id: u32,
        node: &NodeId,
        participants: u32,
        now_ms: u64,
    ) -> Result<(), DirectoryError> {
        let mut s = self.lock();
        let r = s.room(room, now_ms)?;
        if participants == 0 {
            r.hosts.remove(node);
        } else {
            r.hosts.insert(node.clone(), (participants, now_ms));
        }
        Ok(())
    }

    async fn conferences(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<ConferenceEntry>, DirectoryError> {
        let mut s = self.lock();
        s.expire(now_ms);
        let mut out: Vec<ConferenceEntry> = s
            .rooms
            .iter()
            .filter_map(|(name, r)| {
                let hosts: HashMap<NodeId, u32> = r
                    .hosts
                    .iter()
                    .filter(|(_, (n, at))| *n > 0 && now_ms.saturating_sub(*at) < HOST_TTL_MS)
                    .map(|(node, (n, _))| (node.clone(), *n))
                    .collect();
                (!hosts.is_empty()).then(|| ConferenceEntry {
                    room: name.clone(),
                    id: r.id,
                    hosts,
                })
            })
            .collect();
        out.sort_by(|a, b| a.room.cmp(&b.room));
        out.truncate(limit);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::record;

    /// The directory's futures never wait: poll each once.
    fn now<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => unreachable!("the memory directory never waits"),
        }
    }

    #[test]
    fn fnv_reference() {
        assert_eq!(hashed_conference_id("a"), 0xe40c_292c);
        assert_eq!(
            hashed_conference_id("room-1"),
            hashed_conference_id("room-1")
        );
        assert_ne!(hashed_conference_id(""), 0);
    }

    #[test]
    fn ids_are_stable_and_collision_free() {
        let d = MemoryDirectory::new();
        let a = now(d.conference("room-1", 0)).map(|c| c.id).ok();
        assert_eq!(a, Some(hashed_conference_id("room-1")));
        assert_eq!(now(d.conference("room-1", 5)).map(|c| c.id).ok(), a);
        // Force a collision: take room-2's hash by another name first.
        let taken = hashed_conference_id("room-2");
        {
            let mut s = d.lock();
            s.ids.insert(taken, "squatter".into());
            s.rooms.insert(
                "squatter".into(),
                Room {
                    id: taken,
                    hosts: HashMap::new(),
                    touched_ms: 0,
                },
            );
        }
        let b = now(d.conference("room-2", 10)).map(|c| c.id).ok();
        assert_eq!(b, Some(taken.wrapping_add(1).max(1)));
    }

    #[test]
    fn conferences_lists_hosted_rooms_only() {
        let d = MemoryDirectory::new();
        let n = NodeId("b1".into());
        let a = now(d.conference("a", 1_000)).expect("a");
        now(d.conference("unhosted", 1_000)).expect("u");
        now(d.set_host("a", a.id, &n, 3, 1_000)).expect("host");
        let b = now(d.conference("b", 1_000)).expect("b");
        now(d.set_host("b", b.id, &n, 1, 1_000)).expect("host");
        let list = now(d.conferences(2_000, 10)).expect("list");
        let rooms: Vec<(&str, u32)> = list
            .iter()
            .map(|c| (c.room.as_str(), c.hosts.get(&n).copied().unwrap_or(0)))
            .collect();
        assert_eq!(rooms, [("a", 3), ("b", 1)]);
        assert_eq!(now(d.conferences(2_000, 1)).expect("list").len(), 1);
        // Hosts expire: nothing is listed once the host stopped refreshing.
        assert!(
            now(d.conferences(1_000 + HOST_TTL_MS + 1, 10))
                .expect("list")
                .is_empty()
        );
    }

    #[test]
    fn records_and_hosts_expire_by_themselves() {
        let d = MemoryDirectory::new();
        let r = record("b-1", "eu", 0.2, 1_000);
        assert!(now(d.publish(&r)).is_ok());
        let mut bad = r.clone();
        bad.octo_id = 999;
        assert!(matches!(
            now(d.publish(&bad)),
            Err(DirectoryError::BadRecord(_))
        ));
        assert!(now(d.set_host("room", 0, &r.id, 3, 1_000)).is_ok());
        let c = now(d.conference("room", 2_000)).ok();
        assert_eq!(c.map(|c| c.hosts.get(&r.id).copied()), Some(Some(3)));
        assert_eq!(
            now(d.nodes(1_000 + RECORD_TTL_MS - 1))
                .map(|s| s.nodes.len())
                .ok(),
            Some(1)
        );
        // No heartbeat: the record and the host entry go.
        assert_eq!(
            now(d.nodes(1_000 + RECORD_TTL_MS))
                .map(|s| s.nodes.len())
                .ok(),
            Some(0)
        );
        let c = now(d.conference("room", 1_000 + HOST_TTL_MS)).ok();
        assert_eq!(c.map(|c| c.hosts.is_empty()), Some(true));
        // 0 participants removes the host at once.
        assert!(now(d.set_host("room", 0, &r.id, 2, 20_000)).is_ok());
        assert!(now(d.set_host("room", 0, &r.id, 0, 20_001)).is_ok());
        let c = now(d.conference("room", 20_002)).ok();
        assert_eq!(c.map(|c| c.hosts.is_empty()), Some(true));
    }
}
