//! Simulcast: which layer each receiver gets, and how a switch between layers stays invisible
//! to it (DESIGN.md section 6).
//!
//! A simulcast publisher sends up to three independent encodings ("layers") of one source.
//! Per receiver the bridge picks one ([`selector`]), forwards it as a single continuous RTP
//! stream whatever layer it currently comes from ([`rewriter`], using [`vp8`] to renumber the
//! codec's picture counters), and across bridges asks the origin for only the layers its
//! receivers need ([`demand`]).
//!
//! Everything here is sans-I/O like the rest of the crate: plain header fields in, rewritten
//! fields or decisions out, `now` passed in.

pub mod demand;
pub mod rewriter;
pub mod selector;
pub mod vp8;

use std::fmt;

pub use demand::{DemandAggregator, DemandConfig, LayerDemand};
pub use rewriter::{
    DropReason, EPOCH_HISTORY, Mapping, Retransmission, Rewrite, Rewriter, Rewritten, SourcePacket,
    VIDEO_CLOCK_RATE,
};
pub use selector::{Allocation, LayerAllocator, LayerStats, SelectorConfig, SourceLayers};
pub use vp8::{PictureId, PictureIdWidth, Vp8Descriptor, Vp8Error};

/// Most layers a simulcast source has: browsers send at most three (quarter, half, full).
pub const MAX_LAYERS: usize = 3;

/// One simulcast layer of a source, by quality rank: 0 is the lowest resolution.
///
/// The bridge maps the publisher's RIDs (or SSRCs) to these ranks; a non-simulcast source has
/// only [`Layer::BASE`]. The index is private so that every `Layer` fits the per-layer arrays
/// used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Layer(u8);

impl Layer {
    /// The lowest layer, and the only layer of a non-simulcast source.
    pub const BASE: Layer = Layer(0);
    /// The highest layer there can be.
    pub const TOP: Layer = Layer(MAX_LAYERS as u8 - 1);

    /// The layer of rank `index`, or `None` if `index >= MAX_LAYERS`.
    pub const fn new(index: u8) -> Option<Layer> {
        if (index as usize) < MAX_LAYERS {
            Some(Layer(index))
        } else {
            None
        }
    }

    /// The rank, usable as an index into per-layer arrays of length [`MAX_LAYERS`].
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// All layers, lowest first.
    pub fn all() -> impl DoubleEndedIterator<Item = Layer> {
        (0..MAX_LAYERS as u8).map(Layer)
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_bounded_and_ordered() {
        assert_eq!(Layer::new(0), Some(Layer::BASE));
        assert_eq!(Layer::new(2), Some(Layer::TOP));
        assert_eq!(Layer::new(3), None);
        assert!(Layer::BASE < Layer::TOP);
        let all: Vec<usize> = Layer::all().map(Layer::index).collect();
        assert_eq!(all, vec![0, 1, 2]);
        assert_eq!(Layer::TOP.to_string(), "L2");
    }
}
