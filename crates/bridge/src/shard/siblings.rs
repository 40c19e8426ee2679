//! The other shards of the node, as one shard sees them.
//!
//! All shards' sockets share the media port (`SO_REUSEPORT`), and the kernel picks the socket
//! by a hash of the 4-tuple, so a client's datagrams reach one fixed shard whatever shard its
//! leg lives on (a conference's shard). Such a datagram is handed to its leg's shard through a
//! bounded in-process queue, with its kernel receive time: no lock, and the copy into a
//! `BytesMut` that feeding a leg makes anyway. Which shard to hand to comes from the datagram
//! itself for STUN (the ufrag's first character) and from the addresses the other shards
//! learned for everything else, which each shard tells the others as it learns them (before
//! its answer to the client's check leaves). A shard reads what it was told before it gives
//! up on a datagram, so the client's first DTLS packet cannot overtake the news.
//!
//! A handed-off datagram is attributed again on arrival, by the owner's own demux, and never
//! handed on a second time.
//!
//! Octo crosses the same queues. Shard 0 is the node's Octo gateway: it owns the Octo socket
//! and the link crypto (one sealer per peer, so one counter and one nonce sequence per link
//! key, and one replay window per peer), opens every datagram, and hands what belongs to a
//! conference of another shard to that shard, already opened; the other shards' cascades hand
//! what they send to the gateway to seal. A conference starts on the shard its cluster-wide id
//! names ([`conference_shard`]); one that grew over several shards is handed to each of them
//! (shard/cascade/spread.rs), as signaling told every shard.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::BytesMut;
use kaskade_octo::{BridgeId, Header, PacketMeta};
use tokio::sync::mpsc;

use super::rxtime;
use crate::demux::{self, AddrChange, Demux, DropReason, ShardIndex};

/// Datagrams one shard can have waiting for another: a burst of a few milliseconds at the
/// busiest, beyond which the receiving shard is overloaded and dropping is right.
pub const HANDOFF_QUEUE: usize = 4096;

/// What crosses from one shard to another.
#[derive(Debug)]
pub enum Handoff {
    /// A client datagram that reached another shard's socket.
    Client {
        from: SocketAddr,
        data: BytesMut,
        stamp: rxtime::Stamp,
    },
    /// An Octo packet the gateway opened, for the shard of its conference.
    OctoIn {
        header: Header,
        payload: Vec<u8>,
        stamp: rxtime::Stamp,
    },
    /// An Octo packet for the gateway to seal and send to `peer`.
    OctoOut {
        peer: BridgeId,
        meta: PacketMeta,
        payload: Vec<u8>,
    },
    /// Another bridge's announcement, passed by a shard of a conference to a shard just added
    /// to it (shard/cascade/spread.rs), with when it was heard: the soft state ages from then.
    Heard {
        header: Header,
        payload: Vec<u8>,
        at: std::time::Instant,
    },
    /// A packet of a conference both shards carry, from shard `from` (shard/cascade/spread.rs),
    /// with where and when the RTP it forwards entered the node.
    Sibling {
        from: ShardIndex,
        meta: PacketMeta,
        payload: Vec<u8>,
        stamp: Option<(rxtime::Input, rxtime::Stamp)>,
    },
}

/// The shard of `shards` that holds a conference, from its cluster-wide id (the same on
/// every node: ids come from the directory).
pub fn conference_shard(conference: u32, shards: usize) -> ShardIndex {
    ShardIndex((conference as usize % shards.max(1)) as u8)
}

/// The Octo gateway of a node of several shards.
pub const GATEWAY: ShardIndex = ShardIndex(0);

/// What one shard tells another.
#[derive(Debug)]
pub enum Note {
    /// `shard` has learned (or forgotten) `addr` for one of its legs.
    Address {
        shard: ShardIndex,
        change: AddrChange,
    },
}

/// One shard's way to every other.
pub struct Siblings {
    me: ShardIndex,
    /// By shard index; our own entries are there too, never used.
    handoff: Vec<mpsc::Sender<Handoff>>,
    notes: Vec<mpsc::UnboundedSender<Note>>,
    /// What the others told us, read when it matters (no wake-up needed).
    inbox: mpsc::UnboundedReceiver<Note>,
    /// Addresses the other shards learned.
    owners: HashMap<SocketAddr, ShardIndex>,
}

/// Why a datagram could not be handed off.
#[derive(Debug, PartialEq, Eq)]
pub enum NotHanded {
    /// No other shard claims it: drop it for the demux's reason.
    Nobody,
    /// Its shard's queue is full.
    Full,
}

