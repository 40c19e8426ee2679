//! kaskade's media core, sans-I/O.
//!
//! Everything here is a pure state machine: no sockets, no threads, no clocks. Every entry
//! point that depends on time takes `now: Instant`, so the core is tested and benchmarked
//! without a network, and the bridge (the I/O shell) decides when things happen.

pub mod cache;
pub mod conference;
pub mod dedupe;
pub mod ids;
pub mod keyframe;
pub mod nack;
pub mod resend;
pub mod simulcast;
pub mod speaker;

pub use cache::PacketCache;
pub use conference::{
    Conference, ConferenceError, Conferences, JoinRequest, Joined, Left, Participant, Track,
    TrackKind,
};
pub use dedupe::DuplicateFilter;
pub use ids::{ConferenceId, EndpointId, SeqNo, Ssrc, TrackId};
pub use keyframe::{KeyframeDecision, KeyframeThrottle};
pub use nack::{NackConfig, NackOutcome, NackTracker};
pub use resend::{ResendGuard, SmoothedRtt};
pub use simulcast::{DemandAggregator, Layer, LayerAllocator, LayerDemand, Rewriter};
pub use speaker::{DominantSpeaker, SpeakerChange, SpeakerConfig};
