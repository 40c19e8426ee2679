//! Sealing and opening packets on a link: the per-packet hot path.
//!
//! A bridge holds one [`Sealer`] per remote bridge it sends to (a directed
//! link owns its key and counter) and one [`Opener`] for everything it
//! receives (it finds the sender's key and replay window from the header).
//! Neither allocates per packet: both work in the caller's buffer.

use crate::error::{ConfigError, OpenError, SealError};
use crate::header::{
    Flags, HEADER_LEN, Header, MAX_DATAGRAM_LEN, MAX_PAYLOAD_LEN, MediaType, PacketType, TAG_LEN,
};
use crate::ids::{BridgeId, ConferenceId, EndpointId, LinkCounter};
use crate::keys::{ClusterSecret, LinkCipher, Suite};
use crate::replay::ReplayWindow;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

/// How links are protected. A cluster-wide setting: every bridge must use the
/// same one.
#[derive(Clone, Debug)]
pub enum LinkSecurity {
    /// No encryption, no authentication, no tag: only for a network that is
    /// trusted by other means, and only when configured explicitly. Packets
    /// carry [`Flags::PLAINTEXT`] so an encrypting receiver refuses them.
    Plaintext,
    /// AEAD with per-link keys derived from the cluster secret.
    Encrypted {
        /// The AEAD suite.
        suite: Suite,
        /// The cluster secret.
        secret: ClusterSecret,
    },
}

impl LinkSecurity {
    /// Encrypted with `suite`, keys from `secret`.
    pub fn encrypted(suite: Suite, secret: &[u8]) -> Result<LinkSecurity, ConfigError> {
        Ok(LinkSecurity::Encrypted {
            suite,
            secret: ClusterSecret::new(secret)?,
        })
    }

    /// True unless plaintext.
    pub const fn is_encrypted(&self) -> bool {
        matches!(self, LinkSecurity::Encrypted { .. })
    }

    fn cipher(
        &self,
        sender: BridgeId,
        receiver: BridgeId,
    ) -> Result<Option<LinkCipher>, ConfigError> {
        if sender == receiver {
            return Err(ConfigError::SelfLink);
        }
        match self {
            LinkSecurity::Plaintext => Ok(None),
            LinkSecurity::Encrypted { suite, secret } => {
                let keys = secret.link_keys(*suite, sender, receiver)?;
                LinkCipher::new(&keys).map(Some)
            }
        }
    }
}

/// What the caller says about a packet to seal; the sealer adds the sender,
/// the counter and the [`Flags::PLAINTEXT`] bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PacketMeta {
    /// What the payload is.
    pub packet_type: PacketType,
    /// Media type of the source.
    pub media: MediaType,
    /// Flags; [`Flags::PLAINTEXT`] is overridden by the link's mode.
    pub flags: Flags,
    /// Conference.
    pub conference: ConferenceId,
    /// Source endpoint.
    pub endpoint: EndpointId,
}

impl PacketMeta {
    /// Meta for a media or message packet, no flags.
    pub const fn new(
        packet_type: PacketType,
        media: MediaType,
        conference: ConferenceId,
        endpoint: EndpointId,
    ) -> PacketMeta {
        PacketMeta {
            packet_type,
            media,
            flags: Flags::NONE,
            conference,
            endpoint,
        }
    }

    /// Meta for a link control packet (conference 0, the bridge itself, data).
    pub const fn control() -> PacketMeta {
        PacketMeta::new(
            PacketType::Control,
            MediaType::Data,
            ConferenceId::LINK,
            EndpointId::BRIDGE,
        )
    }

    /// The same meta with `flags` added.
    pub const fn with_flags(mut self, flags: Flags) -> PacketMeta {
        self.flags = self.flags.union(flags);
        self
    }

    /// The header of this packet as `sender` seals it at `counter`.
    pub const fn header(self, sender: BridgeId, counter: LinkCounter) -> Header {
        Header {
            packet_type: self.packet_type,
            media: self.media,
            flags: self.flags,
            sender,
            conference: self.conference,
            endpoint: self.endpoint,
            counter,
        }
    }
}

/// Seals packets for one directed link (this bridge -> one remote bridge).
///
/// Owns the link counter, so two packets can never share a nonce through
/// this sealer. There must be exactly one `Sealer` per directed link at a
/// time, and its first counter must be above every counter the link used
/// before with the same secret: seed it with the wall clock in microseconds
/// (`proto/octo.md`, "Counter").
pub struct Sealer {
    local: BridgeId,
    remote: BridgeId,
    /// Next counter to use; `None` once `u64::MAX` was used.
    next: Option<u64>,
    cipher: Option<LinkCipher>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("next", &self.next)
            .field("encrypted", &self.cipher.is_some())
            .finish()
    }
}

impl Sealer {
    /// A sealer for `local -> remote` whose first packet uses `first`.
    pub fn new(
        security: &LinkSecurity,
        local: BridgeId,
        remote: BridgeId,
        first: LinkCounter,
    ) -> Result<Sealer, ConfigError> {
        Ok(Sealer {
            local,
            remote,
            next: Some(first.0),
            cipher: security.cipher(local, remote)?,
        })
    }