impl Siblings {
    pub fn new(
        me: ShardIndex,
        handoff: Vec<mpsc::Sender<Handoff>>,
        notes: Vec<mpsc::UnboundedSender<Note>>,
        inbox: mpsc::UnboundedReceiver<Note>,
    ) -> Self {
        Self {
            me,
            handoff,
            notes,
            inbox,
            owners: HashMap::new(),
        }
    }

    /// The shard a datagram our demux refused for `reason` belongs to, if another one's.
    pub fn owner(&self, from: SocketAddr, data: &[u8], reason: DropReason) -> Option<ShardIndex> {
        let owner = match reason {
            DropReason::UnknownUfrag => demux::stun_shard(data),
            DropReason::UnknownSource => self.owners.get(&from).copied(),
            _ => None,
        }?;
        (owner != self.me && usize::from(owner.0) < self.handoff.len()).then_some(owner)
    }

    /// Hands a datagram our demux refused for `reason` to the shard it belongs to.
    pub fn hand_off(
        &self,
        from: SocketAddr,
        data: &[u8],
        reason: DropReason,
        stamp: rxtime::Stamp,
    ) -> Result<ShardIndex, NotHanded> {
        let owner = self.owner(from, data, reason).ok_or(NotHanded::Nobody)?;
        self.send(
            owner,
            Handoff::Client {
                from,
                data: BytesMut::from(data),
                stamp,
            },
        )
        .map(|()| owner)
    }

    /// Queues `h` for shard `to`. A full queue refuses, so a flood aimed at one shard's legs
    /// stays that shard's problem.
    pub fn send(&self, to: ShardIndex, h: Handoff) -> Result<(), NotHanded> {
        let tx = self
            .handoff
            .get(usize::from(to.0))
            .ok_or(NotHanded::Nobody)?;
        tx.try_send(h).map_err(|_| NotHanded::Full)
    }

    pub fn me(&self) -> ShardIndex {
        self.me
    }

    /// How many shards the node has.
    pub fn count(&self) -> usize {
        self.handoff.len()
    }

    /// The gateway's queue, for a cascade that sends through it.
    pub fn gateway(&self) -> Option<mpsc::Sender<Handoff>> {
        self.handoff.get(usize::from(GATEWAY.0)).cloned()
    }

    /// Tells every other shard what our demux learned and forgot.
    pub fn announce(&self, changes: &[AddrChange]) {
        for (i, tx) in self.notes.iter().enumerate() {
            if i == usize::from(self.me.0) {
                continue;
            }
            for &change in changes {
                // A stopped shard's channel is closed: nothing to tell it.
                let _ = tx.send(Note::Address {
                    shard: self.me,
                    change,
                });
            }
        }
    }

    /// Takes in what the other shards told us since the last call; an address another shard
    /// learned is dropped from our own demux (a client port that moved to one of its legs).
    pub fn read_notes(&mut self, demux: &mut Demux) {
        while let Ok(note) = self.inbox.try_recv() {
            if let Some(moved) = self.on_note(note) {
                demux.forget_addr(moved);
            }
        }
    }

    /// One note; returns an address our own demux must drop.
    fn on_note(&mut self, note: Note) -> Option<SocketAddr> {
        match note {
            Note::Address {
                shard,
                change: AddrChange::Learned(addr),
            } => {
                self.owners.insert(addr, shard);
                Some(addr)
            }
            Note::Address {
                shard,
                change: AddrChange::Forgotten(addr),
            } => {
                if self.owners.get(&addr) == Some(&shard) {
                    self.owners.remove(&addr);
                }
                None
            }
        }
    }

