//! Link keys: HKDF-SHA256 from the cluster secret, one key and IV per
//! directed link (sender bridge, receiver bridge) and suite.
//!
//! ```text
//! PRK  = HKDF-Extract(salt = "kaskade octo v1", IKM = cluster secret)
//! info = "kaskade octo v1 link" || suite id (1 byte)
//!        || sender bridge id (u32 BE) || receiver bridge id (u32 BE)
//! OKM  = HKDF-Expand(PRK, info, key_len + 12)
//! key  = OKM[0 .. key_len]      (16 bytes AES-128-GCM, 32 bytes ChaCha20-Poly1305)
//! iv   = OKM[key_len ..]        (12 bytes)
//! nonce(counter) = iv XOR (0x00000000 || counter as u64 BE)
//! ```
//!
//! Why per directed link: A->B and B->A each own a key, so the two directions
//! can count independently from any start without ever sharing a nonce, and a
//! packet sealed for B fails authentication at C (the receiver id is in the
//! key, not in the header). The suite id is in `info` so one secret never
//! yields the same key bytes for two algorithms. The nonce is the TLS 1.3
//! construction: a secret per-link IV masked by the counter, unique as long as
//! the counter never repeats for the link.

use crate::error::ConfigError;
use crate::header::TAG_LEN;
use crate::ids::{BridgeId, LinkCounter};
use ring::{aead, hkdf};
use std::fmt;

/// HKDF-Extract salt.
pub const HKDF_SALT: &[u8] = b"kaskade octo v1";

/// Prefix of the HKDF-Expand info.
pub const HKDF_INFO_PREFIX: &[u8] = b"kaskade octo v1 link";

/// Shortest cluster secret accepted. 16 random bytes give the 128-bit
/// security of AES-128; 32 random bytes are recommended.
pub const MIN_SECRET_LEN: usize = 16;

/// Length of the AEAD nonce and of the per-link IV.
pub const NONCE_LEN: usize = 12;

const MAX_KEY_LEN: usize = 32;

/// AEAD suite of a cluster. One suite per cluster, like the secret: the
/// header does not name it, and a mismatch shows up as [`crate::OpenError::Auth`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Suite {
    /// AES-128-GCM: fastest where the CPU has AES-NI/PMULL (every server CPU).
    Aes128Gcm,
    /// ChaCha20-Poly1305: constant-time and fast without AES hardware.
    ChaCha20Poly1305,
}

impl Suite {
    /// Both suites.
    pub const ALL: [Suite; 2] = [Suite::Aes128Gcm, Suite::ChaCha20Poly1305];

    /// The byte mixed into the HKDF info.
    pub const fn id(self) -> u8 {
        match self {
            Suite::Aes128Gcm => 1,
            Suite::ChaCha20Poly1305 => 2,
        }
    }

    /// Key length in bytes.
    pub const fn key_len(self) -> usize {
        match self {
            Suite::Aes128Gcm => 16,
            Suite::ChaCha20Poly1305 => 32,
        }
    }

