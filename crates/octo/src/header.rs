//! The fixed 24-byte Octo header: layout, encode, decode.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-------+-------+---------------+---------------+---------------+
//! | magic |version|  packet type  |  media type   |     flags     |  0
//! +-------+-------+---------------+---------------+---------------+
//! |                     sender bridge id                          |  4
//! +---------------------------------------------------------------+
//! |                       conference id                           |  8
//! +---------------------------------------------------------------+
//! |                    source endpoint id                         | 12
//! +---------------------------------------------------------------+
//! |                                                               | 16
//! +                  link counter (64 bits)                       +
//! |                                                               | 20
//! +---------------------------------------------------------------+
//! ```
//!
//! All integers are big-endian (network order). The whole header is the AEAD
//! associated data, so every bit of it is authenticated.

use crate::error::OpenError;
use crate::ids::{BridgeId, ConferenceId, EndpointId, LinkCounter};
use std::fmt;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 24;

/// Length of the AEAD tag that follows the payload of an encrypted packet.
/// Plaintext packets carry no tag.
pub const TAG_LEN: usize = 16;

/// High nibble of byte 0. `0x6_` puts the first byte in 96..=111, a range
/// RFC 7983 leaves to nobody (not STUN, DTLS, TURN channel, RTP/RTCP), so an
/// Octo packet can never be mistaken for WebRTC traffic if it ever shares a
/// port with it.
pub const MAGIC: u8 = 0x6;

/// The protocol version this crate speaks (low nibble of byte 0).
pub const VERSION: u8 = 1;

/// Byte 0 of every version-1 packet.
pub const VERSION_BYTE: u8 = (MAGIC << 4) | VERSION;

/// Largest datagram a sender may send and a receiver accepts: a 1500-byte
/// Ethernet MTU minus an IPv6 (40) and UDP (8) header, so no packet is ever
/// fragmented on a standard path of either IP version.
pub const MAX_DATAGRAM_LEN: usize = 1452;

/// Largest payload in every mode (1412): the encrypted datagram limit minus
/// header and tag. Plaintext packets use the same payload limit, so switching
/// a cluster between modes never changes what fits.
pub const MAX_PAYLOAD_LEN: usize = MAX_DATAGRAM_LEN - HEADER_LEN - TAG_LEN;

/// What the payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// One RTP packet (decrypted from SRTP; the link provides the protection).
    Rtp = 0,
    /// One RTCP compound packet.
    Rtcp = 1,
    /// One UTF-8 JSON message (soft-state announcements, endpoint messages).
    Message = 2,
    /// One link control message (see [`crate::control`]), e.g. RTT ping.
    Control = 3,
}

impl PacketType {
    /// Parses the wire value; `None` for unassigned values.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Rtp),
            1 => Some(Self::Rtcp),
            2 => Some(Self::Message),
            3 => Some(Self::Control),
            _ => None,
        }
    }

    /// Lower-case name used in logs, metrics labels and the test vectors.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Rtp => "rtp",
            Self::Rtcp => "rtcp",
            Self::Message => "message",
            Self::Control => "control",
        }
    }
}

/// Media type of the source, as in Jitsi's Octo v1 (0 audio, 1 video, 2 data).
/// Messages and control packets use [`MediaType::Data`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MediaType {
    /// Audio source.
    Audio = 0,
    /// Video source.
    Video = 1,
    /// Anything that is not audio or video: messages, control.
    Data = 2,
}

impl MediaType {
    /// Parses the wire value; `None` for unassigned values.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Audio),
            1 => Some(Self::Video),
            2 => Some(Self::Data),
            _ => None,
        }
    }

    /// Lower-case name used in logs, metrics labels and the test vectors.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Video => "video",
            Self::Data => "data",
        }
    }
}

/// Header flags (byte 3).
///
/// Unassigned bits are sent as zero and ignored by receivers, but kept as
/// they came: they are authenticated, and a decoded header re-encodes to the
/// same bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// No flag set.
    pub const NONE: Flags = Flags(0);
    /// The payload is a retransmission (a repair sent after a NACK), so the
    /// receiver must not count it as fresh media (bitrate, loss statistics).
    pub const RETRANSMISSION: Flags = Flags(0x01);
    /// The payload is not encrypted and no tag follows. Set by the sealer in
    /// plaintext mode only; never chosen by the caller.
    pub const PLAINTEXT: Flags = Flags(0x02);
    /// Bits with a meaning in version 1.
    pub const KNOWN: Flags = Flags(0x03);

    /// Raw bits, unknown ones included.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// From raw bits, unknown ones kept.
    pub const fn from_bits_retain(bits: u8) -> Flags {
        Flags(bits)
    }

    /// True if every bit of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the bits of `other` set.
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// `self` with the bits of `other` cleared.
    pub const fn difference(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        self.union(rhs)
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_set();
        if self.contains(Flags::RETRANSMISSION) {
            list.entry(&"RETRANSMISSION");
        }
        if self.contains(Flags::PLAINTEXT) {
            list.entry(&"PLAINTEXT");
        }
        let unknown = self.difference(Flags::KNOWN).bits();
        if unknown != 0 {
            list.entry(&format_args!("{unknown:#04x}"));
        }
        list.finish()
    }
}

