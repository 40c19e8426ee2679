//! Round trips and every rejection path through the public API.

use kaskade_octo::*;

const A: BridgeId = BridgeId(1);
const B: BridgeId = BridgeId(2);
const C: BridgeId = BridgeId(3);
const SECRET: &[u8] = b"a cluster secret of 32 bytes....";

fn enc(suite: Suite) -> LinkSecurity {
    LinkSecurity::encrypted(suite, SECRET).unwrap()
}

fn modes() -> Vec<LinkSecurity> {
    vec![
        enc(Suite::Aes128Gcm),
        enc(Suite::ChaCha20Poly1305),
        LinkSecurity::Plaintext,
    ]
}

fn meta() -> PacketMeta {
    PacketMeta::new(
        PacketType::Rtp,
        MediaType::Video,
        ConferenceId(0xabcd),
        EndpointId(9),
    )
}

fn pair(security: &LinkSecurity, first: u64) -> (Sealer, Opener) {
    let sealer = Sealer::new(security, A, B, LinkCounter(first)).unwrap();
    let mut opener = Opener::new(security.clone(), B);
    opener.add_peer(A).unwrap();
    (sealer, opener)
}

fn seal(sealer: &mut Sealer, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    sealer.seal_to_vec(&meta(), payload, &mut out).unwrap();
    out
}

#[test]
fn round_trip_all_modes_and_sizes() {
    for security in modes() {
        let (mut sealer, mut opener) = pair(&security, 100);
        for len in [0, 1, 15, 16, 17, 200, 1200, MAX_PAYLOAD_LEN] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut pkt = seal(&mut sealer, &payload);
            assert_eq!(pkt.len(), sealer.sealed_len(len));
            if security.is_encrypted() && len >= 16 {
                assert_ne!(&pkt[HEADER_LEN..HEADER_LEN + len], payload.as_slice());
            }
            let (h, range) = opener.open_in_place(&mut pkt).unwrap();
            assert_eq!(&pkt[range], payload.as_slice());
            assert_eq!(h.sender, A);
            assert_eq!(h.conference, ConferenceId(0xabcd));
            assert_eq!(h.endpoint, EndpointId(9));
            assert_eq!(h.packet_type, PacketType::Rtp);
            assert_eq!(h.media, MediaType::Video);
            assert_eq!(h.flags.contains(Flags::PLAINTEXT), !security.is_encrypted());
        }
        assert_eq!(opener.highest_counter(A), Some(LinkCounter(107)));
    }
}

