//! Prints the Octo v1 test vectors (`proto/octo-vectors/octo-v1.json`).
//!
//! ```text
//! cargo run -p kaskade-octo --example octo_vectors > proto/octo-vectors/octo-v1.json
//! ```
//!
//! The file is the contract: the crate's `vectors` test checks the code
//! against it, so regenerate it only for a deliberate wire change (and then
//! bump the version).

use kaskade_octo::*;
use std::fmt::Write as _;

const SECRET: [u8; 32] = {
    let mut s = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        s[i] = i as u8;
        i += 1;
    }
    s
};
const SENDER: BridgeId = BridgeId(0x11);
const RECEIVER: BridgeId = BridgeId(0x22);
const STRANGER: BridgeId = BridgeId(0x33);
const OTHER_RECEIVER: BridgeId = BridgeId(0x44);
const CONFERENCE: ConferenceId = ConferenceId(0x5ca1_ab1e);
const ENDPOINT: EndpointId = EndpointId(0x2a);
/// 2023-11-14T22:13:20Z in microseconds: the recommended clock-seeded start.
const FIRST: u64 = 1_700_000_000_000_000;

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

#[derive(Clone, Copy)]
enum Mode {
    Suite(Suite),
    Plaintext,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Suite(s) => s.name(),
            Mode::Plaintext => "plaintext",
        }
    }
    fn security(self) -> LinkSecurity {
        match self {
            Mode::Suite(s) => LinkSecurity::encrypted(s, &SECRET).expect("secret"),
            Mode::Plaintext => LinkSecurity::Plaintext,
        }
    }
}

const MODES: [Mode; 3] = [
    Mode::Suite(Suite::Aes128Gcm),
    Mode::Suite(Suite::ChaCha20Poly1305),
    Mode::Plaintext,
];

struct Sample {
    name: &'static str,
    meta: PacketMeta,
    payload: Vec<u8>,
}

fn samples() -> Vec<Sample> {
    // Opus RTP: V=2 PT=111 seq=0x1234 ts=0x00010000 ssrc=0x11223344, 8 payload bytes.
    let rtp = [
        0x80, 0x6f, 0x12, 0x34, 0x00, 0x01, 0x00, 0x00, 0x11, 0x22, 0x33, 0x44, 0xfc, 0xff, 0xfe,
        0x01, 0x02, 0x03, 0x04, 0x05,
    ];
    // RTCP PLI from ssrc 1 for media ssrc 0x55667788.
    let rtcp = [
        0x81, 0xce, 0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x55, 0x66, 0x77, 0x88,
    ];
    // VP8 RTP: V=2 M=1 PT=96 seq=0x0100 ts=0x00002000 ssrc=0x99aabbcc, 6 payload bytes.
    let rtx = [
        0x80, 0xe0, 0x01, 0x00, 0x00, 0x00, 0x20, 0x00, 0x99, 0xaa, 0xbb, 0xcc, 0x90, 0x80, 0x00,
        0x9d, 0x01, 0x2a,
    ];
    let message = br#"{"type":"hello","bridge":17}"#.to_vec();
    let (ping, ping_len) = Control::Ping {
        token: 0x0102_0304_0506_0708,
    }
    .to_bytes();
    vec![
        Sample {
            name: "rtp",
            meta: PacketMeta::new(PacketType::Rtp, MediaType::Audio, CONFERENCE, ENDPOINT),
            payload: rtp.to_vec(),
        },
        Sample {
            name: "rtcp",
            meta: PacketMeta::new(PacketType::Rtcp, MediaType::Video, CONFERENCE, ENDPOINT),
            payload: rtcp.to_vec(),
        },
        Sample {
            name: "message",
            meta: PacketMeta::new(
                PacketType::Message,
                MediaType::Data,
                CONFERENCE,
                EndpointId::BRIDGE,
            ),
            payload: message,
        },
        Sample {
            name: "rtp-retransmission",
            meta: PacketMeta::new(PacketType::Rtp, MediaType::Video, CONFERENCE, ENDPOINT)
                .with_flags(Flags::RETRANSMISSION),
            payload: rtx.to_vec(),
        },
        Sample {
            name: "control-ping",
            meta: PacketMeta::control(),
            payload: ping[..ping_len].to_vec(),
        },
    ]
}