/// A decoded Octo header (the version is implied: this crate only speaks
/// [`VERSION`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// What the payload is.
    pub packet_type: PacketType,
    /// Media type of the source.
    pub media: MediaType,
    /// Flags.
    pub flags: Flags,
    /// The bridge that sealed the packet; selects the link key and replay window.
    pub sender: BridgeId,
    /// Conference the packet belongs to ([`ConferenceId::LINK`] for control).
    pub conference: ConferenceId,
    /// Source endpoint ([`EndpointId::BRIDGE`] for the sending bridge itself).
    pub endpoint: EndpointId,
    /// Per directed link counter (nonce and replay position).
    pub counter: LinkCounter,
}

impl Header {
    /// Writes the 24 header bytes.
    pub fn encode(&self, out: &mut [u8; HEADER_LEN]) {
        let [s0, s1, s2, s3] = self.sender.0.to_be_bytes();
        let [c0, c1, c2, c3] = self.conference.0.to_be_bytes();
        let [e0, e1, e2, e3] = self.endpoint.0.to_be_bytes();
        let [n0, n1, n2, n3, n4, n5, n6, n7] = self.counter.0.to_be_bytes();
        *out = [
            VERSION_BYTE,
            self.packet_type as u8,
            self.media as u8,
            self.flags.bits(),
            s0,
            s1,
            s2,
            s3,
            c0,
            c1,
            c2,
            c3,
            e0,
            e1,
            e2,
            e3,
            n0,
            n1,
            n2,
            n3,
            n4,
            n5,
            n6,
            n7,
        ];
    }

    /// The 24 header bytes as an array.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        self.encode(&mut out);
        out
    }

    /// Parses the header at the start of `buf` (which may hold more: the
    /// payload). Never panics.
    ///
    /// Errors: [`OpenError::Truncated`] if fewer than 24 bytes,
    /// [`OpenError::BadVersion`] if byte 0 is not `0x61`,
    /// [`OpenError::BadType`] for an unassigned packet or media type.
    pub fn decode(buf: &[u8]) -> Result<Header, OpenError> {
        let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
            return Err(OpenError::Truncated);
        };
        // Destructuring a fixed-size array cannot go out of bounds.
        let [
            v,
            t,
            m,
            f,
            s0,
            s1,
            s2,
            s3,
            c0,
            c1,
            c2,
            c3,
            e0,
            e1,
            e2,
            e3,
            n0,
            n1,
            n2,
            n3,
            n4,
            n5,
            n6,
            n7,
        ] = *h;
        if v != VERSION_BYTE {
            return Err(OpenError::BadVersion);
        }
        let packet_type = PacketType::from_u8(t).ok_or(OpenError::BadType)?;
        let media = MediaType::from_u8(m).ok_or(OpenError::BadType)?;
        Ok(Header {
            packet_type,
            media,
            flags: Flags::from_bits_retain(f),
            sender: BridgeId(u32::from_be_bytes([s0, s1, s2, s3])),
            conference: ConferenceId(u32::from_be_bytes([c0, c1, c2, c3])),
            endpoint: EndpointId(u32::from_be_bytes([e0, e1, e2, e3])),
            counter: LinkCounter(u64::from_be_bytes([n0, n1, n2, n3, n4, n5, n6, n7])),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            packet_type: PacketType::Rtcp,
            media: MediaType::Video,
            flags: Flags::RETRANSMISSION,
            sender: BridgeId(0x0102_0304),
            conference: ConferenceId(0xc0ff_ee01),
            endpoint: EndpointId::BRIDGE,
            counter: LinkCounter(0x0011_2233_4455_6677),
        }
    }

    #[test]
    fn layout_is_as_specified() {
        let bytes = sample().to_bytes();
        assert_eq!(
            bytes,
            [
                0x61, 0x01, 0x01, 0x01, 0x01, 0x02, 0x03, 0x04, 0xc0, 0xff, 0xee, 0x01, 0xff, 0xff,
                0xff, 0xff, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77
            ]
        );
        assert_eq!(MAX_PAYLOAD_LEN, 1412);
    }

    #[test]
    fn round_trip_keeps_unknown_flags() {
        let mut h = sample();
        h.flags = Flags::from_bits_retain(0xf1);
        let bytes = h.to_bytes();
        assert_eq!(Header::decode(&bytes), Ok(h));
    }

    #[test]
    fn rejects_bad_fields() {
        let good = sample().to_bytes();
        assert_eq!(
            Header::decode(&good[..HEADER_LEN - 1]),
            Err(OpenError::Truncated)
        );
        assert_eq!(Header::decode(&[]), Err(OpenError::Truncated));
        for v in [0x00, 0x60, 0x62, 0x71, 0x80, 0xff] {
            let mut b = good;
            b[0] = v;
            assert_eq!(Header::decode(&b), Err(OpenError::BadVersion), "{v:#x}");
        }
        let mut b = good;
        b[1] = 4;
        assert_eq!(Header::decode(&b), Err(OpenError::BadType));
        let mut b = good;
        b[2] = 3;
        assert_eq!(Header::decode(&b), Err(OpenError::BadType));
    }

    #[test]
    fn flags_debug_names_bits() {
        let f = Flags::RETRANSMISSION | Flags::PLAINTEXT | Flags::from_bits_retain(0x80);
        assert_eq!(
            format!("{f:?}"),
            "{\"RETRANSMISSION\", \"PLAINTEXT\", 0x80}"
        );
    }
}
