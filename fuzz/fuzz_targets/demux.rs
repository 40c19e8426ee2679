//! The first thing every datagram on the media port meets: `Demux::route` (RFC 7983
//! classification, the STUN USERNAME walk, the learned-address lookup).
//!
//! Byte 0 picks the source address (one learned, one not), the rest is the datagram. Beyond
//! "no panic" it checks the routing rules that keep a forged source from claiming a leg.
#![no_main]

use std::net::SocketAddr;

use kaskade_bridge::demux::{Demux, DropReason, LegId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, datagram)) = data.split_first() else {
        return;
    };
    let learned: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    let stranger: SocketAddr = "198.51.100.7:6000".parse().unwrap();
    let mut demux = Demux::new();
    demux.add_leg(LegId(1), "ufragA");
    demux.add_leg(LegId(2), "ufragB");
    demux.learn(LegId(1), learned);
    let from = if pick & 1 == 0 { learned } else { stranger };

    match demux.route(from, datagram) {
        Ok(leg) => {
            assert!(
                leg == LegId(1) || leg == LegId(2),
                "routed to a leg that does not exist"
            );
            // Only STUN names a leg by ufrag; everything else needs the learned address.
            let first = datagram[0];
            if from == stranger {
                assert!(
                    first <= 3,
                    "non-STUN from an unknown source reached leg {leg:?}"
                );
            }
        }
        Err(DropReason::UnknownSource) => assert!(from == stranger),
        Err(_) => {}
    }
    // Forgetting a leg forgets its addresses: nothing routes to it by address any more.
    demux.remove_leg(LegId(1));
    if let Ok(leg) = demux.route(from, datagram) {
        assert_eq!(leg, LegId(2), "a removed leg still received a datagram");
    }
});
