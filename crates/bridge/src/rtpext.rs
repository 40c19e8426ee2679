//! Header extensions the bridge copies from a received RTP packet into the ones it sends.
//!
//! Kept out of the shard so the forwarding path and the fuzz target (fuzz/fuzz_targets/rtp_vp8.rs)
//! run the same code.

use bytes::Bytes;
use rtc::rtp::header::{EXTENSION_PROFILE_ONE_BYTE, Extension, Header};

/// Removes every header extension: ids are per leg (and `rtc` refuses ids not negotiated on the
/// sending leg), so what a receiver needs is added again under its leg's ids.
pub fn strip_extensions(header: &mut Header) {
    header.extension = false;
    header.extensions.clear();
    header.extensions_padding = 0;
}

/// Adds an audio level (from [`audio_level`]) under `id`, in the one-byte form.
pub fn add_audio_level(header: &mut Header, id: u8, level: Bytes) {
    header.extension = true;
    header.extension_profile = EXTENSION_PROFILE_ONE_BYTE;
    header.extensions.push(Extension { id, payload: level });
}

/// The audio level (RFC 6464) of a received packet under extension `id`, if it is well formed.
///
/// The level is one byte. The bridge re-sends it in the one-byte header form (RFC 8285), which
/// can carry 1 to 16 bytes per element; a sender using the two-byte form may put any length
/// there, 0 included, and an element of the wrong length copied into the one-byte form either
/// underflows the length field (a panic with overflow checks, a corrupt packet without) or does
/// not fit. Anything but one byte is therefore not an audio level: it is dropped, and the packet
/// forwarded without it.
pub fn audio_level(header: &Header, id: u8) -> Option<Bytes> {
    header
        .extensions
        .iter()
        .find(|e| e.id == id)
        .filter(|e| e.payload.len() == 1)
        .map(|e| e.payload.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtp::packet::Packet;
    use rtc::shared::marshal::{Marshal, Unmarshal};

    /// What the shard does with a received packet: strip the extensions, re-add the audio level
    /// in the one-byte form under the receiver's id, marshal.
    fn forward(raw: &[u8], id: u8) -> Option<Vec<u8>> {
        let packet = Packet::unmarshal(&mut &raw[..]).ok()?;
        let level = audio_level(&packet.header, id);
        let mut out = packet;
        strip_extensions(&mut out.header);
        if let Some(level) = level {
            add_audio_level(&mut out.header, 3, level);
        }
        Some(
            out.marshal()
                .expect("marshalling a forwarded packet")
                .to_vec(),
        )
    }

    /// Found by the rtp_vp8 fuzz target: a two-byte-form header extension (profile 0x1000)
    /// whose element under the audio-level id is empty. Copied into the one-byte form, its
    /// length field underflowed (`len - 1`), which panicked the media thread of a debug build.
    #[test]
    fn empty_two_byte_audio_level_is_not_forwarded() {
        let raw = include_bytes!("../../../fuzz/regressions/rtp_vp8/empty-two-byte-audio-level");
        // The fuzz input's first byte picks the simulcast layer; the packet follows.
        let out = forward(&raw[1..], 1).expect("the packet parses");
        let back = Packet::unmarshal(&mut &out[..]).expect("the forwarded packet parses");
        assert!(back.header.extensions.is_empty());
    }

    #[test]
    fn levels_of_the_wrong_length_are_dropped_and_one_byte_kept() {
        for (len, kept) in [(0usize, false), (1, true), (2, false), (17, false)] {
            let mut p = Packet::default();
            p.header.version = 2;
            p.header.extension = true;
            p.header.extension_profile = 0x1000; // two-byte form: any length is legal
            p.header.extensions.push(Extension {
                id: 1,
                payload: Bytes::from(vec![0x7f; len]),
            });
            p.payload = Bytes::from_static(&[1, 2, 3]);
            let raw = p.marshal().expect("marshalling the test packet");
            let out = forward(&raw, 1).expect("parses");
            let back = Packet::unmarshal(&mut &out[..]).expect("forwarded packet parses");
            assert_eq!(
                !back.header.extensions.is_empty(),
                kept,
                "payload of {len} bytes"
            );
            if kept {
                assert_eq!(&back.header.extensions[0].payload[..], &[0x7f]);
            }
        }
    }
}
