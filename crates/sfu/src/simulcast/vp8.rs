//! The VP8 RTP payload descriptor (RFC 7741 section 4.2), read and renumbered in place.
//!
//! ```text
//!       0 1 2 3 4 5 6 7
//!      +-+-+-+-+-+-+-+-+
//!      |X|R|N|S|R| PID | (required)
//!      +-+-+-+-+-+-+-+-+
//!  X:  |I|L|T|K| RSV   | (present if X)
//!      +-+-+-+-+-+-+-+-+
//!  I:  |M| PictureID   | (present if I; a second byte follows if M)
//!      +-+-+-+-+-+-+-+-+
//!  L:  |   TL0PICIDX   | (present if L)
//!      +-+-+-+-+-+-+-+-+
//! T/K: |TID|Y| KEYIDX  | (present if T or K)
//!      +-+-+-+-+-+-+-+-+
//! ```
//!
//! followed by the VP8 payload, whose first byte (at the start of partition 0) carries the
//! P bit: 0 for a keyframe. The descriptor is what the bridge touches when it switches a
//! receiver between simulcast layers: each layer numbers its pictures on its own, so the picture
//! ID and TL0PICIDX must be renumbered for the receiver's decoder to see one sequence.
//!
//! The payload comes from the network: parsing never panics and never indexes out of bounds;
//! anything short is a [`Vp8Error`].

use thiserror::Error;

/// Why a payload is not a VP8 RTP payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Vp8Error {
    /// Nothing at all (a padding-only packet has no payload to parse).
    #[error("empty VP8 payload")]
    Empty,
    /// The descriptor announces fields that the payload is too short to hold.
    #[error("VP8 payload descriptor truncated")]
    Truncated,
    /// A descriptor with no VP8 data after it, which RFC 7741 does not allow.
    #[error("VP8 payload descriptor without payload data")]
    NoPayload,
}

/// How many bits a picture ID has on the wire; a sender picks one and it wraps there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PictureIdWidth {
    /// One byte, M = 0: wraps at 128.
    Bits7,
    /// Two bytes, M = 1: wraps at 32768 (what browsers send).
    Bits15,
}

impl PictureIdWidth {
    /// The number of distinct values: 128 or 32768.
    pub const fn modulus(self) -> u16 {
        match self {
            PictureIdWidth::Bits7 => 1 << 7,
            PictureIdWidth::Bits15 => 1 << 15,
        }
    }

    /// The bits of a value that fit this width.
    pub const fn mask(self) -> u16 {
        self.modulus() - 1
    }
}

/// A VP8 picture ID together with its wire width, which a rewrite must keep: the descriptor
/// cannot grow or shrink without moving the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PictureId {
    /// The value, always below `width.modulus()`.
    pub value: u16,
    pub width: PictureIdWidth,
}

impl PictureId {
    /// A picture ID of `width`, with `value` reduced modulo the width.
    pub const fn new(value: u16, width: PictureIdWidth) -> Self {
        PictureId {
            value: value & width.mask(),
            width,
        }
    }

    /// This picture ID moved forward by `delta` pictures, wrapping at its width.
    pub const fn wrapping_add(self, delta: u16) -> Self {
        PictureId::new(self.value.wrapping_add(delta), self.width)
    }
}

/// What one packet's payload descriptor says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// N: the frame is not used as a reference by any other frame.
    pub non_reference: bool,
    /// S: this packet starts a VP8 partition.
    pub start_of_partition: bool,
    /// PID: the partition this packet belongs to (0..=7).
    pub partition_id: u8,
    pub picture_id: Option<PictureId>,
    /// Index of the last temporal-layer-0 picture, for temporal scalability.
    pub tl0_pic_idx: Option<u8>,
    /// TID: the temporal layer (0..=3), when T is set.
    pub temporal_id: Option<u8>,
    /// Y: layer sync, meaningful only with `temporal_id`.
    pub layer_sync: bool,
    /// KEYIDX (0..=31), when K is set.
    pub key_idx: Option<u8>,
    /// This packet is the first of a keyframe: S = 1, PID = 0 and the P bit of the VP8
    /// payload header is 0. Only such a packet lets a decoder (re)start, which is why a layer
    /// switch waits for one.
    pub keyframe: bool,
    /// Bytes of descriptor: the VP8 payload starts at this offset.
    pub len: usize,
}

