//! The media route: a relay in front of the node replaces the candidate both ways, and the
//! SSRC tag survives the round trip.

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[test]
fn without_a_relay_the_candidate_is_used_as_is() {
    let mut r = MediaRoute::default();
    let node = addr("127.0.0.1:10000");
    assert_eq!(r.outbound(node), node);
    assert_eq!(r.inbound(node), node);
    assert_eq!(r.peer, None);
}

#[test]
fn a_relay_replaces_the_candidate_both_ways() {
    let via = addr("127.0.0.1:20001");
    let node = addr("127.0.0.2:10000");
    let mut r = MediaRoute {
        via: Some(via),
        peer: None,
    };
    // Nothing sent yet: a datagram from the relay cannot be attributed.
    assert_eq!(r.inbound(via), via);
    assert_eq!(r.outbound(node), via);
    assert_eq!(
        r.inbound(via),
        node,
        "the relay's datagrams come from the node for rtc"
    );
    // A stray sender is left as it is (rtc drops it).
    let other = addr("127.0.0.1:30000");
    assert_eq!(r.inbound(other), other);
}

#[test]
fn ssrc_tags_round_trip_and_keep_streams_apart() {
    for tag in [0u8, 1, 7, 255] {
        for base in [
            AUDIO_SSRC,
            VIDEO_SSRC,
            SIMULCAST_SSRCS[0],
            SIMULCAST_SSRCS[2],
        ] {
            assert_eq!(ssrc_tag(tagged_ssrc(base, tag)), tag);
        }
    }
    assert_eq!(tagged_ssrc(AUDIO_SSRC, 0), AUDIO_SSRC);
    let mut all: Vec<u32> = (0..=255u8)
        .flat_map(|t| {
            [AUDIO_SSRC, VIDEO_SSRC]
                .into_iter()
                .chain(SIMULCAST_SSRCS)
                .map(move |b| tagged_ssrc(b, t))
        })
        .collect();
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "no two (tag, stream) pairs share an SSRC");
}
