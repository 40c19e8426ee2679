//! Conference ids of the embedded directory, as the shard's tests and static-peer clusters
//! know them. The cluster directory (crates/cluster, `crate::cluster`) hands out the ids that
//! joins use; this is its embedded backend's hash.

use kaskade_sfu::ConferenceId;

/// The embedded directory's id of `room`: FNV-1a of the name, the same on every bridge of a
/// static-peer cluster without coordination.
pub fn conference_id(room: &str) -> ConferenceId {
    ConferenceId(kaskade_cluster::memory::hashed_conference_id(room))
}