    /// This bridge.
    pub const fn local(&self) -> BridgeId {
        self.local
    }

    /// The receiving bridge.
    pub const fn remote(&self) -> BridgeId {
        self.remote
    }

    /// True unless the link is plaintext.
    pub const fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    /// The counter the next packet will carry (`None` when exhausted).
    pub fn next_counter(&self) -> Option<LinkCounter> {
        self.next.map(LinkCounter)
    }

    /// Moves the counter up to at least `floor` (never down). Calling this
    /// with the wall clock in microseconds about once a second keeps the
    /// counter near real time, which lets a restarted receiver refuse old
    /// recordings with [`Opener::add_peer_with_floor`].
    pub fn advance_to(&mut self, floor: LinkCounter) {
        if let Some(next) = self.next.as_mut() {
            *next = (*next).max(floor.0);
        }
    }

    /// Datagram length for a payload of `payload_len` bytes on this link.
    pub const fn sealed_len(&self, payload_len: usize) -> usize {
        let tag = if self.cipher.is_some() { TAG_LEN } else { 0 };
        HEADER_LEN.saturating_add(payload_len).saturating_add(tag)
    }

    fn take_counter(&mut self) -> Result<LinkCounter, SealError> {
        let c = self.next.ok_or(SealError::CounterExhausted)?;
        self.next = c.checked_add(1);
        Ok(LinkCounter(c))
    }

    /// Seals in place. `buf[HEADER_LEN .. HEADER_LEN + payload_len]` holds the
    /// payload on entry; on success `buf[.. len]` is the datagram, with
    /// `len = HEADER_LEN + payload_len (+ TAG_LEN if encrypted)`, and the
    /// header and `len` are returned. `buf` must be at least `len` long; bytes
    /// past `len` are untouched.
    pub fn seal_in_place(
        &mut self,
        meta: &PacketMeta,
        buf: &mut [u8],
        payload_len: usize,
    ) -> Result<(Header, usize), SealError> {
        if payload_len > MAX_PAYLOAD_LEN {
            return Err(SealError::Oversized {
                len: payload_len,
                max: MAX_PAYLOAD_LEN,
            });
        }
        let total = self.sealed_len(payload_len);
        let have = buf.len();
        let too_small = SealError::BufferTooSmall { need: total, have };
        let packet = buf.get_mut(..total).ok_or(too_small)?;
        let (head, rest) = packet
            .split_first_chunk_mut::<HEADER_LEN>()
            .ok_or(too_small)?;
        let counter = self.take_counter()?;
        let flags = match self.cipher {
            Some(_) => meta.flags.difference(Flags::PLAINTEXT),
            None => meta.flags.union(Flags::PLAINTEXT),
        };
        let header = PacketMeta { flags, ..*meta }.header(self.local, counter);
        header.encode(head);
        if let Some(cipher) = &self.cipher {
            let (payload, tag_out) = rest
                .split_at_mut_checked(payload_len)
                .ok_or(SealError::Crypto)?;
            let tag_out: &mut [u8; TAG_LEN] = tag_out.try_into().map_err(|_| SealError::Crypto)?;
            *tag_out = cipher
                .seal(counter, head, payload)
                .ok_or(SealError::Crypto)?;
        }
        Ok((header, total))
    }

    /// Seals a `buf` that holds `HEADER_LEN` reserved bytes followed by the
    /// payload, appending the tag: the zero-copy path for a caller that
    /// writes the payload right behind a reserved header. Keep `TAG_LEN`
    /// spare capacity in `buf` to avoid a reallocation.
    pub fn seal_vec_in_place(
        &mut self,
        meta: &PacketMeta,
        buf: &mut Vec<u8>,
    ) -> Result<Header, SealError> {
        let payload_len = buf
            .len()
            .checked_sub(HEADER_LEN)
            .ok_or(SealError::BufferTooSmall {
                need: HEADER_LEN,
                have: buf.len(),
            })?;
        if payload_len > MAX_PAYLOAD_LEN {
            return Err(SealError::Oversized {
                len: payload_len,
                max: MAX_PAYLOAD_LEN,
            });
        }
        let original = buf.len();
        buf.resize(self.sealed_len(payload_len), 0);
        match self.seal_in_place(meta, buf, payload_len) {
            Ok((header, _)) => Ok(header),
            Err(e) => {
                buf.truncate(original);
                Err(e)
            }
        }
    }

    /// Writes the sealed datagram for `payload` into `out` (cleared first).
    /// Reusing `out` across packets makes this allocation-free after the
    /// first call; it costs one payload copy, which forwarding to several
    /// bridges needs anyway (each gets its own ciphertext).
    pub fn seal_to_vec(
        &mut self,
        meta: &PacketMeta,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Header, SealError> {
        out.clear();
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(SealError::Oversized {
                len: payload.len(),
                max: MAX_PAYLOAD_LEN,
            });
        }
        out.reserve(self.sealed_len(payload.len()));
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        out.extend_from_slice(payload);
        self.seal_vec_in_place(meta, out)
            .inspect_err(|_| out.clear())
    }
}

