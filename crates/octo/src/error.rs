//! Errors. [`OpenError`] has one variant per reason a receiving bridge drops
//! a datagram, so the bridge can count drops by reason without parsing text.

use thiserror::Error;

/// Why a received datagram was dropped. Every variant means "drop it, count
/// it, do not answer": a reply to a bad packet would make the bridge a
/// reflector. `proto/octo.md`, "Receiver behaviour", says what each one
/// usually means operationally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum OpenError {
    /// Shorter than a header, or an encrypted packet shorter than header + tag.
    #[error("truncated Octo packet")]
    Truncated,
    /// Byte 0 is not magic `0x6` + version 1: not Octo, or a version we do not speak.
    #[error("not an Octo v1 packet (bad magic/version)")]
    BadVersion,
    /// Unassigned packet type or media type.
    #[error("unknown Octo packet or media type")]
    BadType,
    /// The AEAD tag did not verify: tampering, corruption, wrong secret or
    /// suite, or a packet sealed for another receiver.
    #[error("Octo packet failed authentication")]
    Auth,
    /// Counter already seen, or older than the replay window.
    #[error("Octo packet replayed or too old")]
    Replay,
    /// A plaintext packet reached a receiver configured for encryption.
    #[error("plaintext Octo packet refused")]
    PlaintextRefused,
    /// An encrypted packet reached a receiver configured for plaintext (it
    /// holds no keys): the two bridges disagree on the link security setting.
    #[error("encrypted Octo packet at a plaintext receiver")]
    EncryptedRefused,
    /// The sender bridge id is not a configured peer (or is our own id).
    #[error("Octo packet from unknown sender bridge")]
    UnknownSender,
    /// Datagram or payload larger than the protocol allows.
    #[error("oversized Octo packet")]
    Oversized,
}

impl OpenError {
    /// Every variant, in declaration order (for pre-registering metric labels).
    pub const ALL: [OpenError; 9] = [
        OpenError::Truncated,
        OpenError::BadVersion,
        OpenError::BadType,
        OpenError::Auth,
        OpenError::Replay,
        OpenError::PlaintextRefused,
        OpenError::EncryptedRefused,
        OpenError::UnknownSender,
        OpenError::Oversized,
    ];

    /// Stable snake_case name, for a metrics label and the test vectors.
    pub const fn label(self) -> &'static str {
        match self {
            OpenError::Truncated => "truncated",
            OpenError::BadVersion => "bad_version",
            OpenError::BadType => "bad_type",
            OpenError::Auth => "auth",
            OpenError::Replay => "replay",
            OpenError::PlaintextRefused => "plaintext_refused",
            OpenError::EncryptedRefused => "encrypted_refused",
            OpenError::UnknownSender => "unknown_sender",
            OpenError::Oversized => "oversized",
        }
    }
}

/// Why a packet could not be sealed. These are caller bugs or limits, never
/// caused by remote input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SealError {
    /// Payload longer than [`crate::MAX_PAYLOAD_LEN`]; split it (messages) or
    /// drop it (media).
    #[error("payload of {len} bytes exceeds the Octo limit of {max}")]
    Oversized {
        /// Payload length given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The caller's buffer cannot hold header + payload + tag.
    #[error("buffer of {have} bytes, sealing needs {need}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The link counter reached `u64::MAX`; the link key must not be used again.
    #[error("Octo link counter exhausted")]
    CounterExhausted,
    /// The AEAD implementation refused (cannot happen with valid lengths).
    #[error("AEAD seal failed")]
    Crypto,
}

/// Invalid configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The cluster secret is shorter than [`crate::MIN_SECRET_LEN`] bytes.
    #[error("Octo cluster secret must be at least {min} bytes, got {len}")]
    SecretTooShort {
        /// Length given.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// A link from a bridge to itself.
    #[error("an Octo link needs two different bridge ids")]
    SelfLink,
    /// The crypto library refused a key or a derivation (cannot happen with
    /// the fixed lengths used here; reported rather than assumed).
    #[error("key derivation failed")]
    Crypto,
}
