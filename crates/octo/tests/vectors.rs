//! Checks the code against the spec's test vectors in `proto/octo-vectors/`:
//! derived keys, byte-exact decode and re-seal of every packet, and every
//! rejection with its exact error. If this fails, either the code or the
//! spec changed the wire format.

use kaskade_octo::*;
use serde_json::Value;
use std::path::PathBuf;

fn vectors() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto/octo-vectors/octo-v1.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("vectors are JSON")
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("field {k} missing in {v}"))
}

fn u32_of(v: &Value, k: &str) -> u32 {
    let n = v[k]
        .as_u64()
        .unwrap_or_else(|| panic!("field {k} missing in {v}"));
    u32::try_from(n).expect("u32")
}

fn security(mode: &str, secret: &[u8]) -> LinkSecurity {
    match mode {
        "plaintext" => LinkSecurity::Plaintext,
        name => {
            LinkSecurity::encrypted(Suite::from_name(name).expect("suite"), secret).expect("secret")
        }
    }
}

fn packet_type(name: &str) -> PacketType {
    [
        PacketType::Rtp,
        PacketType::Rtcp,
        PacketType::Message,
        PacketType::Control,
    ]
    .into_iter()
    .find(|t| t.name() == name)
    .expect("packet type")
}

fn media_type(name: &str) -> MediaType {
    [MediaType::Audio, MediaType::Video, MediaType::Data]
        .into_iter()
        .find(|t| t.name() == name)
        .expect("media type")
}

#[test]
fn constants_match_spec() {
    let v = vectors();
    assert_eq!(unhex(str_of(&v, "hkdf_salt")), HKDF_SALT);
    assert_eq!(unhex(str_of(&v, "hkdf_info_prefix")), HKDF_INFO_PREFIX);
    assert_eq!(HKDF_SALT, b"kaskade octo v1");
    assert_eq!(HKDF_INFO_PREFIX, b"kaskade octo v1 link");
}

#[test]
fn link_keys_match() {
    let v = vectors();
    let secret = ClusterSecret::new(&unhex(str_of(&v, "secret"))).unwrap();
    let links = v["links"].as_array().expect("links");
    assert_eq!(links.len(), 4);
    for l in links {
        let suite = Suite::from_name(str_of(l, "suite")).expect("suite");
        let keys = secret
            .link_keys(
                suite,
                BridgeId(u32_of(l, "sender")),
                BridgeId(u32_of(l, "receiver")),
            )
            .unwrap();
        assert_eq!(keys.key(), unhex(str_of(l, "key")).as_slice(), "{l}");
        assert_eq!(
            keys.iv().as_slice(),
            unhex(str_of(l, "iv")).as_slice(),
            "{l}"
        );
    }
}