/// Receive state of one peer: its link key (into this bridge) and window.
struct PeerRx {
    cipher: Option<LinkCipher>,
    window: ReplayWindow,
}

/// Opens every packet this bridge receives over Octo.
///
/// Knows the peers the directory announced; a packet from any other sender
/// id is refused before any crypto, so a stranger cannot make the bridge
/// derive keys or grow state.
pub struct Opener {
    local: BridgeId,
    security: LinkSecurity,
    peers: HashMap<BridgeId, PeerRx>,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("local", &self.local)
            .field("encrypted", &self.security.is_encrypted())
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl Opener {
    /// An opener for bridge `local` with no peers yet.
    pub fn new(security: LinkSecurity, local: BridgeId) -> Opener {
        Opener {
            local,
            security,
            peers: HashMap::new(),
        }
    }

    /// This bridge.
    pub const fn local(&self) -> BridgeId {
        self.local
    }

    /// Accepts packets from `peer` from now on. Idempotent: adding a known
    /// peer keeps its replay window (resetting it would let recorded packets
    /// be replayed).
    pub fn add_peer(&mut self, peer: BridgeId) -> Result<(), ConfigError> {
        self.add_peer_with_floor(peer, LinkCounter(0))
    }

    /// As [`add_peer`](Self::add_peer), refusing counters below `floor` from
    /// a new peer (see [`ReplayWindow::with_floor`]); a known peer is left
    /// as it is.
    pub fn add_peer_with_floor(
        &mut self,
        peer: BridgeId,
        floor: LinkCounter,
    ) -> Result<(), ConfigError> {
        if self.peers.contains_key(&peer) {
            return Ok(());
        }
        let cipher = self.security.cipher(peer, self.local)?;
        self.peers.insert(
            peer,
            PeerRx {
                cipher,
                window: ReplayWindow::with_floor(floor.0),
            },
        );
        Ok(())
    }

    /// Stops accepting packets from `peer`; true if it was known.
    pub fn remove_peer(&mut self, peer: BridgeId) -> bool {
        self.peers.remove(&peer).is_some()
    }

    /// True if `peer` is accepted.
    pub fn has_peer(&self, peer: BridgeId) -> bool {
        self.peers.contains_key(&peer)
    }

    /// The accepted peers, in no particular order.
    pub fn peers(&self) -> impl Iterator<Item = BridgeId> + '_ {
        self.peers.keys().copied()
    }

    /// Highest counter accepted from `peer`.
    pub fn highest_counter(&self, peer: BridgeId) -> Option<LinkCounter> {
        self.peers
            .get(&peer)
            .and_then(|p| p.window.highest())
            .map(LinkCounter)
    }

    /// Checks and decrypts the datagram in `buf` in place. On success returns
    /// the header and the range of `buf` holding the plaintext payload; on
    /// failure the packet must be dropped (and the payload bytes may have
    /// been overwritten). Never panics, whatever `buf` holds.
    ///
    /// Checks run cheapest first, and everything before the AEAD is decided
    /// from the header alone, so junk costs no crypto: size, header, mode,
    /// sender, replay window, tag. The window is updated only after the tag
    /// verified.
    pub fn open_in_place(&mut self, buf: &mut [u8]) -> Result<(Header, Range<usize>), OpenError> {
        let len = buf.len();
        if len > MAX_DATAGRAM_LEN {
            return Err(OpenError::Oversized);
        }
        let header = Header::decode(buf)?;
        let plaintext = header.flags.contains(Flags::PLAINTEXT);
        match (self.security.is_encrypted(), plaintext) {
            (true, true) => return Err(OpenError::PlaintextRefused),
            (false, false) => return Err(OpenError::EncryptedRefused),
            _ => {}
        }
        let tag_len = if plaintext { 0 } else { TAG_LEN };
        let payload_end = len
            .checked_sub(tag_len)
            .filter(|end| *end >= HEADER_LEN)
            .ok_or(OpenError::Truncated)?;
        let payload_len = payload_end - HEADER_LEN;
        if payload_len > MAX_PAYLOAD_LEN {
            return Err(OpenError::Oversized);
        }
        if header.sender == self.local {
            return Err(OpenError::UnknownSender);
        }
        let peer = self
            .peers
            .get_mut(&header.sender)
            .ok_or(OpenError::UnknownSender)?;
        let counter = header.counter;
        peer.window
            .check(counter.0)
            .map_err(|_| OpenError::Replay)?;
        if let Some(cipher) = &peer.cipher {
            let (head, rest) = buf
                .split_first_chunk_mut::<HEADER_LEN>()
                .ok_or(OpenError::Truncated)?;
            let (ciphertext, tag) = rest
                .split_at_mut_checked(payload_len)
                .ok_or(OpenError::Truncated)?;
            let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| OpenError::Truncated)?;
            if !cipher.open(counter, head, ciphertext, tag) {
                return Err(OpenError::Auth);
            }
        }
        peer.window.record(counter.0);
        Ok((header, HEADER_LEN..payload_end))
    }
}