#[test]
fn seal_in_place_and_vec_in_place_agree_with_seal_to_vec() {
    let security = enc(Suite::Aes128Gcm);
    let payload = b"payload bytes";
    let mut s1 = Sealer::new(&security, A, B, LinkCounter(5)).unwrap();
    let mut s2 = Sealer::new(&security, A, B, LinkCounter(5)).unwrap();
    let mut s3 = Sealer::new(&security, A, B, LinkCounter(5)).unwrap();
    let m = meta().with_flags(Flags::RETRANSMISSION);

    let mut a = Vec::new();
    s1.seal_to_vec(&m, payload, &mut a).unwrap();

    let mut fixed = [0xeeu8; 1500];
    fixed[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    let (h, len) = s2.seal_in_place(&m, &mut fixed, payload.len()).unwrap();
    assert_eq!(&fixed[..len], a.as_slice());
    assert_eq!(fixed[len], 0xee, "bytes past the datagram untouched");
    assert!(h.flags.contains(Flags::RETRANSMISSION));

    let mut v = vec![0u8; HEADER_LEN];
    v.extend_from_slice(payload);
    s3.seal_vec_in_place(&m, &mut v).unwrap();
    assert_eq!(v, a);
}

#[test]
fn sealer_counts_and_never_reuses() {
    let security = enc(Suite::Aes128Gcm);
    let mut s = Sealer::new(&security, A, B, LinkCounter(10)).unwrap();
    let mut out = Vec::new();
    let h1 = s.seal_to_vec(&meta(), b"x", &mut out).unwrap();
    let h2 = s.seal_to_vec(&meta(), b"x", &mut out).unwrap();
    assert_eq!((h1.counter, h2.counter), (LinkCounter(10), LinkCounter(11)));
    s.advance_to(LinkCounter(5)); // never backwards
    assert_eq!(s.next_counter(), Some(LinkCounter(12)));
    s.advance_to(LinkCounter(1000));
    assert_eq!(s.next_counter(), Some(LinkCounter(1000)));

    let mut s = Sealer::new(&security, A, B, LinkCounter(u64::MAX)).unwrap();
    let h = s.seal_to_vec(&meta(), b"x", &mut out).unwrap();
    assert_eq!(h.counter, LinkCounter(u64::MAX));
    assert_eq!(
        s.seal_to_vec(&meta(), b"x", &mut out),
        Err(SealError::CounterExhausted)
    );
    assert!(out.is_empty());
    s.advance_to(LinkCounter(3));
    assert_eq!(s.next_counter(), None);
}

#[test]
fn plaintext_flag_is_owned_by_the_mode() {
    let m = meta().with_flags(Flags::PLAINTEXT);
    let mut s = Sealer::new(&enc(Suite::Aes128Gcm), A, B, LinkCounter(1)).unwrap();
    let mut out = Vec::new();
    let h = s.seal_to_vec(&m, b"x", &mut out).unwrap();
    assert!(!h.flags.contains(Flags::PLAINTEXT));
    let mut s = Sealer::new(&LinkSecurity::Plaintext, A, B, LinkCounter(1)).unwrap();
    let h = s.seal_to_vec(&meta(), b"x", &mut out).unwrap();
    assert!(h.flags.contains(Flags::PLAINTEXT));
    assert_eq!(out.len(), HEADER_LEN + 1);
}

#[test]
fn seal_errors() {
    let security = enc(Suite::ChaCha20Poly1305);
    let mut s = Sealer::new(&security, A, B, LinkCounter(1)).unwrap();
    let mut out = vec![1, 2, 3];
    assert_eq!(
        s.seal_to_vec(&meta(), &[0; MAX_PAYLOAD_LEN + 1], &mut out),
        Err(SealError::Oversized {
            len: MAX_PAYLOAD_LEN + 1,
            max: MAX_PAYLOAD_LEN
        })
    );
    assert!(out.is_empty());
    let mut small = [0u8; HEADER_LEN + 10];
    assert_eq!(
        s.seal_in_place(&meta(), &mut small, 10),
        Err(SealError::BufferTooSmall {
            need: HEADER_LEN + 10 + TAG_LEN,
            have: HEADER_LEN + 10
        })
    );
    let mut short = vec![0u8; HEADER_LEN - 1];
    assert!(matches!(
        s.seal_vec_in_place(&meta(), &mut short),
        Err(SealError::BufferTooSmall { .. })
    ));
    // errors consumed no counter
    assert_eq!(s.next_counter(), Some(LinkCounter(1)));
    assert_eq!(
        Sealer::new(&security, A, A, LinkCounter(1)).err(),
        Some(ConfigError::SelfLink)
    );
    assert_eq!(
        LinkSecurity::encrypted(Suite::Aes128Gcm, b"short").err(),
        Some(ConfigError::SecretTooShort { len: 5, min: 16 })
    );
}

#[test]
fn every_header_byte_and_every_tag_byte_is_authenticated() {
    for suite in Suite::ALL {
        let security = enc(suite);
        let (mut sealer, _) = pair(&security, 1_000);
        let pkt = seal(&mut sealer, b"some media payload");
        for i in 0..pkt.len() {
            for bit in [0x01u8, 0x80] {
                let (_, mut opener) = pair(&security, 0);
                let mut bad = pkt.clone();
                bad[i] ^= bit;
                let err = opener.open_in_place(&mut bad).unwrap_err();
                // Bytes 0-2 are checked structurally before the tag, the
                // PLAINTEXT flag by the mode, the sender id by the peer list;
                // everything else must fail authentication.
                let allowed: &[OpenError] = match i {
                    0 => &[OpenError::BadVersion],
                    1 | 2 => &[OpenError::BadType, OpenError::Auth],
                    3 if bit == 0x02 => &[OpenError::PlaintextRefused],
                    4..=7 => &[OpenError::UnknownSender],
                    _ => &[OpenError::Auth],
                };
                assert!(
                    allowed.contains(&err),
                    "{suite:?} byte {i} bit {bit:#x}: {err:?}"
                );
                // A failed packet never moves the window: the original still opens.
                let mut good = pkt.clone();
                assert!(opener.open_in_place(&mut good).is_ok(), "byte {i}");
            }
        }
        // and flag bit 0x02 specifically (not covered by 0x01/0x80 above)
        let (_, mut opener) = pair(&security, 0);
        let mut bad = pkt.clone();
        bad[3] ^= 0x02;
        assert_eq!(
            opener.open_in_place(&mut bad),
            Err(OpenError::PlaintextRefused)
        );
    }
}

#[test]
fn sender_id_forgery_fails_auth_for_known_peer() {
    // C is a peer of B too, but the packet was sealed with A's key.
    let security = enc(Suite::Aes128Gcm);
    let (mut sealer, mut opener) = pair(&security, 1);
    opener.add_peer(C).unwrap();
    let mut pkt = seal(&mut sealer, b"x");
    pkt[4..8].copy_from_slice(&C.0.to_be_bytes());
    assert_eq!(opener.open_in_place(&mut pkt), Err(OpenError::Auth));
}

#[test]
fn packet_for_another_receiver_fails_auth() {
    let security = enc(Suite::Aes128Gcm);
    let mut to_c = Sealer::new(&security, A, C, LinkCounter(1)).unwrap();
    let (_, mut opener_b) = pair(&security, 0);
    let mut pkt = seal(&mut to_c, b"for C");
    assert_eq!(opener_b.open_in_place(&mut pkt), Err(OpenError::Auth));
}

#[test]
fn suite_mismatch_fails_auth() {
    let mut s = Sealer::new(&enc(Suite::ChaCha20Poly1305), A, B, LinkCounter(1)).unwrap();
    let (_, mut o) = pair(&enc(Suite::Aes128Gcm), 0);
    let mut pkt = seal(&mut s, b"x");
    assert_eq!(o.open_in_place(&mut pkt), Err(OpenError::Auth));
}

#[test]
fn mode_mismatch_is_refused_both_ways() {
    let (mut plain, _) = pair(&LinkSecurity::Plaintext, 1);
    let (_, mut enc_rx) = pair(&enc(Suite::Aes128Gcm), 0);
    let mut pkt = seal(&mut plain, b"x");
    assert_eq!(
        enc_rx.open_in_place(&mut pkt),
        Err(OpenError::PlaintextRefused)
    );

    let (mut enc_tx, _) = pair(&enc(Suite::Aes128Gcm), 1);
    let (_, mut plain_rx) = pair(&LinkSecurity::Plaintext, 0);
    let mut pkt = seal(&mut enc_tx, b"x");
    assert_eq!(
        plain_rx.open_in_place(&mut pkt),
        Err(OpenError::EncryptedRefused)
    );
}

#[test]
fn unknown_sender_and_self_are_refused() {
    for security in modes() {
        let mut from_c = Sealer::new(&security, C, B, LinkCounter(1)).unwrap();
        let (_, mut opener) = pair(&security, 0);
        let mut pkt = seal(&mut from_c, b"x");
        assert_eq!(
            opener.open_in_place(&mut pkt),
            Err(OpenError::UnknownSender)
        );
        // a packet claiming to come from the receiver itself
        let mut pkt = seal(&mut from_c, b"x");
        pkt[4..8].copy_from_slice(&B.0.to_be_bytes());
        assert_eq!(
            opener.open_in_place(&mut pkt),
            Err(OpenError::UnknownSender)
        );
        assert_eq!(opener.add_peer(B), Err(ConfigError::SelfLink));
        // removing a peer refuses it from then on
        let (mut s, _) = pair(&security, 10);
        assert!(opener.remove_peer(A));
        let mut pkt = seal(&mut s, b"x");
        assert_eq!(
            opener.open_in_place(&mut pkt),
            Err(OpenError::UnknownSender)
        );
        assert!(!opener.has_peer(A));
    }
}

#[test]
fn truncated_and_oversized() {
    for security in modes() {
        let (mut s, mut o) = pair(&security, 1);
        let pkt = seal(&mut s, b"");
        let min = pkt.len();
        for cut in 0..min {
            let mut short = pkt[..cut].to_vec();
            assert_eq!(
                o.open_in_place(&mut short),
                Err(OpenError::Truncated),
                "{cut}"
            );
        }
        let mut empty = pkt.clone();
        assert!(
            o.open_in_place(&mut empty).is_ok(),
            "empty payload is valid"
        );

        let mut big = pkt[..HEADER_LEN].to_vec();
        big.resize(MAX_DATAGRAM_LEN + 1, 0);
        assert_eq!(o.open_in_place(&mut big), Err(OpenError::Oversized));
    }
    // plaintext: payload over the limit even though the datagram fits
    let (mut s, mut o) = pair(&LinkSecurity::Plaintext, 1);
    let mut pkt = seal(&mut s, &[1; MAX_PAYLOAD_LEN]);
    pkt.push(0);
    assert!(pkt.len() <= MAX_DATAGRAM_LEN);
    assert_eq!(o.open_in_place(&mut pkt), Err(OpenError::Oversized));
}

#[test]
fn replay_rules_through_the_opener() {
    for security in modes() {
        let (mut s, mut o) = pair(&security, 50_000);
        let packets: Vec<Vec<u8>> = (0..1100).map(|_| seal(&mut s, b"p")).collect();
        // out of order within the window is fine, once
        let mut p = packets[5].clone();
        assert!(o.open_in_place(&mut p).is_ok());
        let mut p = packets[3].clone();
        assert!(o.open_in_place(&mut p).is_ok());
        let mut p = packets[3].clone();
        assert_eq!(o.open_in_place(&mut p), Err(OpenError::Replay));
        // jump to the last: 1099 - 1024 = 75 is exactly too old, 76 the oldest allowed
        let mut p = packets[1099].clone();
        assert!(o.open_in_place(&mut p).is_ok());
        let mut p = packets[75].clone();
        assert_eq!(o.open_in_place(&mut p), Err(OpenError::Replay));
        let mut p = packets[76].clone();
        assert!(o.open_in_place(&mut p).is_ok());
        // re-adding a known peer does not reset its window
        o.add_peer(A).unwrap();
        let mut p = packets[1099].clone();
        assert_eq!(o.open_in_place(&mut p), Err(OpenError::Replay));
        // sender restart with a clock-seeded counter: far ahead, accepted
        let (mut restarted, _) = pair(&security, 1 << 52);
        let mut p = seal(&mut restarted, b"after restart");
        assert!(o.open_in_place(&mut p).is_ok());
        let mut p = packets[1098].clone();
        assert_eq!(o.open_in_place(&mut p), Err(OpenError::Replay));
    }
}

#[test]
fn forged_packet_does_not_move_the_window() {
    let security = enc(Suite::Aes128Gcm);
    let (mut s, mut o) = pair(&security, 10);
    let good = seal(&mut s, b"x");
    // forge a far-ahead counter: auth fails, window must stay
    let mut forged = good.clone();
    forged[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(o.open_in_place(&mut forged), Err(OpenError::Auth));
    assert_eq!(o.highest_counter(A), None);
    let mut p = good.clone();
    assert!(o.open_in_place(&mut p).is_ok());
}

#[test]
fn floor_refuses_recordings_after_receiver_restart() {
    let security = enc(Suite::Aes128Gcm);
    let (mut s, _) = pair(&security, 1_000);
    let old = seal(&mut s, b"recorded");
    let mut o = Opener::new(security, B);
    o.add_peer_with_floor(A, LinkCounter(2_000)).unwrap();
    let mut p = old.clone();
    assert_eq!(o.open_in_place(&mut p), Err(OpenError::Replay));
    s.advance_to(LinkCounter(2_000));
    let mut p = seal(&mut s, b"fresh");
    assert!(o.open_in_place(&mut p).is_ok());
}

#[test]
fn control_ping_round_trip_over_a_link() {
    let security = enc(Suite::ChaCha20Poly1305);
    let (mut s, mut o) = pair(&security, 1);
    let (ping, len) = Control::Ping { token: 77 }.to_bytes();
    let mut out = Vec::new();
    s.seal_to_vec(&PacketMeta::control(), &ping[..len], &mut out)
        .unwrap();
    let (h, r) = o.open_in_place(&mut out).unwrap();
    assert_eq!(h.packet_type, PacketType::Control);
    assert_eq!(h.conference, ConferenceId::LINK);
    assert!(h.endpoint.is_bridge());
    assert_eq!(Control::decode(&out[r]), Ok(Control::Ping { token: 77 }));
}

#[test]
fn error_labels_are_unique() {
    let mut labels: Vec<&str> = OpenError::ALL.iter().map(|e| e.label()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), OpenError::ALL.len());
}