    /// Configuration / test-vector name.
    pub const fn name(self) -> &'static str {
        match self {
            Suite::Aes128Gcm => "aes128gcm",
            Suite::ChaCha20Poly1305 => "chacha20poly1305",
        }
    }

    /// Parses a configuration name (as [`Suite::name`], case-insensitive,
    /// with `-`/`_` ignored, so "AES-128-GCM" and "chacha20_poly1305" work).
    pub fn from_name(name: &str) -> Option<Suite> {
        let norm: String = name
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        Suite::ALL.into_iter().find(|s| s.name() == norm)
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Suite::Aes128Gcm => &aead::AES_128_GCM,
            Suite::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// The configured cluster secret, already run through HKDF-Extract.
///
/// Keeping only the PRK means the raw secret need not stay in memory, and
/// deriving a link's keys is a single HKDF-Expand.
#[derive(Clone)]
pub struct ClusterSecret {
    prk: hkdf::Prk,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl ClusterSecret {
    /// From the secret's bytes (the IKM). All bridges of a cluster must use
    /// the same bytes.
    pub fn new(secret: &[u8]) -> Result<ClusterSecret, ConfigError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::SecretTooShort {
                len: secret.len(),
                min: MIN_SECRET_LEN,
            });
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret);
        Ok(ClusterSecret { prk })
    }

    /// Derives the key and IV of the directed link `sender -> receiver`.
    pub fn link_keys(
        &self,
        suite: Suite,
        sender: BridgeId,
        receiver: BridgeId,
    ) -> Result<LinkKeys, ConfigError> {
        if sender == receiver {
            return Err(ConfigError::SelfLink);
        }
        let suite_id = [suite.id()];
        let sender_be = sender.0.to_be_bytes();
        let receiver_be = receiver.0.to_be_bytes();
        let info: [&[u8]; 4] = [HKDF_INFO_PREFIX, &suite_id, &sender_be, &receiver_be];
        let key_len = suite.key_len();
        let mut okm = [0u8; MAX_KEY_LEN + NONCE_LEN];
        // key_len + 12 <= 44: never out of range.
        let (out, _) = okm.split_at_mut(key_len + NONCE_LEN);
        self.prk
            .expand(&info, OkmLen(out.len()))
            .and_then(|okm| okm.fill(out))
            .map_err(|_| ConfigError::Crypto)?;
        let (k, i) = out.split_at(key_len);
        let mut key = [0u8; MAX_KEY_LEN];
        key.split_at_mut(key_len).0.copy_from_slice(k);
        let iv: [u8; NONCE_LEN] = i.try_into().map_err(|_| ConfigError::Crypto)?;
        Ok(LinkKeys { suite, key, iv })
    }
}

/// Output length for ring's HKDF-Expand.
#[derive(Clone, Copy)]
struct OkmLen(usize);

impl hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// Key and IV of one directed link. Public so the test vectors can show
/// them; the bridge only hands them to [`crate::Sealer`]/[`crate::Opener`].
#[derive(Clone, PartialEq, Eq)]
pub struct LinkKeys {
    suite: Suite,
    key: [u8; MAX_KEY_LEN],
    iv: [u8; NONCE_LEN],
}

impl fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkKeys")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl LinkKeys {
    /// The suite these keys are for.
    pub const fn suite(&self) -> Suite {
        self.suite
    }

    /// The AEAD key (16 or 32 bytes).
    pub fn key(&self) -> &[u8] {
        let len = self.suite.key_len();
        self.key.get(..len).unwrap_or(&self.key)
    }

    /// The per-link IV.
    pub const fn iv(&self) -> &[u8; NONCE_LEN] {
        &self.iv
    }

    /// The nonce of the packet with `counter`.
    pub fn nonce(&self, counter: LinkCounter) -> [u8; NONCE_LEN] {
        nonce(&self.iv, counter)
    }
}

/// `iv XOR (0x00000000 || counter BE)`.
pub fn nonce(iv: &[u8; NONCE_LEN], counter: LinkCounter) -> [u8; NONCE_LEN] {
    let mut n = *iv;
    let c = counter.0.to_be_bytes();
    for (dst, src) in n.iter_mut().skip(NONCE_LEN - 8).zip(c) {
        *dst ^= src;
    }
    n
}

/// A ready AEAD key with its IV: what sealing and opening use per packet.
pub(crate) struct LinkCipher {
    key: aead::LessSafeKey,
    iv: [u8; NONCE_LEN],
}

impl LinkCipher {
    pub(crate) fn new(keys: &LinkKeys) -> Result<LinkCipher, ConfigError> {
        let unbound = aead::UnboundKey::new(keys.suite.algorithm(), keys.key())
            .map_err(|_| ConfigError::Crypto)?;
        Ok(LinkCipher {
            key: aead::LessSafeKey::new(unbound),
            iv: keys.iv,
        })
    }

