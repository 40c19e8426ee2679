//! The node's media shards as signaling, the admin API and the cluster side see them: which
//! shard a participant is placed on, and node-wide answers made of every shard's.
//!
//! A conference starts on one shard, chosen from its id. Once that shard holds
//! `media.spread_at` of its participants, the next ones are placed on the following shards,
//! and the conference spans them: each shard is to the others what a bridge is to its Octo
//! peers (shard/siblings.rs). Placement is signaling's: it keeps the count of each
//! conference's participants per shard and tells every shard which shards a conference spans
//! whenever that changes, before the join that changes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kaskade_sfu::ConferenceId;
use tokio::sync::oneshot;

use crate::demux::ShardIndex;
use crate::metrics::Metrics;
use crate::shard::{Command, ShardHandle, Snapshot};

/// Which shards of the node carry participants of a conference: bit `i` for shard `i`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardSet(pub u32);

impl ShardSet {
    pub fn one(shard: ShardIndex) -> Self {
        Self(1u32 << (shard.0 % 32))
    }
    pub fn contains(self, shard: ShardIndex) -> bool {
        shard.0 < 32 && self.0 & (1u32 << shard.0) != 0
    }
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = ShardIndex> {
        (0..32u8)
            .filter(move |i| self.0 & (1u32 << i) != 0)
            .map(ShardIndex)
    }
    /// The lowest shard in the set.
    pub fn first(self) -> Option<ShardIndex> {
        (self.0 != 0).then(|| ShardIndex(self.0.trailing_zeros() as u8))
    }
}

/// Where one conference's participants are.
#[derive(Default)]
struct Room {
    /// Participants per shard.
    on: Vec<usize>,
    /// Each identity's shard (and how many sessions hold it): a rejoin with the same identity
    /// must reach the shard of the participant it replaces.
    identities: HashMap<String, (ShardIndex, usize)>,
}

impl Room {
    fn span(&self) -> ShardSet {
        ShardSet(
            self.on
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .fold(0, |m, (i, _)| m | (1u32 << i)),
        )
    }
    fn total(&self) -> usize {
        self.on.iter().sum()
    }
}

/// The shard a new participant of a conference goes to: the one its identity is already on;
/// else the first shard from the conference's own (`home`) on with fewer than `spread_at` of
/// its participants; else, all being full, the one with fewest. `spread_at` 0: always `home`.
fn choose(on: &[usize], home: usize, spread_at: usize) -> usize {
    let n = on.len();
    if spread_at == 0 || n <= 1 {
        return home;
    }
    let order = (0..n).map(|k| (home + k) % n);
    order
        .clone()
        .find(|s| on.get(*s).copied().unwrap_or(0) < spread_at)
        .or_else(|| order.min_by_key(|s| on.get(*s).copied().unwrap_or(0)))
        .unwrap_or(home)
}

/// Why a participant was not placed.
#[derive(Debug, PartialEq, Eq)]
pub enum PlaceError {
    /// The conference has this many participants on this node, its most.
    Full(usize),
}

struct Placements {
    rooms: HashMap<ConferenceId, Room>,
}

struct Inner {
    handles: Vec<ShardHandle>,
    spread_at: usize,
    placements: Mutex<Placements>,
    metrics: Option<Arc<Metrics>>,
}

/// A participant's place on a shard, given back when the session that holds it ends.
pub struct ShardSlot {
    inner: Arc<Inner>,
    conference: ConferenceId,
    shard: ShardIndex,
    identity: String,
}

impl ShardSlot {
    pub fn handle(&self) -> &ShardHandle {
        &self.inner.handles[usize::from(self.shard.0)]
    }
    pub fn shard(&self) -> ShardIndex {
        self.shard
    }
}

impl std::fmt::Debug for ShardSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardSlot")
            .field("conference", &self.conference)
            .field("shard", &self.shard)
            .finish()
    }
}

impl Drop for ShardSlot {
    fn drop(&mut self) {
        self.inner
            .release(self.conference, self.shard, &self.identity);
    }
}

impl Inner {
    fn placements(&self) -> std::sync::MutexGuard<'_, Placements> {
        // Nothing here panics while holding the lock; a poisoned one still has sound counts.
        self.placements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tells every shard which shards `conference` spans now (called with the lock held, so
    /// the shards hear the changes in the order they happened).
    fn tell_span(&self, conference: ConferenceId, was: ShardSet, now: ShardSet) {
        if was == now {
            return;
        }
        for h in &self.handles {
            let _ = h.commands.send(Command::Span {
                conference,
                shards: now,
            });
        }
        if let Some(m) = self.metrics.as_ref() {
            match (was.len() > 1, now.len() > 1) {
                (false, true) => m.spread_conferences.inc(),
                (true, false) => m.spread_conferences.dec(),
                _ => {}
            }
        }
    }

    fn release(&self, conference: ConferenceId, shard: ShardIndex, identity: &str) {
        let mut p = self.placements();
        let Some(room) = p.rooms.get_mut(&conference) else {
            return;
        };
        let was = room.span();
        if let Some(n) = room.on.get_mut(usize::from(shard.0)) {
            *n = n.saturating_sub(1);
        }
        if let Some((_, held)) = room.identities.get_mut(identity) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                room.identities.remove(identity);
            }
        }
        let now = room.span();
        if room.total() == 0 {
            p.rooms.remove(&conference);
        }
        self.tell_span(conference, was, now);
    }
}