#[test]
fn packets_decode_open_and_reseal_byte_exactly() {
    let v = vectors();
    let secret_bytes = unhex(str_of(&v, "secret"));
    let secret = ClusterSecret::new(&secret_bytes).unwrap();
    let packets = v["packets"].as_array().expect("packets");
    assert_eq!(packets.len(), 15);
    let mut kinds = std::collections::BTreeSet::new();
    for p in packets {
        let name = str_of(p, "name");
        let mode = str_of(p, "mode");
        let sender = BridgeId(u32_of(p, "sender"));
        let receiver = BridgeId(u32_of(p, "receiver"));
        let counter = LinkCounter(str_of(p, "counter").parse().expect("counter"));
        let payload = unhex(str_of(p, "payload"));
        let packet = unhex(str_of(p, "packet"));
        kinds.insert((mode.to_owned(), str_of(p, "type").to_owned()));

        // Header fields as the spec states them.
        let expected = Header {
            packet_type: packet_type(str_of(p, "type")),
            media: media_type(str_of(p, "media")),
            flags: Flags::from_bits_retain(u8::try_from(u32_of(p, "flags")).unwrap()),
            sender,
            conference: ConferenceId(u32_of(p, "conference")),
            endpoint: EndpointId(u32_of(p, "endpoint")),
            counter,
        };
        let header = Header::decode(&packet).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(header, expected, "{name}");
        assert_eq!(
            header.to_bytes().as_slice(),
            &packet[..HEADER_LEN],
            "{name}"
        );
        assert_eq!(
            header.flags.contains(Flags::PLAINTEXT),
            mode == "plaintext",
            "{name}"
        );

        // Nonce.
        if mode != "plaintext" {
            let keys = secret
                .link_keys(Suite::from_name(mode).unwrap(), sender, receiver)
                .unwrap();
            assert_eq!(
                keys.nonce(counter).as_slice(),
                unhex(str_of(p, "nonce")).as_slice(),
                "{name}"
            );
            assert_eq!(packet.len(), HEADER_LEN + payload.len() + TAG_LEN, "{name}");
        } else {
            assert_eq!(str_of(p, "nonce"), "", "{name}");
            assert_eq!(&packet[HEADER_LEN..], payload.as_slice(), "{name}");
        }

        // Open.
        let mut opener = Opener::new(security(mode, &secret_bytes), receiver);
        opener.add_peer(sender).unwrap();
        let mut buf = packet.clone();
        let (opened, range) = opener
            .open_in_place(&mut buf)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(opened, expected, "{name}");
        assert_eq!(&buf[range], payload.as_slice(), "{name}");

        // Re-seal from the stated fields: byte-exact.
        let mut sealer =
            Sealer::new(&security(mode, &secret_bytes), sender, receiver, counter).unwrap();
        let meta = PacketMeta {
            packet_type: expected.packet_type,
            media: expected.media,
            flags: expected.flags,
            conference: expected.conference,
            endpoint: expected.endpoint,
        };
        let mut out = Vec::new();
        let sealed = sealer.seal_to_vec(&meta, &payload, &mut out).unwrap();
        assert_eq!(sealed, expected, "{name}");
        assert_eq!(out, packet, "{name}: re-sealed bytes differ");

        // Control payloads parse.
        if expected.packet_type == PacketType::Control {
            Control::decode(&payload).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        if expected.packet_type == PacketType::Message {
            let _: Value = serde_json::from_slice(&payload).expect("message is JSON");
        }
    }
    // Every mode has an RTP, an RTCP and a message vector.
    for mode in ["aes128gcm", "chacha20poly1305", "plaintext"] {
        for t in ["rtp", "rtcp", "message", "control"] {
            assert!(
                kinds.contains(&(mode.to_owned(), t.to_owned())),
                "{mode}/{t} missing"
            );
        }
    }
}

#[test]
fn rejects_fail_with_the_stated_error() {
    let v = vectors();
    let secret_bytes = unhex(str_of(&v, "secret"));
    let rejects = v["rejects"].as_array().expect("rejects");
    let mut seen = std::collections::HashSet::new();
    for r in rejects {
        let name = str_of(r, "name");
        let mut opener = Opener::new(
            security(str_of(r, "mode"), &secret_bytes),
            BridgeId(u32_of(r, "receiver")),
        );
        for peer in r["peers"].as_array().expect("peers") {
            let id = u32::try_from(peer.as_u64().expect("peer id")).unwrap();
            opener.add_peer(BridgeId(id)).unwrap();
        }
        for before in r["preceded_by"].as_array().expect("preceded_by") {
            let mut buf = unhex(before.as_str().expect("hex"));
            opener
                .open_in_place(&mut buf)
                .unwrap_or_else(|e| panic!("{name}: preceding packet refused: {e}"));
        }
        let mut buf = unhex(str_of(r, "packet"));
        let err = opener.open_in_place(&mut buf).expect_err(name);
        assert_eq!(err.label(), str_of(r, "error"), "{name}");
        seen.insert(err);
    }
    // Every drop reason has at least one vector.
    for e in OpenError::ALL {
        assert!(seen.contains(&e), "no reject vector for {e:?}");
    }
}