    /// Encrypts `payload` in place and returns the tag.
    pub(crate) fn seal(
        &self,
        counter: LinkCounter,
        aad: &[u8],
        payload: &mut [u8],
    ) -> Option<[u8; TAG_LEN]> {
        let n = aead::Nonce::assume_unique_for_key(nonce(&self.iv, counter));
        let tag = self
            .key
            .seal_in_place_separate_tag(n, aead::Aad::from(aad), payload)
            .ok()?;
        tag.as_ref().try_into().ok()
    }

    /// Verifies and decrypts `ciphertext` in place against `tag`. On failure
    /// the contents of `ciphertext` are unspecified; the caller drops it.
    pub(crate) fn open(
        &self,
        counter: LinkCounter,
        aad: &[u8],
        ciphertext: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        let n = aead::Nonce::assume_unique_for_key(nonce(&self.iv, counter));
        self.key
            .open_in_place_separate_tag(
                n,
                aead::Aad::from(aad),
                aead::Tag::from(*tag),
                ciphertext,
                0..,
            )
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secret_refused() {
        assert_eq!(
            ClusterSecret::new(&[0; 15]).err(),
            Some(ConfigError::SecretTooShort { len: 15, min: 16 })
        );
        assert!(ClusterSecret::new(&[0; 16]).is_ok());
    }

    #[test]
    fn keys_differ_per_direction_suite_and_secret() {
        let s = ClusterSecret::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let t = ClusterSecret::new(b"0123456789abcdef0123456789abcdeF").unwrap();
        let (a, b) = (BridgeId(1), BridgeId(2));
        let ab = s.link_keys(Suite::Aes128Gcm, a, b).unwrap();
        let ba = s.link_keys(Suite::Aes128Gcm, b, a).unwrap();
        let ab_c = s.link_keys(Suite::ChaCha20Poly1305, a, b).unwrap();
        let ab_t = t.link_keys(Suite::Aes128Gcm, a, b).unwrap();
        assert_eq!(ab.key().len(), 16);
        assert_eq!(ab_c.key().len(), 32);
        assert_ne!(ab.key(), ba.key());
        assert_ne!(ab.iv(), ba.iv());
        assert_ne!(ab.key(), &ab_c.key()[..16]);
        assert_ne!(ab.key(), ab_t.key());
        assert_eq!(
            s.link_keys(Suite::Aes128Gcm, a, a),
            Err(ConfigError::SelfLink)
        );
    }

    #[test]
    fn nonce_masks_low_eight_bytes() {
        let iv = [0xaa; 12];
        let n = nonce(&iv, LinkCounter(0x0102_0304_0506_0708));
        assert_eq!(
            n,
            [
                0xaa, 0xaa, 0xaa, 0xaa, 0xab, 0xa8, 0xa9, 0xae, 0xaf, 0xac, 0xad, 0xa2
            ]
        );
    }

    #[test]
    fn suite_names_parse() {
        assert_eq!(Suite::from_name("AES-128-GCM"), Some(Suite::Aes128Gcm));
        assert_eq!(Suite::from_name("aes128gcm"), Some(Suite::Aes128Gcm));
        assert_eq!(
            Suite::from_name("chacha20_poly1305"),
            Some(Suite::ChaCha20Poly1305)
        );
        assert_eq!(Suite::from_name("aes256gcm"), None);
    }

    #[test]
    fn debug_never_prints_key_material() {
        let s = ClusterSecret::new(&[0x42; 32]).unwrap();
        let k = s
            .link_keys(Suite::Aes128Gcm, BridgeId(1), BridgeId(2))
            .unwrap();
        let text = format!("{s:?} {k:?}");
        assert_eq!(
            text,
            "ClusterSecret(<redacted>) LinkKeys { suite: Aes128Gcm, .. }"
        );
    }
}