impl Vp8Descriptor {
    /// Whether this packet starts a frame (S = 1, PID = 0), keyframe or not.
    pub const fn starts_frame(&self) -> bool {
        self.start_of_partition && self.partition_id == 0
    }
}

// Byte 0.
const X_BIT: u8 = 0x80;
const N_BIT: u8 = 0x20;
const S_BIT: u8 = 0x10;
const PID_MASK: u8 = 0x07;
// Extension byte.
const I_BIT: u8 = 0x80;
const L_BIT: u8 = 0x40;
const T_BIT: u8 = 0x20;
const K_BIT: u8 = 0x10;
// Picture ID byte.
const M_BIT: u8 = 0x80;
// TID/Y/KEYIDX byte.
const Y_BIT: u8 = 0x20;
const KEYIDX_MASK: u8 = 0x1f;
// First byte of the VP8 payload header (RFC 6386 section 9.1): P = 0 means keyframe.
const P_BIT: u8 = 0x01;

/// Where the renumbered fields sit, found by the same walk as parsing so the two can't disagree.
#[derive(Clone, Copy)]
struct Layout {
    picture_id: Option<(usize, PictureIdWidth)>,
    tl0_pic_idx: Option<usize>,
}

fn byte_at(payload: &[u8], i: usize) -> Result<u8, Vp8Error> {
    payload.get(i).copied().ok_or(Vp8Error::Truncated)
}

fn walk(payload: &[u8]) -> Result<(Vp8Descriptor, Layout), Vp8Error> {
    let b0 = *payload.first().ok_or(Vp8Error::Empty)?;
    let mut d = Vp8Descriptor {
        non_reference: b0 & N_BIT != 0,
        start_of_partition: b0 & S_BIT != 0,
        partition_id: b0 & PID_MASK,
        picture_id: None,
        tl0_pic_idx: None,
        temporal_id: None,
        layer_sync: false,
        key_idx: None,
        keyframe: false,
        len: 0,
    };
    let mut layout = Layout {
        picture_id: None,
        tl0_pic_idx: None,
    };
    let mut i = 1;
    if b0 & X_BIT != 0 {
        let ext = byte_at(payload, i)?;
        i += 1;
        if ext & I_BIT != 0 {
            let hi = byte_at(payload, i)?;
            if hi & M_BIT != 0 {
                let lo = byte_at(payload, i + 1)?;
                let value = (u16::from(hi & !M_BIT) << 8) | u16::from(lo);
                d.picture_id = Some(PictureId::new(value, PictureIdWidth::Bits15));
                layout.picture_id = Some((i, PictureIdWidth::Bits15));
                i += 2;
            } else {
                d.picture_id = Some(PictureId::new(u16::from(hi), PictureIdWidth::Bits7));
                layout.picture_id = Some((i, PictureIdWidth::Bits7));
                i += 1;
            }
        }
        // RFC 7741 wants T whenever L is set; senders that break that rule still lay the bytes
        // out in this order, so reading each flag on its own is both lenient and unambiguous.
        if ext & L_BIT != 0 {
            d.tl0_pic_idx = Some(byte_at(payload, i)?);
            layout.tl0_pic_idx = Some(i);
            i += 1;
        }
        if ext & (T_BIT | K_BIT) != 0 {
            let b = byte_at(payload, i)?;
            if ext & T_BIT != 0 {
                d.temporal_id = Some(b >> 6);
                d.layer_sync = b & Y_BIT != 0;
            }
            if ext & K_BIT != 0 {
                d.key_idx = Some(b & KEYIDX_MASK);
            }
            i += 1;
        }
    }
    let first = payload.get(i).copied().ok_or(Vp8Error::NoPayload)?;
    d.len = i;
    d.keyframe = d.starts_frame() && first & P_BIT == 0;
    Ok((d, layout))
}

/// Parses the payload descriptor at the start of a VP8 RTP payload.
pub fn parse(payload: &[u8]) -> Result<Vp8Descriptor, Vp8Error> {
    walk(payload).map(|(d, _)| d)
}

