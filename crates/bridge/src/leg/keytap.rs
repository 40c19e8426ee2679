//! The SRTP master key and salt a leg's DTLS handshake produced, seen through `rtc`'s crypto
//! provider interface.
//!
//! `rtc` 0.21 keeps a leg's SRTP contexts private, and forwarded media only needs one thing from
//! them: to be encrypted the way the leg's own context would. The key derivation of its SRTP
//! crate (RFC 3711 4.3) runs on the crypto provider the leg is built with, and its first call is
//! for the leg's own (sending) context: AES on the master key, over a block that starts with the
//! master salt (label 0, index 0). [`KeyTap`] wraps the default provider and keeps that first
//! call. What it yields is only a candidate: the lean egress (lean.rs) uses it only after it
//! encrypted a real packet exactly as `rtc` did, so a change of that order in `rtc` shows up as
//! a mismatch (counted, and the leg keeps `rtc`'s path), never as undecryptable media.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use rtc::crypto::{
    ActiveKeyExchange, AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CbcAlgorithm, CbcCipher,
    CryptoAlgorithm, CryptoError, HashAlgorithm, HmacAlgorithm, KeyExchangeAlgorithm, Mac,
    PublicKey, RTCCrypto, RTCCryptoProvider, RTCRandom, SignatureScheme, SigningKey, StreamCipher,
    StreamCipherAlgorithm,
};

/// The first key-derivation input a leg's SRTP setup used: the master key, and the PRF input
/// block that holds the master salt.
#[derive(Clone)]
pub struct DerivationInput {
    pub master_key: Vec<u8>,
    pub block: [u8; 16],
}

impl DerivationInput {
    /// The master salt, for a profile whose salt is `len` bytes (12 for AEAD-GCM, 14 for AES-CM).
    pub fn salt(&self, len: usize) -> Option<&[u8]> {
        self.block.get(..len)
    }
}

/// A crypto provider for one leg: the default one, plus a record of the first SRTP key
/// derivation.
pub struct KeyTap {
    crypto: TapCrypto,
}

struct TapCrypto {
    inner: Arc<dyn RTCCryptoProvider>,
    /// Written once, at the end of the DTLS handshake; read once, when the lean egress starts.
    first: Mutex<Option<DerivationInput>>,
    /// Key derivation steps so far: a later handshake (new keys) moves it.
    derivations: AtomicU32,
}

impl KeyTap {
    pub fn new(inner: Arc<dyn RTCCryptoProvider>) -> Self {
        Self {
            crypto: TapCrypto {
                inner,
                first: Mutex::new(None),
                derivations: AtomicU32::new(0),
            },
        }
    }

    /// The first key derivation's input, once the handshake has run it.
    pub fn first_derivation(&self) -> Option<DerivationInput> {
        self.crypto.first.lock().ok().and_then(|g| g.clone())
    }

    /// How many key derivation steps the leg ran: unchanged as long as its keys are.
    pub fn derivations(&self) -> u32 {
        self.crypto.derivations.load(Ordering::Relaxed)
    }

    /// The wrapped provider's operations, for contexts built outside `rtc`.
    pub fn inner_crypto(&self) -> &dyn RTCCrypto {
        self.crypto.inner.crypto()
    }
}

impl RTCCryptoProvider for KeyTap {
    fn name(&self) -> &'static str {
        "kaskade-keytap"
    }

    fn crypto(&self) -> &dyn RTCCrypto {
        &self.crypto
    }

    fn random(&self) -> &dyn RTCRandom {
        self.crypto.inner.random()
    }
}

impl RTCCrypto for TapCrypto {
    fn supports(&self, algorithm: CryptoAlgorithm) -> bool {
        self.inner.crypto().supports(algorithm)
    }

    fn hash(&self, algorithm: HashAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.crypto().hash(algorithm, data)
    }

    fn block_encrypt(
        &self,
        algorithm: BlockCipherAlgorithm,
        key: &[u8],
        block: &mut [u8],
    ) -> Result<(), CryptoError> {
        // Only SRTP key derivation encrypts single blocks; keep the first input.
        self.derivations.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first.lock()
            && first.is_none()
            && let Ok(b) = <[u8; 16]>::try_from(&*block)
        {
            *first = Some(DerivationInput {
                master_key: key.to_vec(),
                block: b,
            });
        }
        self.inner.crypto().block_encrypt(algorithm, key, block)
    }

    fn new_hmac(&self, algorithm: HmacAlgorithm, key: &[u8]) -> Result<Box<dyn Mac>, CryptoError> {
        self.inner.crypto().new_hmac(algorithm, key)
    }

    fn new_stream_cipher(
        &self,
        algorithm: StreamCipherAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn StreamCipher>, CryptoError> {
        self.inner.crypto().new_stream_cipher(algorithm, key)
    }

    fn new_aead(
        &self,
        algorithm: AeadAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn AeadCipher>, CryptoError> {
        self.inner.crypto().new_aead(algorithm, key)
    }

    fn new_cbc(
        &self,
        algorithm: CbcAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn CbcCipher>, CryptoError> {
        self.inner.crypto().new_cbc(algorithm, key)
    }

    fn start_key_exchange(
        &self,
        algorithm: KeyExchangeAlgorithm,
    ) -> Result<Box<dyn ActiveKeyExchange>, CryptoError> {
        self.inner.crypto().start_key_exchange(algorithm)
    }

    fn generate_signing_key(
        &self,
        scheme: SignatureScheme,
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().generate_signing_key(scheme)
    }

    fn import_signing_key(
        &self,
        scheme: SignatureScheme,
        pkcs8_der: &[u8],
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().import_signing_key(scheme, pkcs8_der)
    }

    fn verify_signature(
        &self,
        scheme: SignatureScheme,
        public_key: PublicKey<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.inner
            .crypto()
            .verify_signature(scheme, public_key, message, signature)
    }
}
