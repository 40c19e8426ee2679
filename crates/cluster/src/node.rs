//! What a bridge publishes about itself, and when that is fresh enough to act on.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A record older than this is not selectable: its stress is too old to trust, and the node
/// may be gone (DESIGN.md section 6: "a node is available only if its stats are < 5 s old").
pub const STALE_AFTER_MS: u64 = 5_000;
/// A node publishes its record at least this often.
pub const HEARTBEAT_MS: u64 = 1_000;
/// Backends expire a record this long after its last heartbeat, so a dead node's entries go
/// by themselves; longer than [`STALE_AFTER_MS`] so an operator can still see a node that
/// just stopped answering.
pub const RECORD_TTL_MS: u64 = 10_000;

/// A bridge's name in the cluster (`bridge.id` of its config).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.to_owned())
    }
}

/// One bridge, as it last described itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    /// The Octo bridge id (1-255) that keys its links.
    pub octo_id: u32,
    pub region: String,
    /// Its Octo socket, as the other bridges reach it.
    pub octo_addr: SocketAddr,
    /// Its public signaling WebSocket URL (`ws://host:port/ws`), where redirected clients go.
    pub signaling_url: String,
    /// max(packet rate / capacity, CPU / 0.9), as measured by the node (0 = idle, 1 = full).
    pub stress: f64,
    pub participants: u32,
    pub conferences: u32,
    pub draining: bool,
    /// When the node wrote this record, ms since the Unix epoch.
    pub updated_ms: u64,
}

/// Why a record is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    #[error("node id must be 1-64 characters of [A-Za-z0-9._-]")]
    BadId,
    #[error("octo id {0} is not in 1-255")]
    BadOctoId(u32),
    #[error("region longer than 64 characters")]
    BadRegion,
    #[error("octo address {0} is unspecified or has port 0")]
    BadAddress(SocketAddr),
    #[error("signaling URL must be ws:// or wss:// and at most 512 characters")]
    BadUrl,
    #[error("stress {0} is not a finite number >= 0")]
    BadStress(f64),
    #[error("record does not parse: {0}")]
    Parse(String),
}

impl NodeRecord {
    /// Checks what other nodes will act on: a record from the directory is data from the
    /// network, and a bad one must be refused, never followed.
    pub fn validate(&self) -> Result<(), RecordError> {
        let id = &self.id.0;
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(RecordError::BadId);
        }
        if !(1..=255).contains(&self.octo_id) {
            return Err(RecordError::BadOctoId(self.octo_id));
        }
        if self.region.len() > 64 {
            return Err(RecordError::BadRegion);
        }
        if self.octo_addr.ip().is_unspecified() || self.octo_addr.port() == 0 {
            return Err(RecordError::BadAddress(self.octo_addr));
        }
        let url = &self.signaling_url;
        if url.len() > 512 || !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(RecordError::BadUrl);
        }
        if !self.stress.is_finite() || self.stress < 0.0 {
            return Err(RecordError::BadStress(self.stress));
        }
        Ok(())
    }

    /// Parses and validates a stored record.
    pub fn from_json(raw: &[u8]) -> Result<NodeRecord, RecordError> {
        let r: NodeRecord =
            serde_json::from_slice(raw).map_err(|e| RecordError::Parse(e.to_string()))?;
        r.validate()?;
        Ok(r)
    }

    pub fn to_json(&self) -> String {
        // A struct of strings and numbers always serializes; NaN stress is refused by
        // `validate` before anything is stored.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// How old the record is at `now_ms` (0 if it claims to be from the future).
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.updated_ms)
    }

    /// Whether a participant may be placed here at all: fresh and not draining.
    pub fn selectable(&self, now_ms: u64) -> bool {
        !self.draining && self.age_ms(now_ms) <= STALE_AFTER_MS
    }
}

#[cfg(test)]
pub(crate) fn record(id: &str, region: &str, stress: f64, now_ms: u64) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        octo_id: 1,
        region: region.into(),
        octo_addr: "127.0.0.1:4096".parse().unwrap_or_else(|_| unreachable!()),
        signaling_url: format!("ws://{id}.example:7880/ws"),
        stress,
        participants: 0,
        conferences: 0,
        draining: false,
        updated_ms: now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_records() {
        let good = record("b-1", "eu", 0.1, 1000);
        assert_eq!(good.validate(), Ok(()));
        let mut r = good.clone();
        r.id = NodeId("a b".into());
        assert_eq!(r.validate(), Err(RecordError::BadId));
        let mut r = good.clone();
        r.octo_id = 0;
        assert_eq!(r.validate(), Err(RecordError::BadOctoId(0)));
        let mut r = good.clone();
        r.octo_addr = "0.0.0.0:4096".parse().unwrap_or_else(|_| unreachable!());
        assert!(matches!(r.validate(), Err(RecordError::BadAddress(_))));
        let mut r = good.clone();
        r.signaling_url = "http://x/ws".into();
        assert_eq!(r.validate(), Err(RecordError::BadUrl));
        let mut r = good.clone();
        r.stress = f64::NAN;
        assert!(matches!(r.validate(), Err(RecordError::BadStress(_))));
        assert!(matches!(
            NodeRecord::from_json(b"{\"id\":1}"),
            Err(RecordError::Parse(_))
        ));
        let back = NodeRecord::from_json(good.to_json().as_bytes());
        assert_eq!(back, Ok(good));
    }

    #[test]
    fn freshness() {
        let r = record("b-1", "eu", 0.1, 10_000);
        assert!(r.selectable(10_000 + STALE_AFTER_MS));
        assert!(!r.selectable(10_001 + STALE_AFTER_MS));
        assert!(
            r.selectable(9_000),
            "clock skew into the future is not staleness"
        );
        let mut d = r.clone();
        d.draining = true;
        assert!(!d.selectable(10_000));
    }
}
