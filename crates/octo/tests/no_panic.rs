//! Property tests: no input makes the decoder panic, and sealed packets
//! always open to what was sealed.

use kaskade_octo::*;
use proptest::prelude::*;

const SECRET: &[u8] = b"property test cluster secret....";
const A: BridgeId = BridgeId(0x0a);
const B: BridgeId = BridgeId(0x0b);

fn openers() -> Vec<Opener> {
    let mut v = vec![
        Opener::new(
            LinkSecurity::encrypted(Suite::Aes128Gcm, SECRET).unwrap(),
            B,
        ),
        Opener::new(
            LinkSecurity::encrypted(Suite::ChaCha20Poly1305, SECRET).unwrap(),
            B,
        ),
        Opener::new(LinkSecurity::Plaintext, B),
    ];
    for o in &mut v {
        o.add_peer(A).unwrap();
    }
    v
}

/// Arbitrary bytes, biased towards things that look like Octo: a valid
/// version byte and a known sender make the decoder go deeper.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..1600),
        (
            proptest::collection::vec(any::<u8>(), 0..200),
            0u8..5,
            0u8..4,
            any::<u8>()
        )
            .prop_map(|(mut v, t, m, f)| {
                let head = [VERSION_BYTE, t, m, f, 0, 0, 0, A.0 as u8];
                for (i, b) in head.iter().enumerate() {
                    if let Some(x) = v.get_mut(i) {
                        *x = *b;
                    }
                }
                v
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoders_never_panic(bytes in datagram()) {
        let _ = Header::decode(&bytes);
        let _ = Control::decode(&bytes);
        for mut o in openers() {
            let mut buf = bytes.clone();
            if let Ok((h, range)) = o.open_in_place(&mut buf) {
                // Only plaintext can accept random bytes; the range is sane.
                prop_assert!(h.flags.contains(Flags::PLAINTEXT));
                prop_assert!(range.end <= buf.len());
            }
        }
    }

    #[test]
    fn header_round_trips(
        t in 0u8..4, m in 0u8..3, f in any::<u8>(), s in any::<u32>(),
        c in any::<u32>(), e in any::<u32>(), n in any::<u64>(),
    ) {
        let h = Header {
            packet_type: PacketType::from_u8(t).unwrap(),
            media: MediaType::from_u8(m).unwrap(),
            flags: Flags::from_bits_retain(f),
            sender: BridgeId(s),
            conference: ConferenceId(c),
            endpoint: EndpointId(e),
            counter: LinkCounter(n),
        };
        prop_assert_eq!(Header::decode(&h.to_bytes()), Ok(h));
    }

    #[test]
    fn seal_open_round_trips(
        payload in proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD_LEN),
        first in any::<u64>(),
        mode in 0usize..3,
        retransmission in any::<bool>(),
    ) {
        let security = match mode {
            0 => LinkSecurity::encrypted(Suite::Aes128Gcm, SECRET).unwrap(),
            1 => LinkSecurity::encrypted(Suite::ChaCha20Poly1305, SECRET).unwrap(),
            _ => LinkSecurity::Plaintext,
        };
        let mut sealer = Sealer::new(&security, A, B, LinkCounter(first)).unwrap();
        let mut opener = Opener::new(security, B);
        opener.add_peer(A).unwrap();
        let mut meta = PacketMeta::new(PacketType::Rtp, MediaType::Audio, ConferenceId(1), EndpointId(2));
        if retransmission {
            meta = meta.with_flags(Flags::RETRANSMISSION);
        }
        let mut out = Vec::new();
        let sealed = sealer.seal_to_vec(&meta, &payload, &mut out).unwrap();
        prop_assert!(out.len() <= MAX_DATAGRAM_LEN);
        let (h, r) = opener.open_in_place(&mut out).unwrap();
        prop_assert_eq!(h, sealed);
        prop_assert_eq!(&out[r], payload.as_slice());
    }

    #[test]
    fn replay_window_matches_a_naive_model(steps in proptest::collection::vec(0u64..3000, 1..300)) {
        // counters drawn around a moving point: mixes reorders, dups and jumps
        let mut w = ReplayWindow::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut highest: Option<u64> = None;
        for s in steps {
            let c = highest.map_or(s, |h| (h + s).saturating_sub(1500));
            let expect = match highest {
                Some(h) if c + REPLAY_WINDOW <= h => Err(ReplayReject::TooOld),
                _ if seen.contains(&c) => Err(ReplayReject::Duplicate),
                _ => Ok(()),
            };
            prop_assert_eq!(w.accept(c), expect, "counter {}", c);
            if expect.is_ok() {
                seen.insert(c);
                highest = Some(highest.map_or(c, |h| h.max(c)));
            }
        }
    }
}
