//! Octo: the wire format and link crypto between kaskade bridges.
//!
//! Pure and sans-I/O: it encodes and decodes the fixed header, seals and
//! opens packets with per-link AEAD keys, and keeps the replay window. The
//! bridge owns sockets, clocks and the peer list; this crate owns the bytes.
//! The normative description is `proto/octo.md`; its test vectors in
//! `proto/octo-vectors/` are checked by this crate's tests, so the spec and
//! the code cannot drift apart.
//!
//! ```
//! use kaskade_octo::*;
//!
//! let security = LinkSecurity::encrypted(Suite::Aes128Gcm, &[7u8; 32]).unwrap();
//! let (a, b) = (BridgeId(1), BridgeId(2));
//! // a sends to b ...
//! let mut sealer = Sealer::new(&security, a, b, LinkCounter(1_700_000_000_000_000)).unwrap();
//! let meta = PacketMeta::new(PacketType::Rtp, MediaType::Audio, ConferenceId(42), EndpointId(7));
//! let mut datagram = Vec::new();
//! sealer.seal_to_vec(&meta, b"an RTP packet", &mut datagram).unwrap();
//! // ... and b opens it.
//! let mut opener = Opener::new(security, b);
//! opener.add_peer(a).unwrap();
//! let (header, payload) = opener.open_in_place(&mut datagram).unwrap();
//! assert_eq!(header.conference, ConferenceId(42));
//! assert_eq!(&datagram[payload], b"an RTP packet");
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Decoding must never panic on input: forbid the constructs that can,
// outside unit tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo
    )
)]

pub mod control;
mod error;
mod header;
mod ids;
mod keys;
mod link;
mod replay;

pub use control::{Control, ControlError};
pub use error::{ConfigError, OpenError, SealError};
pub use header::{
    Flags, HEADER_LEN, Header, MAGIC, MAX_DATAGRAM_LEN, MAX_PAYLOAD_LEN, MediaType, PacketType,
    TAG_LEN, VERSION, VERSION_BYTE,
};
pub use ids::{BridgeId, ConferenceId, EndpointId, LinkCounter};
pub use keys::{
    ClusterSecret, HKDF_INFO_PREFIX, HKDF_SALT, LinkKeys, MIN_SECRET_LEN, NONCE_LEN, Suite, nonce,
};
pub use link::{LinkSecurity, Opener, PacketMeta, Sealer};
pub use replay::{REPLAY_WINDOW, ReplayReject, ReplayWindow};

/// The default UDP port of the Octo socket.
pub const DEFAULT_PORT: u16 = 4096;