    #[cfg(test)]
    pub fn known_addresses(&self) -> usize {
        self.owners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Shard 0's view of a node of two; shard 1's hand-off queue holds 2. The last item
    /// keeps shard 0's own receivers open.
    fn pair() -> (
        Siblings,
        mpsc::Receiver<Handoff>,
        mpsc::UnboundedReceiver<Note>,
        impl Sized,
    ) {
        let (h0, r0) = mpsc::channel(HANDOFF_QUEUE);
        let (h1, r1) = mpsc::channel(2);
        let (n0, inbox) = mpsc::unbounded_channel();
        let (n1, k1) = mpsc::unbounded_channel();
        let siblings = Siblings::new(ShardIndex(0), vec![h0, h1], vec![n0, n1], inbox);
        (siblings, r1, k1, r0)
    }

    fn stun_for(ufrag: &str) -> Vec<u8> {
        let user = format!("{ufrag}:peer");
        let mut attr = vec![0x00, 0x06];
        attr.extend_from_slice(&(user.len() as u16).to_be_bytes());
        attr.extend_from_slice(user.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[9u8; 12]);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn stun_goes_to_the_shard_its_ufrag_names_and_media_to_the_learned_owner() {
        let (mut s, mut r1, _k1, _keep) = pair();
        let stamp = rxtime::Stamp::default();
        let ufrag = format!("{}abcdefghijklmno", demux::ufrag_prefix(ShardIndex(1)));
        let check = stun_for(&ufrag);
        assert_eq!(
            s.hand_off(addr(5000), &check, DropReason::UnknownUfrag, stamp),
            Ok(ShardIndex(1))
        );
        match r1.try_recv() {
            Ok(Handoff::Client { from, data, .. }) => {
                assert_eq!((from, &data[..]), (addr(5000), &check[..]))
            }
            other => panic!("expected the check, got {other:?}"),
        }

        // Our own ufrag that our demux does not know: a stale or forged check, dropped here.
        let own = stun_for(&format!(
            "{}abcdefghijklmno",
            demux::ufrag_prefix(ShardIndex(0))
        ));
        assert_eq!(
            s.hand_off(addr(5000), &own, DropReason::UnknownUfrag, stamp),
            Err(NotHanded::Nobody)
        );
        // A shard the node does not have.
        let far = stun_for(&format!(
            "{}abcdefghijklmno",
            demux::ufrag_prefix(ShardIndex(9))
        ));
        assert_eq!(
            s.hand_off(addr(5000), &far, DropReason::UnknownUfrag, stamp),
            Err(NotHanded::Nobody)
        );

        let srtp = [0x80u8, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 7];
        assert_eq!(
            s.hand_off(addr(5000), &srtp, DropReason::UnknownSource, stamp),
            Err(NotHanded::Nobody),
            "nobody learned the address yet"
        );
        let learned = Note::Address {
            shard: ShardIndex(1),
            change: AddrChange::Learned(addr(5000)),
        };
        assert_eq!(s.on_note(learned), Some(addr(5000)));
        assert_eq!(
            s.hand_off(addr(5000), &srtp, DropReason::UnknownSource, stamp),
            Ok(ShardIndex(1))
        );
        // The queue holds 2: the check and the packet are in it, the third is refused.
        assert_eq!(
            s.hand_off(addr(5000), &srtp, DropReason::UnknownSource, stamp),
            Ok(ShardIndex(1))
        );
        assert_eq!(
            s.hand_off(addr(5000), &srtp, DropReason::UnknownSource, stamp),
            Err(NotHanded::Full)
        );
        // Malformed input is never handed on.
        assert_eq!(
            s.hand_off(addr(5000), &srtp, DropReason::MalformedStun, stamp),
            Err(NotHanded::Nobody)
        );

        // Forgotten by another shard than its owner: kept; by its owner: gone.
        let other = Note::Address {
            shard: ShardIndex(0),
            change: AddrChange::Forgotten(addr(5000)),
        };
        assert_eq!(s.on_note(other), None);
        assert_eq!(s.known_addresses(), 1);
        let gone = Note::Address {
            shard: ShardIndex(1),
            change: AddrChange::Forgotten(addr(5000)),
        };
        assert_eq!(s.on_note(gone), None);
        assert_eq!(s.known_addresses(), 0);
    }

    #[test]
    fn a_conference_starts_on_the_same_shard_everywhere() {
        assert_eq!(conference_shard(0x1234_5677, 4), ShardIndex(3));
        assert_eq!(conference_shard(0x1234_5677, 1), ShardIndex(0));
        assert_eq!(conference_shard(9, 2), ShardIndex(1));
        assert_eq!(conference_shard(8, 2), ShardIndex(0));
    }

    #[test]
    fn what_a_shard_learns_reaches_the_others_only() {
        let (s, _r1, mut k1, _keep) = pair();
        s.announce(&[AddrChange::Learned(addr(7000))]);
        match k1.try_recv() {
            Ok(Note::Address { shard, change }) => {
                assert_eq!(shard, ShardIndex(0));
                assert_eq!(change, AddrChange::Learned(addr(7000)));
            }
            other => panic!("expected a note, got {other:?}"),
        }
        assert!(k1.try_recv().is_err(), "nothing for ourselves");
    }
}