/// Overwrites the picture ID and TL0PICIDX of a VP8 RTP payload in place.
///
/// `picture_id` is reduced to the width the packet already uses (a 7-bit field gets the value
/// mod 128), so the payload keeps its length. A field the packet does not carry is left
/// alone: adding one would shift the payload, and a receiver of a stream without picture IDs
/// does not use them. `None` leaves a field unchanged. On error nothing was written.
pub fn rewrite(
    payload: &mut [u8],
    picture_id: Option<u16>,
    tl0_pic_idx: Option<u8>,
) -> Result<(), Vp8Error> {
    let (_, layout) = walk(payload)?;
    if let (Some(value), Some((at, width))) = (picture_id, layout.picture_id) {
        let value = value & width.mask();
        match width {
            PictureIdWidth::Bits7 => {
                if let Some(b) = payload.get_mut(at) {
                    // M stays 0: the value fits 7 bits after masking.
                    *b = value as u8;
                }
            }
            PictureIdWidth::Bits15 => {
                let [hi, lo] = value.to_be_bytes();
                if let Some(b) = payload.get_mut(at) {
                    *b = M_BIT | hi;
                }
                if let Some(b) = payload.get_mut(at + 1) {
                    *b = lo;
                }
            }
        }
    }
    if let (Some(value), Some(at)) = (tl0_pic_idx, layout.tl0_pic_idx)
        && let Some(b) = payload.get_mut(at)
    {
        *b = value;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Payload header bytes after the descriptor: P = 0 (keyframe) and P = 1 (interframe).
    const KEY: u8 = 0x10;
    const INTER: u8 = 0x11;

    #[test]
    fn minimal_descriptor_keyframe() {
        let d = parse(&[S_BIT, KEY, 0x00, 0x9d]).unwrap();
        assert!(d.start_of_partition && d.keyframe && d.starts_frame());
        assert_eq!(d.partition_id, 0);
        assert_eq!(d.picture_id, None);
        assert_eq!(d.tl0_pic_idx, None);
        assert_eq!(d.len, 1);
    }

    #[test]
    fn seven_bit_picture_id_without_tl0() {
        // X, S; I; M = 0, picture ID 0x45.
        let d = parse(&[X_BIT | S_BIT, I_BIT, 0x45, KEY]).unwrap();
        assert_eq!(
            d.picture_id,
            Some(PictureId::new(0x45, PictureIdWidth::Bits7))
        );
        assert_eq!(d.tl0_pic_idx, None);
        assert_eq!(d.temporal_id, None);
        assert!(d.keyframe);
        assert_eq!(d.len, 3);
    }

    #[test]
    fn fifteen_bit_picture_id_with_tl0_and_tid_interframe() {
        // X, N, S, PID 0; I L T; M = 1, picture ID 0x1234; TL0PICIDX 0xfe; TID 2, Y.
        let p = [
            X_BIT | N_BIT | S_BIT,
            I_BIT | L_BIT | T_BIT,
            M_BIT | 0x12,
            0x34,
            0xfe,
            0x80 | Y_BIT,
            INTER,
        ];
        let d = parse(&p).unwrap();
        assert_eq!(
            d.picture_id,
            Some(PictureId::new(0x1234, PictureIdWidth::Bits15))
        );
        assert_eq!(d.tl0_pic_idx, Some(0xfe));
        assert_eq!(d.temporal_id, Some(2));
        assert!(d.layer_sync && d.non_reference);
        assert_eq!(d.key_idx, None);
        assert!(d.starts_frame());
        assert!(!d.keyframe, "P = 1 is an interframe");
        assert_eq!(d.len, 6);
    }

    #[test]
    fn keyframe_needs_frame_start() {
        // The byte after the descriptor has P = 0 but is mid-frame data, not a payload header.
        let mid_partition = parse(&[X_BIT, I_BIT, 0x01, KEY]).unwrap();
        assert!(!mid_partition.keyframe);
        let other_partition = parse(&[X_BIT | S_BIT | 1, I_BIT, 0x01, KEY]).unwrap();
        assert_eq!(other_partition.partition_id, 1);
        assert!(other_partition.start_of_partition && !other_partition.keyframe);
    }

    #[test]
    fn keyidx_alone() {
        let d = parse(&[X_BIT | S_BIT, K_BIT, 0xc0 | 0x17, KEY]).unwrap();
        // T is not set, so the TID bits of the shared byte mean nothing.
        assert_eq!(d.temporal_id, None);
        assert!(!d.layer_sync);
        assert_eq!(d.key_idx, Some(0x17));
        assert_eq!(d.len, 3);
    }

    #[test]
    fn short_input_is_an_error_at_every_cut() {
        let full = [
            X_BIT | S_BIT,
            I_BIT | L_BIT | T_BIT | K_BIT,
            M_BIT | 0x7f,
            0xff,
            0x05,
            0x40,
            KEY,
        ];
        assert!(parse(&full).is_ok());
        assert_eq!(parse(&[]), Err(Vp8Error::Empty));
        for cut in 1..full.len() - 1 {
            assert_eq!(parse(&full[..cut]), Err(Vp8Error::Truncated), "cut {cut}");
        }
        assert_eq!(parse(&full[..full.len() - 1]), Err(Vp8Error::NoPayload));
        assert_eq!(parse(&[S_BIT]), Err(Vp8Error::NoPayload));
        let mut short = full[..3].to_vec();
        assert_eq!(
            rewrite(&mut short, Some(1), Some(1)),
            Err(Vp8Error::Truncated)
        );
        assert_eq!(short, full[..3], "nothing written on error");
    }

    #[test]
    fn rewrite_fifteen_bit_and_tl0_touches_only_those_bytes() {
        let mut p = [
            X_BIT | S_BIT,
            I_BIT | L_BIT | T_BIT,
            M_BIT | 0x12,
            0x34,
            0x07,
            0x40,
            KEY,
            0xaa,
        ];
        let before = p;
        // 0x8001 does not fit 15 bits: it wraps to 1.
        rewrite(&mut p, Some(0x8001), Some(0x00)).unwrap();
        let d = parse(&p).unwrap();
        assert_eq!(
            d.picture_id,
            Some(PictureId::new(1, PictureIdWidth::Bits15))
        );
        assert_eq!(d.tl0_pic_idx, Some(0));
        assert_eq!(p[..2], before[..2]);
        assert_eq!(p[5..], before[5..]);
    }

    #[test]
    fn rewrite_seven_bit_wraps_at_128_and_keeps_width() {
        let mut p = [X_BIT | S_BIT, I_BIT | L_BIT, 0x7f, 0xff, KEY];
        rewrite(&mut p, Some(130), Some(0x10)).unwrap();
        let d = parse(&p).unwrap();
        assert_eq!(d.picture_id, Some(PictureId::new(2, PictureIdWidth::Bits7)));
        assert_eq!(d.tl0_pic_idx, Some(0x10));
        assert_eq!(d.len, 4);
    }

    #[test]
    fn rewrite_leaves_absent_and_unrequested_fields() {
        let mut bare = [S_BIT, KEY, 0x01];
        rewrite(&mut bare, Some(9), Some(9)).unwrap();
        assert_eq!(bare, [S_BIT, KEY, 0x01]);
        let mut p = [X_BIT | S_BIT, I_BIT | L_BIT, 0x05, 0x06, KEY];
        rewrite(&mut p, None, Some(0x33)).unwrap();
        assert_eq!(p, [X_BIT | S_BIT, I_BIT | L_BIT, 0x05, 0x33, KEY]);
    }

    #[test]
    fn picture_id_arithmetic_wraps_at_its_width() {
        let short = PictureId::new(127, PictureIdWidth::Bits7);
        assert_eq!(short.wrapping_add(1).value, 0);
        let long = PictureId::new(0x7fff, PictureIdWidth::Bits15);
        assert_eq!(long.wrapping_add(2).value, 1);
        assert_eq!(PictureId::new(0xffff, PictureIdWidth::Bits15).value, 0x7fff);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let parsed = parse(&bytes);
            let mut copy = bytes.clone();
            let rewritten = rewrite(&mut copy, Some(0x1abc), Some(0x42));
            prop_assert_eq!(parsed.is_ok(), rewritten.is_ok());
            if let Ok(d) = parsed {
                prop_assert!(d.len < bytes.len());
                let after = parse(&copy).unwrap();
                // Only the two renumbered fields may differ.
                prop_assert_eq!(after.len, d.len);
                prop_assert_eq!(after.keyframe, d.keyframe);
                prop_assert_eq!(after.temporal_id, d.temporal_id);
                prop_assert_eq!(
                    after.picture_id,
                    d.picture_id.map(|p| PictureId::new(0x1abc, p.width))
                );
                prop_assert_eq!(after.tl0_pic_idx, d.tl0_pic_idx.map(|_| 0x42));
                prop_assert_eq!(&copy[d.len..], &bytes[d.len..]);
            } else {
                prop_assert_eq!(copy, bytes);
            }
        }
    }
}
