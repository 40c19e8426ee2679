//! Which leg a datagram on the shared media port belongs to.
//!
//! All WebRTC legs of a shard share one UDP socket, so every datagram must be attributed to
//! a leg before any protocol work. Two keys:
//!
//! - a STUN Binding request names its leg in the USERNAME attribute ("<our ufrag>:<theirs>");
//! - anything else (DTLS, SRTP, SRTCP) is attributed by its source 4-tuple, which is learned only
//!   once that leg has *answered* a connectivity check from it (its Binding success went out,
//!   which `rtc` only sends after MESSAGE-INTEGRITY passed). A forged source therefore cannot
//!   claim a leg without knowing its ICE password.
//!
//! With several shards on one port (`SO_REUSEPORT`), the kernel picks a shard's socket by a
//! hash of the 4-tuple, not by the leg's shard. A shard's legs' ufrags start with the shard's
//! character ([`ufrag_prefix`]), and learned addresses are told to the other shards
//! ([`Demux::take_changes`]), so a datagram that reached the wrong socket can be passed on.
//!
//! Pure: no sockets, no clock. Learning and eviction are driven by the shard.

use std::collections::HashMap;
use std::net::SocketAddr;

/// Index of a leg in its shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u32);

/// Index of a shard in its node (0 .. `config::MAX_SHARDS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardIndex(pub u8);

/// The characters ICE ufrags are made of; a shard's ufrags start with the one at its index.
pub const UFRAG_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// The first character of the ufrags of `shard`'s legs.
pub fn ufrag_prefix(shard: ShardIndex) -> char {
    char::from(UFRAG_ALPHABET[usize::from(shard.0) % UFRAG_ALPHABET.len()])
}

/// The shard whose leg a ufrag names, from its first character.
pub fn ufrag_shard(ufrag: &str) -> Option<ShardIndex> {
    let first = *ufrag.as_bytes().first()?;
    let i = UFRAG_ALPHABET.iter().position(|&c| c == first)?;
    u8::try_from(i).ok().map(ShardIndex)
}

/// The shard a STUN request names (by its USERNAME), if it is well-formed and names one.
pub fn stun_shard(datagram: &[u8]) -> Option<ShardIndex> {
    match datagram.first() {
        Some(0..=3) => stun_username(datagram).ok().flatten().and_then(ufrag_shard),
        _ => None,
    }
}

/// A learned address gained or lost, for the other shards of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrChange {
    Learned(SocketAddr),
    Forgotten(SocketAddr),
}

/// Why a datagram was dropped before reaching any leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Not STUN, and its source is no leg's learned address.
    UnknownSource,
    /// STUN naming a ufrag no leg has.
    UnknownUfrag,
    /// STUN without a usable USERNAME, or truncated.
    MalformedStun,
    /// Fits none of the protocols multiplexed on the port (RFC 7983).
    NotRtcTraffic,
    /// STUN over the rate allowed per source address or per leg (shard/flood.rs).
    StunRateLimited,
    /// For another shard of the node, whose hand-off queue was full.
    HandoffFull,
    /// STUN for a subscriber leg before its answer, beyond the few it holds until then.
    EarlyStun,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownSource => "unknown_source",
            DropReason::UnknownUfrag => "unknown_ufrag",
            DropReason::MalformedStun => "malformed_stun",
            DropReason::NotRtcTraffic => "not_rtc",
            DropReason::StunRateLimited => "stun_rate",
            DropReason::HandoffFull => "handoff_full",
            DropReason::EarlyStun => "early_stun",
        }
    }
    pub const ALL: [DropReason; 7] = [
        DropReason::UnknownSource,
        DropReason::UnknownUfrag,
        DropReason::MalformedStun,
        DropReason::NotRtcTraffic,
        DropReason::StunRateLimited,
        DropReason::HandoffFull,
        DropReason::EarlyStun,
    ];
}

#[derive(Default)]
pub struct Demux {
    by_ufrag: HashMap<String, LegId>,
    by_addr: HashMap<SocketAddr, LegId>,
    addrs_of: HashMap<LegId, Vec<SocketAddr>>,
    /// Addresses learned and forgotten since the last [`Demux::take_changes`], kept only when
    /// other shards need to hear of them.
    changes: Option<Vec<AddrChange>>,
}

const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const STUN_HEADER: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;

impl Demux {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the changes of learned addresses for [`Demux::take_changes`].
    pub fn track_changes(&mut self) {
        self.changes.get_or_insert_with(Vec::new);
    }