#[derive(Clone)]
pub struct Shards {
    inner: Arc<Inner>,
}

impl Shards {
    /// `handles` in shard index order; at least one. A conference takes up to `spread_at`
    /// participants on a shard before it spans the next (0: never).
    pub fn new(
        handles: Vec<ShardHandle>,
        spread_at: usize,
        metrics: Option<Arc<Metrics>>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!handles.is_empty(), "a node needs a shard");
        Ok(Self {
            inner: Arc::new(Inner {
                handles,
                spread_at,
                placements: Mutex::new(Placements {
                    rooms: HashMap::new(),
                }),
                metrics,
            }),
        })
    }

    pub fn len(&self) -> usize {
        self.inner.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.handles.is_empty()
    }

    pub fn all(&self) -> &[ShardHandle] {
        &self.inner.handles
    }

    /// The shard a conference starts on. Conference ids are hashes of the room name
    /// (directory.rs), so the remainder spreads rooms evenly.
    pub fn home(&self, id: ConferenceId) -> ShardIndex {
        crate::shard::siblings::conference_shard(id.0, self.len())
    }

    /// Places a participant of `conference` with `identity` on a shard, unless the node
    /// already holds `max` of the conference's participants (0: no cap). Every shard hears of
    /// a change of the conference's span before this returns, so before the join is sent.
    pub fn place(
        &self,
        conference: ConferenceId,
        identity: &str,
        max: usize,
    ) -> Result<ShardSlot, PlaceError> {
        let inner = &self.inner;
        let home = usize::from(self.home(conference).0);
        let mut p = inner.placements();
        let room = p.rooms.entry(conference).or_default();
        room.on.resize(inner.handles.len(), 0);
        let again = room.identities.get(identity).map(|(s, _)| *s);
        if again.is_none() && max > 0 && room.total() >= max {
            return Err(PlaceError::Full(room.total()));
        }
        let shard = match again {
            Some(s) => s,
            None => ShardIndex(choose(&room.on, home, inner.spread_at) as u8),
        };
        let was = room.span();
        if let Some(n) = room.on.get_mut(usize::from(shard.0)) {
            *n += 1;
        }
        room.identities
            .entry(identity.to_owned())
            .or_insert((shard, 0))
            .1 += 1;
        let now = room.span();
        if usize::from(shard.0) != home
            && let Some(m) = inner.metrics.as_ref()
        {
            m.spread_placements.inc();
        }
        inner.tell_span(conference, was, now);
        drop(p);
        Ok(ShardSlot {
            inner: inner.clone(),
            conference,
            shard,
            identity: identity.to_owned(),
        })
    }

    /// Whether a shard has stopped (its thread ended): the node is not healthy.
    pub fn any_stopped(&self) -> bool {
        self.all().iter().any(|h| h.commands.is_closed())
    }

    /// Every shard's snapshot as one (None when a shard has stopped).
    pub async fn snapshot(&self) -> Option<Snapshot> {
        let mut waiting = Vec::with_capacity(self.len());
        for h in self.all() {
            let (tx, rx) = oneshot::channel();
            h.commands.send(Command::Snapshot { reply: tx }).ok()?;
            waiting.push(rx);
        }
        let mut all = Snapshot::default();
        for (i, rx) in waiting.into_iter().enumerate() {
            let s = rx.await.ok()?;
            merge_conferences(&mut all.conferences, s.conferences);
            all.legs += s.legs;
            all.learned_addresses += s.learned_addresses;
            if i == 0 {
                // Every shard links to every peer; the gateway (shard 0) measures the links.
                all.octo_peers = s.octo_peers;
            } else {
                add_remote_participants(&mut all.octo_peers, &s.octo_peers);
            }
        }
        Some(all)
    }

    /// Sends a command made by `make` to every shard; false when one has stopped.
    pub fn send_all(&self, make: impl Fn() -> Command) -> bool {
        self.all().iter().all(|h| h.commands.send(make()).is_ok())
    }
}

