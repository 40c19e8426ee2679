//! RTP from a publisher as the forwarding path sees it after SRTP: `rtc`'s RTP unmarshal,
//! the header-extension lookup for the audio level (`kaskade_bridge::rtpext`), the VP8 payload descriptor parser and
//! in-place rewrite (crates/sfu/src/simulcast/vp8.rs), and the simulcast rewriter fed with
//! what was parsed. The packet is then re-marshalled as the bridge forwards it (extensions
//! stripped and the audio level re-added by the bridge's own `rtpext` functions).
//!
//! Input: up to 8 packets separated by a marker, all on one rewriter, byte 0 of each packet's
//! chunk choosing its simulcast layer.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use kaskade_sfu::SeqNo;
use kaskade_sfu::simulcast::rewriter::SourcePacket;
use kaskade_sfu::simulcast::vp8;
use kaskade_sfu::simulcast::{Layer, Rewrite, Rewriter};
use libfuzzer_sys::fuzz_target;
use rtc::rtp::packet::Packet;
use rtc::shared::marshal::{Marshal, Unmarshal};

const SEPARATOR: &[u8] = b"\xffRTP\xff";
const AUDIO_LEVEL_ID: u8 = 1;

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut rewriter = Rewriter::new();
    rewriter.set_target(Layer::new(1));
    for (i, chunk) in split(data).take(8).enumerate() {
        let Some((&layer_byte, raw)) = chunk.split_first() else {
            continue;
        };
        let now = start + Duration::from_millis(20 * i as u64);
        let Ok(packet) = Packet::unmarshal(&mut &raw[..]) else {
            continue;
        };
        let level = kaskade_bridge::rtpext::audio_level(&packet.header, AUDIO_LEVEL_ID);
        for id in packet.header.get_extension_ids() {
            let _ = packet.header.get_extension(id);
        }

        let layer = Layer::new(layer_byte % 3).unwrap_or(Layer::BASE);
        let seq = SeqNo(packet.header.sequence_number);
        let sp = match vp8::parse(&packet.payload) {
            Ok(d) => {
                assert!(
                    d.len < packet.payload.len(),
                    "descriptor covers the whole payload"
                );
                // Rewriting keeps the layout: the same descriptor length, the new values.
                let mut payload = packet.payload.to_vec();
                vp8::rewrite(&mut payload, Some(0x1234), Some(0x56)).unwrap();
                let again = vp8::parse(&payload).unwrap();
                assert_eq!(again.len, d.len);
                assert_eq!(again.keyframe, d.keyframe);
                assert_eq!(again.tl0_pic_idx.is_some(), d.tl0_pic_idx.is_some());
                assert_eq!(again.picture_id.is_some(), d.picture_id.is_some());
                SourcePacket::vp8(layer, seq, packet.header.timestamp, &d)
            }
            Err(_) => {
                assert!(vp8::rewrite(&mut packet.payload.to_vec(), Some(1), Some(1)).is_err());
                SourcePacket::plain(layer, seq, packet.header.timestamp)
            }
        };
        if let Rewrite::Forward(r) = rewriter.rewrite(now, &sp) {
            assert_eq!(r.picture_id.is_some(), sp.picture_id.is_some());
            let _ = rewriter.retransmission(r.seq);
        }
        let _ = rewriter.retransmission(seq);

        let mut out = packet;
        kaskade_bridge::rtpext::strip_extensions(&mut out.header);
        if let Some(level) = level {
            kaskade_bridge::rtpext::add_audio_level(&mut out.header, 3, level);
        }
        if let Ok(bytes) = out.marshal() {
            let back = Packet::unmarshal(&mut &bytes[..]);
            assert!(
                back.is_ok(),
                "a packet the bridge marshalled does not parse"
            );
        }
        let _: Bytes = out.payload;
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