    /// Addresses learned and forgotten since the last call (empty unless tracking).
    pub fn take_changes(&mut self) -> Vec<AddrChange> {
        self.changes
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Whether there are changes to take.
    pub fn has_changes(&self) -> bool {
        self.changes.as_ref().is_some_and(|c| !c.is_empty())
    }

    /// Another shard learned `addr`: it is no longer any local leg's.
    pub fn forget_addr(&mut self, addr: SocketAddr) {
        if let Some(leg) = self.by_addr.remove(&addr)
            && let Some(list) = self.addrs_of.get_mut(&leg)
        {
            list.retain(|a| *a != addr);
        }
    }

    fn note(&mut self, change: AddrChange) {
        if let Some(c) = self.changes.as_mut() {
            c.push(change);
        }
    }

    /// Registers a leg under its local ICE ufrag.
    pub fn add_leg(&mut self, leg: LegId, ufrag: &str) {
        self.by_ufrag.insert(ufrag.to_owned(), leg);
    }

    /// Forgets a leg and every address learned for it.
    pub fn remove_leg(&mut self, leg: LegId) {
        self.by_ufrag.retain(|_, l| *l != leg);
        for addr in self.addrs_of.remove(&leg).unwrap_or_default() {
            if self.by_addr.get(&addr) == Some(&leg) {
                self.by_addr.remove(&addr);
                self.note(AddrChange::Forgotten(addr));
            }
        }
    }

    /// Records that `leg` sent to `addr`. Legs write only to addresses whose checks they
    /// answered, so this is the moment the 4-tuple becomes trustworthy.
    pub fn learn(&mut self, leg: LegId, addr: SocketAddr) {
        match self.by_addr.insert(addr, leg) {
            Some(prev) if prev == leg => return,
            Some(prev) => {
                // The address moved to another leg (a client reused a port): forget the old tie.
                if let Some(list) = self.addrs_of.get_mut(&prev) {
                    list.retain(|a| *a != addr);
                }
            }
            None => self.note(AddrChange::Learned(addr)),
        }
        self.addrs_of.entry(leg).or_default().push(addr);
    }

    pub fn is_learned(&self, addr: &SocketAddr) -> bool {
        self.by_addr.contains_key(addr)
    }

    pub fn leg_count(&self) -> usize {
        self.by_ufrag.len()
    }
    pub fn addr_count(&self) -> usize {
        self.by_addr.len()
    }

    /// Attributes one datagram.
    pub fn route(&self, from: SocketAddr, datagram: &[u8]) -> Result<LegId, DropReason> {
        let Some(&first) = datagram.first() else {
            return Err(DropReason::NotRtcTraffic);
        };
        match first {
            // STUN (RFC 7983): the ufrag decides, even for a known address, because a
            // client's new check may be for another leg from the same port.
            0..=3 => match stun_username(datagram)? {
                Some(ufrag) => self
                    .by_ufrag
                    .get(ufrag)
                    .copied()
                    .ok_or(DropReason::UnknownUfrag),
                // Responses and indications carry no USERNAME (the answers to the
                // triggered checks a leg sends): a learned address owns them.
                None => self
                    .by_addr
                    .get(&from)
                    .copied()
                    .ok_or(DropReason::UnknownSource),
            },
            // DTLS, RTP/RTCP.
            20..=63 | 128..=191 => self
                .by_addr
                .get(&from)
                .copied()
                .ok_or(DropReason::UnknownSource),
            _ => Err(DropReason::NotRtcTraffic),
        }
    }
}

/// Our ufrag from a STUN message's USERNAME ("ours:theirs"): `Ok(None)` for a well-formed
/// message without one, `Err` for anything that is not well-formed STUN.
fn stun_username(msg: &[u8]) -> Result<Option<&str>, DropReason> {
    let bad = DropReason::MalformedStun;
    if msg.len() < STUN_HEADER || msg.get(4..8) != Some(&STUN_MAGIC[..]) {
        return Err(bad);
    }
    let body_len = usize::from(u16::from_be_bytes([msg[2], msg[3]]));
    let body = msg.get(STUN_HEADER..STUN_HEADER + body_len).ok_or(bad)?;
    let mut at = 0usize;
    while at + 4 <= body.len() {
        let typ = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + len).ok_or(bad)?;
        if typ == ATTR_USERNAME {
            let username = std::str::from_utf8(value).map_err(|_| bad)?;
            return match username.split(':').next() {
                Some(u) if !u.is_empty() => Ok(Some(u)),
                _ => Err(bad),
            };
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun_with_username(username: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        // A second attribute after it, to exercise the walk.
        attr.extend_from_slice(&[0x80, 0x29, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        m.extend_from_slice(&STUN_MAGIC);
        m.extend_from_slice(&[7u8; 12]);
        m.extend_from_slice(&attr);
        m
    }

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn stun_routes_by_ufrag_then_addr_after_learning() {
        let mut d = Demux::new();
        d.add_leg(LegId(1), "abcd");
        d.add_leg(LegId(2), "wxyz");
        let check = stun_with_username("wxyz:remote");
        assert_eq!(d.route(addr(5000), &check), Ok(LegId(2)));
        let srtp = [0x80u8, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            d.route(addr(5000), &srtp),
            Err(DropReason::UnknownSource),
            "not learned before the leg answered"
        );
        d.learn(LegId(2), addr(5000));
        assert_eq!(d.route(addr(5000), &srtp), Ok(LegId(2)));
        let dtls = [22u8, 0xfe, 0xfd, 0, 0];
        assert_eq!(d.route(addr(5000), &dtls), Ok(LegId(2)));
        assert_eq!(d.route(addr(5001), &dtls), Err(DropReason::UnknownSource));
    }

    #[test]
    fn stun_without_username_goes_by_learned_address() {
        let mut d = Demux::new();
        // A Binding success response: no attributes at all.
        let mut resp = vec![0x01, 0x01, 0, 0];
        resp.extend_from_slice(&STUN_MAGIC);
        resp.extend_from_slice(&[9u8; 12]);
        assert_eq!(d.route(addr(9), &resp), Err(DropReason::UnknownSource));
        d.learn(LegId(3), addr(9));
        assert_eq!(d.route(addr(9), &resp), Ok(LegId(3)));
    }

    #[test]
    fn unknown_and_malformed() {
        let mut d = Demux::new();
        d.add_leg(LegId(1), "abcd");
        assert_eq!(
            d.route(addr(1), &stun_with_username("nope:x")),
            Err(DropReason::UnknownUfrag)
        );
        assert_eq!(d.route(addr(1), &[]), Err(DropReason::NotRtcTraffic));
        assert_eq!(
            d.route(addr(1), &[0xff; 40]),
            Err(DropReason::NotRtcTraffic)
        );
        assert_eq!(d.route(addr(1), &[0, 1, 0]), Err(DropReason::MalformedStun));
        // Length field pointing past the end.
        let mut m = stun_with_username("abcd:x");
        m[3] = 200;
        assert_eq!(d.route(addr(1), &m), Err(DropReason::MalformedStun));
        // Attribute length pointing past the body.
        let mut m = stun_with_username("abcd:x");
        m[STUN_HEADER + 3] = 250;
        assert_eq!(d.route(addr(1), &m), Err(DropReason::MalformedStun));
        // Wrong magic cookie.
        let mut m = stun_with_username("abcd:x");
        m[4] = 0;
        assert_eq!(d.route(addr(1), &m), Err(DropReason::MalformedStun));
    }

    #[test]
    fn eviction_forgets_addresses_and_ufrag() {
        let mut d = Demux::new();
        d.add_leg(LegId(1), "abcd");
        d.learn(LegId(1), addr(7));
        d.learn(LegId(1), addr(8));
        d.learn(LegId(1), addr(8));
        assert_eq!(d.addr_count(), 2);
        d.remove_leg(LegId(1));
        assert_eq!(d.addr_count(), 0);
        assert_eq!(d.leg_count(), 0);
        assert_eq!(
            d.route(addr(7), &[0x80, 0, 0, 0]),
            Err(DropReason::UnknownSource)
        );
    }

    #[test]
    fn address_moving_between_legs() {
        let mut d = Demux::new();
        d.learn(LegId(1), addr(7));
        d.learn(LegId(2), addr(7));
        assert_eq!(d.route(addr(7), &[0x80, 0, 0, 0]), Ok(LegId(2)));
        // Removing the old owner must not evict the new owner's tie.
        d.remove_leg(LegId(1));
        assert_eq!(d.route(addr(7), &[0x80, 0, 0, 0]), Ok(LegId(2)));
    }

    #[test]
    fn never_panics_on_arbitrary_prefixes() {
        let d = Demux::new();
        let m = stun_with_username("abcd:efgh");
        for n in 0..m.len() {
            let _ = d.route(addr(1), &m[..n]);
        }
        for b in 0..=255u8 {
            let _ = d.route(addr(1), &[b; 24]);
        }
    }
}