/// Adds another shard's conferences: one that spans several shards is listed once, with each
/// participant once (every shard of it knows them all).
fn merge_conferences(
    into: &mut Vec<crate::shard::ConferenceSnapshot>,
    from: Vec<crate::shard::ConferenceSnapshot>,
) {
    for c in from {
        match into.iter_mut().find(|x| x.conference == c.conference) {
            Some(x) => {
                for p in c.participants {
                    if !x.participants.iter().any(|q| q.id == p.id) {
                        x.participants.push(p);
                    }
                }
            }
            None => into.push(c),
        }
    }
}

/// Adds another shard's count of each peer's participants to the gateway's list.
fn add_remote_participants(into: &mut [serde_json::Value], from: &[serde_json::Value]) {
    for p in from {
        let (Some(id), Some(n)) = (p["id"].as_u64(), p["remote_participants"].as_u64()) else {
            continue;
        };
        if let Some(q) = into.iter_mut().find(|q| q["id"].as_u64() == Some(id)) {
            let sum = q["remote_participants"].as_u64().unwrap_or(0) + n;
            q["remote_participants"] = sum.into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[test]
    fn a_conference_fills_its_shard_then_the_next() {
        // 3 shards, home 1, 2 a shard.
        let mut on = vec![0; 3];
        let mut order = Vec::new();
        for _ in 0..8 {
            let s = choose(&on, 1, 2);
            on[s] += 1;
            order.push(s);
        }
        assert_eq!(
            order,
            vec![1, 1, 2, 2, 0, 0, 1, 2],
            "all full: the emptiest, from home on"
        );
        assert_eq!(choose(&[5, 0], 0, 0), 0, "spread_at 0: never leaves home");
        assert_eq!(choose(&[9], 0, 2), 0, "one shard");
        // A shard that emptied is filled again before the next one.
        assert_eq!(choose(&[2, 0, 2], 0, 2), 1);
    }

    fn handles(n: usize) -> (Vec<ShardHandle>, Vec<mpsc::UnboundedReceiver<Command>>) {
        (0..n)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                let h = ShardHandle {
                    commands: tx,
                    media_addr: "127.0.0.1:1".parse().expect("addr"),
                };
                (h, rx)
            })
            .unzip()
    }

    fn spans(rx: &mut mpsc::UnboundedReceiver<Command>) -> Vec<ShardSet> {
        let mut v = Vec::new();
        while let Ok(c) = rx.try_recv() {
            if let Command::Span { shards, .. } = c {
                v.push(shards);
            }
        }
        v
    }

    #[test]
    fn every_shard_hears_a_span_change_before_the_join_and_after_the_last_leave() {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (h, mut rx) = handles(2);
        let shards = Shards::new(h, 2, Some(metrics.clone())).expect("shards");
        let c = ConferenceId(4); // home 0
        let a = shards.place(c, "a", 0).expect("a");
        let b = shards.place(c, "b", 0).expect("b");
        assert_eq!((a.shard(), b.shard()), (ShardIndex(0), ShardIndex(0)));
        assert_eq!(
            spans(&mut rx[1]),
            vec![ShardSet(0b01)],
            "on its home: one change"
        );
        let c3 = shards.place(c, "c", 0).expect("c");
        assert_eq!(c3.shard(), ShardIndex(1), "home full");
        for r in rx.iter_mut() {
            assert_eq!(spans(r).last(), Some(&ShardSet(0b11)));
        }
        assert_eq!(metrics.spread_conferences.get(), 1);
        assert_eq!(metrics.spread_placements.get(), 1);
        // The same identity again (a reload) goes where it is, full or not.
        let c4 = shards
            .place(c, "c", 3)
            .expect("the same identity replaces, room full or not");
        assert_eq!(c4.shard(), ShardIndex(1));
        assert_eq!(shards.place(c, "d", 4).err(), Some(PlaceError::Full(4)));
        drop(c4);
        drop(c3);
        assert_eq!(spans(&mut rx[0]), vec![ShardSet(0b01)], "back to its home");
        assert_eq!(metrics.spread_conferences.get(), 0);
        drop((a, b));
        assert_eq!(spans(&mut rx[0]), vec![ShardSet(0)], "gone");
    }

    #[test]
    fn peers_show_the_remote_participants_of_every_shard() {
        let mut gateway = vec![
            serde_json::json!({"id": 2, "name": "b", "remote_participants": 1}),
            serde_json::json!({"id": 3, "name": "c", "remote_participants": 0}),
        ];
        let other = vec![
            serde_json::json!({"id": 2, "name": "b", "remote_participants": 2}),
            serde_json::json!({"id": 9, "name": "gone", "remote_participants": 5}),
        ];
        add_remote_participants(&mut gateway, &other);
        assert_eq!(gateway[0]["remote_participants"], 3);
        assert_eq!(gateway[1]["remote_participants"], 0);
        assert_eq!(gateway.len(), 2);
    }
}
