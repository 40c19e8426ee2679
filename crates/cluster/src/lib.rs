//! The kaskade cluster layer: which bridges exist, which rooms they host, and where a joining
//! participant goes.
//!
//! - [`node`]: what a bridge publishes about itself (its [`NodeRecord`]) and when a record is
//!   fresh enough to place anyone on it;
//! - [`select`]: bridge selection, pure functions of a snapshot and `now` (Jicofo's
//!   region-based order, DESIGN.md section 6);
//! - [`directory`]: the [`Directory`] trait every backend implements;
//! - [`memory`]: the embedded in-memory directory, the default of a single node;
//! - [`redis_backend`]: the directory in Redis, for a fleet.
//!
//! Time is always an input (`now_ms`, milliseconds since the Unix epoch, the clock the
//! records carry), so everything here is deterministic and tested without a clock.

pub mod directory;
pub mod memory;
pub mod node;
pub mod redis_backend;
pub mod select;

pub use directory::{ConferenceEntry, Directory, DirectoryError};
pub use memory::MemoryDirectory;
pub use node::{NodeId, NodeRecord, RecordError};
pub use redis_backend::{RedisConfig, RedisDirectory};
pub use select::{Placements, Rule, Selection, SelectionParams, Strategy};
