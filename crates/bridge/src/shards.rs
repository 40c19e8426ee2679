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
        let i = id.0 as usize % self.handles.len();
        &self.handles[i]
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
        for rx in waiting {
            let s = rx.await.ok()?;
            all.conferences.extend(s.conferences);
            all.legs += s.legs;
            all.learned_addresses += s.learned_addresses;
            all.octo_peers.extend(s.octo_peers);
        }
        Some(all)
    }

    /// Sends a command made by `make` to every shard; false when one has stopped.
    pub fn send_all(&self, make: impl Fn() -> Command) -> bool {
        self.handles.iter().all(|h| h.commands.send(make()).is_ok())
    }
}