fn seal(mode: Mode, from: BridgeId, to: BridgeId, counter: u64, s: &Sample) -> Vec<u8> {
    let mut sealer = Sealer::new(&mode.security(), from, to, LinkCounter(counter)).expect("link");
    let mut out = Vec::new();
    sealer
        .seal_to_vec(&s.meta, &s.payload, &mut out)
        .expect("seal");
    out
}

fn main() {
    let secret = ClusterSecret::new(&SECRET).expect("secret");
    let mut o = String::new();
    o.push_str("{\n");
    o.push_str(
        "  \"description\": \"Octo v1 test vectors; see proto/octo.md, section Test vectors\",\n",
    );
    let _ = writeln!(o, "  \"secret\": \"{}\",", hex(&SECRET));
    let _ = writeln!(o, "  \"hkdf_salt\": \"{}\",", hex(HKDF_SALT));
    let _ = writeln!(o, "  \"hkdf_info_prefix\": \"{}\",", hex(HKDF_INFO_PREFIX));

    // Link keys, both directions, both suites.
    o.push_str("  \"links\": [\n");
    let mut rows = Vec::new();
    for suite in Suite::ALL {
        for (from, to) in [(SENDER, RECEIVER), (RECEIVER, SENDER)] {
            let k = secret.link_keys(suite, from, to).expect("keys");
            rows.push(format!(
                "    {{\"suite\": \"{}\", \"sender\": {}, \"receiver\": {}, \"key\": \"{}\", \"iv\": \"{}\"}}",
                suite.name(),
                from.0,
                to.0,
                hex(k.key()),
                hex(k.iv())
            ));
        }
    }
    o.push_str(&rows.join(",\n"));
    o.push_str("\n  ],\n");

    // Sealed packets.
    o.push_str("  \"packets\": [\n");
    let mut rows = Vec::new();
    for mode in MODES {
        for (i, s) in samples().iter().enumerate() {
            let counter = FIRST + i as u64;
            let packet = seal(mode, SENDER, RECEIVER, counter, s);
            let header = Header::decode(&packet).expect("decode");
            let nonce = match mode {
                Mode::Suite(suite) => hex(&secret
                    .link_keys(suite, SENDER, RECEIVER)
                    .expect("keys")
                    .nonce(LinkCounter(counter))),
                Mode::Plaintext => String::new(),
            };
            rows.push(format!(
                concat!(
                    "    {{\n",
                    "      \"name\": \"{}-{}\",\n",
                    "      \"mode\": \"{}\",\n",
                    "      \"sender\": {},\n",
                    "      \"receiver\": {},\n",
                    "      \"type\": \"{}\",\n",
                    "      \"media\": \"{}\",\n",
                    "      \"flags\": {},\n",
                    "      \"conference\": {},\n",
                    "      \"endpoint\": {},\n",
                    "      \"counter\": \"{}\",\n",
                    "      \"nonce\": \"{}\",\n",
                    "      \"payload\": \"{}\",\n",
                    "      \"packet\": \"{}\"\n",
                    "    }}"
                ),
                mode.name(),
                s.name,
                mode.name(),
                SENDER.0,
                RECEIVER.0,
                header.packet_type.name(),
                header.media.name(),
                header.flags.bits(),
                header.conference.0,
                header.endpoint.0,
                counter,
                nonce,
                hex(&s.payload),
                hex(&packet)
            ));
        }
    }
    o.push_str(&rows.join(",\n"));
    o.push_str("\n  ],\n");

    // Packets a receiver must refuse. The receiver is bridge 0x22 with peer
    // 0x11 and the given mode; `preceded_by` are opened first and must pass.
    let aes = Mode::Suite(Suite::Aes128Gcm);
    let chacha = Mode::Suite(Suite::ChaCha20Poly1305);
    let all = samples();
    let rtp = &all[0];
    let good = seal(aes, SENDER, RECEIVER, FIRST, rtp);
    let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut p = good.clone();
        f(&mut p);
        p
    };
    let far_ahead = seal(aes, SENDER, RECEIVER, FIRST + REPLAY_WINDOW, rtp);
    let just_inside = seal(aes, SENDER, RECEIVER, FIRST + REPLAY_WINDOW - 1, rtp);
    let mut oversized = good[..HEADER_LEN].to_vec();
    oversized.resize(MAX_DATAGRAM_LEN + 1, 0);
    let mut plain_oversized =
        seal(Mode::Plaintext, SENDER, RECEIVER, FIRST, rtp)[..HEADER_LEN].to_vec();
    plain_oversized.resize(HEADER_LEN + MAX_PAYLOAD_LEN + 1, 0);
    // (name, receiver mode, opened first, packet, expected error)
    type Reject = (&'static str, Mode, Vec<Vec<u8>>, Vec<u8>, OpenError);
    let rejects: Vec<Reject> = vec![
        (
            "short-header",
            aes,
            vec![],
            good[..HEADER_LEN - 1].to_vec(),
            OpenError::Truncated,
        ),
        (
            "short-tag",
            aes,
            vec![],
            good[..HEADER_LEN + TAG_LEN - 1].to_vec(),
            OpenError::Truncated,
        ),
        (
            "bad-version",
            aes,
            vec![],
            mutate(&|p| p[0] = 0x62),
            OpenError::BadVersion,
        ),
        (
            "bad-magic",
            aes,
            vec![],
            mutate(&|p| p[0] = 0x81),
            OpenError::BadVersion,
        ),
        (
            "bad-packet-type",
            aes,
            vec![],
            mutate(&|p| p[1] = 4),
            OpenError::BadType,
        ),
        (
            "bad-media-type",
            aes,
            vec![],
            mutate(&|p| p[2] = 3),
            OpenError::BadType,
        ),
        (
            "tampered-flags",
            aes,
            vec![],
            mutate(&|p| p[3] ^= 0x01),
            OpenError::Auth,
        ),
        (
            "tampered-conference",
            aes,
            vec![],
            mutate(&|p| p[11] ^= 0x01),
            OpenError::Auth,
        ),
        (
            "tampered-endpoint",
            aes,
            vec![],
            mutate(&|p| p[15] ^= 0x80),
            OpenError::Auth,
        ),
        (
            "tampered-counter",
            aes,
            vec![],
            mutate(&|p| p[23] ^= 0x01),
            OpenError::Auth,
        ),
        (
            "tampered-payload",
            aes,
            vec![],
            mutate(&|p| p[HEADER_LEN] ^= 0x01),
            OpenError::Auth,
        ),
        (
            "tampered-tag",
            aes,
            vec![],
            mutate(&|p| *p.last_mut().unwrap() ^= 0x01),
            OpenError::Auth,
        ),
        (
            "wrong-receiver",
            aes,
            vec![],
            seal(aes, SENDER, OTHER_RECEIVER, FIRST, rtp),
            OpenError::Auth,
        ),
        (
            "wrong-suite",
            aes,
            vec![],
            seal(chacha, SENDER, RECEIVER, FIRST, rtp),
            OpenError::Auth,
        ),
        (
            "plaintext-at-encrypted",
            aes,
            vec![],
            seal(Mode::Plaintext, SENDER, RECEIVER, FIRST, rtp),
            OpenError::PlaintextRefused,
        ),
        (
            "encrypted-at-plaintext",
            Mode::Plaintext,
            vec![],
            good.clone(),
            OpenError::EncryptedRefused,
        ),
        (
            "unknown-sender",
            aes,
            vec![],
            seal(aes, STRANGER, RECEIVER, FIRST, rtp),
            OpenError::UnknownSender,
        ),
        (
            "duplicate",
            aes,
            vec![good.clone()],
            good.clone(),
            OpenError::Replay,
        ),
        (
            "window-old",
            aes,
            vec![far_ahead.clone(), just_inside],
            good.clone(),
            OpenError::Replay,
        ),
        (
            "oversized-datagram",
            aes,
            vec![],
            oversized,
            OpenError::Oversized,
        ),
        (
            "oversized-plaintext-payload",
            Mode::Plaintext,
            vec![],
            plain_oversized,
            OpenError::Oversized,
        ),
    ];
    o.push_str("  \"rejects\": [\n");
    let mut rows = Vec::new();
    for (name, mode, before, packet, err) in rejects {
        let before: Vec<String> = before.iter().map(|p| format!("\"{}\"", hex(p))).collect();
        rows.push(format!(
            concat!(
                "    {{\n",
                "      \"name\": \"{}\",\n",
                "      \"mode\": \"{}\",\n",
                "      \"receiver\": {},\n",
                "      \"peers\": [{}],\n",
                "      \"preceded_by\": [{}],\n",
                "      \"packet\": \"{}\",\n",
                "      \"error\": \"{}\"\n",
                "    }}"
            ),
            name,
            mode.name(),
            RECEIVER.0,
            SENDER.0,
            before.join(", "),
            hex(&packet),
            err.label()
        ));
    }
    o.push_str(&rows.join(",\n"));
    o.push_str("\n  ]\n}\n");
    print!("{o}");
}
