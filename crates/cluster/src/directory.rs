//! The directory every backend implements: the node registry and the conference directory.
//!
//! Records carry their own time (`updated_ms`), readers judge freshness against `now_ms`,
//! and backends expire entries by TTL, so a dead node's records go by themselves and no node
//! ever deletes another's state.

use std::collections::HashMap;
use std::future::Future;

use crate::node::{NodeId, NodeRecord, RecordError};

/// A host entry of a conference is dropped this long after the hosting node last refreshed
/// it (every heartbeat). The Octo soft state (3 s) already removes a dead bridge's
/// participants from the others; this only keeps it from being chosen as a host.
pub const HOST_TTL_MS: u64 = 10_000;

/// A room as the directory knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConferenceEntry {
    pub room: String,
    /// The 32-bit Octo conference id: handed out once per room, never 0, never shared by two
    /// live rooms.
    pub id: u32,
    /// The bridges hosting it, with their participant counts, fresh entries only.
    pub hosts: HashMap<NodeId, u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The backend cannot be reached (connection refused, timeout, failover in progress).
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with something we refuse to act on.
    #[error("directory data refused: {0}")]
    Refused(String),
    #[error("node record refused: {0}")]
    BadRecord(#[from] RecordError),
    /// Every conference id is taken (2^32 - 1 live rooms: never in practice).
    #[error("no free conference id")]
    Exhausted,
}

impl DirectoryError {
    /// The metric label of the error kind.
    pub fn kind(&self) -> &'static str {
        match self {
            DirectoryError::Unavailable(_) => "unavailable",
            DirectoryError::Refused(_) => "refused",
            DirectoryError::BadRecord(_) => "bad_record",
            DirectoryError::Exhausted => "exhausted",
        }
    }
}

/// What the registry returned: the valid records, and how many were refused.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeSnapshot {
    pub nodes: Vec<NodeRecord>,
    /// Records that failed [`NodeRecord::validate`] or did not parse (counted by the caller).
    pub refused: usize,
}

/// A cluster directory. Every method may wait on the network: call it from signaling and
/// housekeeping, never from a media thread.
pub trait Directory: Send + Sync + 'static {
    /// The backend's name for logs and metrics ("memory", "redis").
    fn backend(&self) -> &'static str;

    /// Creates or refreshes this node's record (a heartbeat).
    fn publish(
        &self,
        record: &NodeRecord,
    ) -> impl Future<Output = Result<(), DirectoryError>> + Send;

    /// Removes this node's record at once (a clean shutdown); a crashed node's record
    /// expires instead.
    fn withdraw(&self, node: &NodeId) -> impl Future<Output = Result<(), DirectoryError>> + Send;

    /// Every live node record.
    fn nodes(
        &self,
        now_ms: u64,
    ) -> impl Future<Output = Result<NodeSnapshot, DirectoryError>> + Send;

    /// The room's entry, allocating its conference id atomically if the room is new.
    fn conference(
        &self,
        room: &str,
        now_ms: u64,
    ) -> impl Future<Output = Result<ConferenceEntry, DirectoryError>> + Send;

    /// Records that `node` hosts `participants` of the room, which it knows as conference
    /// `id` (refreshing the entry's TTL, and restoring the room's id if the backend lost it);
    /// 0 removes the entry.
    fn set_host(
        &self,
        room: &str,
        id: u32,
        node: &NodeId,
        participants: u32,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), DirectoryError>> + Send;

    /// The rooms some live bridge hosts, with their hosts (the admin API's cluster-wide
    /// list), at most `limit` of them, ordered by room name.
    fn conferences(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ConferenceEntry>, DirectoryError>> + Send;
}
