//! What the Octo port does with a datagram: `Opener::open_in_place` (size, header, mode,
//! sender, replay window, AEAD tag) and, for what opens, the control-message decoder.
//!
//! Byte 0 picks the opener: encrypted (junk must fail before or at the tag, never open) or
//! plaintext (so the fuzzer gets past authentication into the window and payload parsers).
//! The rest is split on a separator into up to 16 datagrams fed to one opener in order, so
//! the replay window sees sequences.
#![no_main]

use kaskade_octo::{
    BridgeId, Control, HEADER_LEN, LinkSecurity, MAX_DATAGRAM_LEN, OpenError, Opener, PacketType,
    Suite,
};
use libfuzzer_sys::fuzz_target;

const SEPARATOR: &[u8] = b"\xffOCTO\xff";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let local = BridgeId(34);
    let security = match mode % 3 {
        0 => LinkSecurity::Plaintext,
        1 => LinkSecurity::encrypted(Suite::Aes128Gcm, &[7u8; 32]).unwrap(),
        _ => LinkSecurity::encrypted(Suite::ChaCha20Poly1305, &[7u8; 32]).unwrap(),
    };
    let encrypted = security.is_encrypted();
    let mut opener = Opener::new(security, local);
    opener.add_peer(BridgeId(17)).unwrap();
    opener.add_peer(BridgeId(0xdead_beef)).unwrap();

    let mut opened = Vec::new();
    for chunk in split(rest).take(16) {
        let mut buf = chunk.to_vec();
        match opener.open_in_place(&mut buf) {
            Ok((header, range)) => {
                // Forging a tag without the key is out of reach of a fuzzer: an encrypted
                // opener that opens junk is a broken AEAD check.
                assert!(!encrypted, "an encrypted opener accepted a forged packet");
                assert!(buf.len() <= MAX_DATAGRAM_LEN);
                assert!(range.start == HEADER_LEN && range.end <= buf.len());
                assert!(opener.has_peer(header.sender) && header.sender != local);
                let counter = header.counter.0;
                assert!(
                    !opened.contains(&(header.sender, counter)),
                    "counter {counter} from {:?} opened twice",
                    header.sender
                );
                opened.push((header.sender, counter));
                if header.packet_type == PacketType::Control {
                    let _ = Control::decode(&buf[range]);
                }
            }
            Err(OpenError::Auth) => assert!(encrypted),
            Err(_) => {}
        }
    }
    // Every decodable control message re-encodes to the same bytes.
    if let Ok(c) = Control::decode(rest) {
        let (bytes, n) = c.to_bytes();
        assert_eq!(Control::decode(&bytes[..n]), Ok(c));
    }
});

fn split(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        match data.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(at) => {
                let (head, tail) = data.split_at(at);
                data = &tail[SEPARATOR.len()..];
                Some(head)
            }
            None => Some(std::mem::take(&mut data)),
        }
    })
}
