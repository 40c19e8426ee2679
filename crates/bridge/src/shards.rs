//! The node's media shards as signaling, the admin API and the cluster side see them: which
//! shard a conference lives on, and node-wide answers made of every shard's.
//!
//! A conference lives on one shard, chosen from its id, so every session of a room, on any
//! signaling connection, reaches the same shard without asking anyone.

use kaskade_sfu::ConferenceId;
use tokio::sync::oneshot;

use crate::shard::{Command, ShardHandle, Snapshot};

#[derive(Clone)]
pub struct Shards {
    handles: Vec<ShardHandle>,
}

impl Shards {
    /// `handles` in shard index order; at least one.
    pub fn new(handles: Vec<ShardHandle>) -> anyhow::Result<Self> {
        anyhow::ensure!(!handles.is_empty(), "a node needs a shard");
        Ok(Self { handles })
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    pub fn all(&self) -> &[ShardHandle] {
        &self.handles
    }

    /// The shard a conference lives on. Conference ids are hashes of the room name
    /// (directory.rs), so the remainder spreads rooms evenly.
    pub fn for_conference(&self, id: ConferenceId) -> &ShardHandle {
        let i = crate::shard::siblings::conference_shard(id.0, self.handles.len());
        &self.handles[usize::from(i.0)]
    }

    /// Whether a shard has stopped (its thread ended): the node is not healthy.
    pub fn any_stopped(&self) -> bool {
        self.handles.iter().any(|h| h.commands.is_closed())
    }

    /// Every shard's snapshot as one (None when a shard has stopped).
    pub async fn snapshot(&self) -> Option<Snapshot> {
        let mut waiting = Vec::with_capacity(self.handles.len());
        for h in &self.handles {
            let (tx, rx) = oneshot::channel();
            h.commands.send(Command::Snapshot { reply: tx }).ok()?;
            waiting.push(rx);
        }
        let mut all = Snapshot::default();
        for (i, rx) in waiting.into_iter().enumerate() {
            let s = rx.await.ok()?;
            all.conferences.extend(s.conferences);
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
        self.handles.iter().all(|h| h.commands.send(make()).is_ok())
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
