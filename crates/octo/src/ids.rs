//! Identifier newtypes carried in the Octo header.
//!
//! Every id on the wire is a bare integer; wrapping each in its own type means a
//! conference id can never be passed where an endpoint id is expected, which is
//! the classic bug of a header full of `u32`s.

use std::fmt;

macro_rules! wire_id {
    ($(#[$doc:meta])* $name:ident($inner:ty), $fmt:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub $inner);

        impl $name {
            /// The raw wire value.
            pub const fn get(self) -> $inner {
                self.0
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }

        impl From<$name> for $inner {
            fn from(v: $name) -> Self {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, $fmt, self.0)
            }
        }
    };
}

wire_id!(
    /// Cluster-wide id of a conference, the same on every bridge of the conference.
    ///
    /// `0` is never a conference: it marks link-level packets (control) that
    /// belong to no conference.
    ConferenceId(u32),
    "{:08x}"
);

wire_id!(
    /// Cluster-wide id of the endpoint (participant) a packet comes from.
    ///
    /// [`EndpointId::BRIDGE`] (`0xffffffff`) means the sending bridge itself, e.g.
    /// for bridge-originated RTCP or link messages.
    EndpointId(u32),
    "{:08x}"
);

wire_id!(
    /// Id of a bridge in the cluster, assigned by the directory.
    ///
    /// 32 bits: the same width as the other ids (one aligned word in the
    /// header), large enough that a directory may derive it from a hash of the
    /// node name without realistic collisions in a cluster of hundreds, and it
    /// is bound into the per-link key, so it must be unique per cluster secret.
    BridgeId(u32),
    "{}"
);

wire_id!(
    /// Per directed link packet counter: the AEAD nonce input and the replay
    /// window position.
    ///
    /// 64 bits so it never wraps (at one million packets per second it lasts
    /// 584 000 years) and so a sender can seed it from the wall clock in
    /// microseconds: a restarted bridge then continues above every counter its
    /// previous run used, which keeps nonces unique for the link key without
    /// any persisted state. See `proto/octo.md`, "Counter".
    LinkCounter(u64),
    "{}"
);

impl ConferenceId {
    /// Link-level packets (control) carry this conference id.
    pub const LINK: ConferenceId = ConferenceId(0);
}

impl EndpointId {
    /// The sending bridge itself, not one of its participants.
    pub const BRIDGE: EndpointId = EndpointId(0xffff_ffff);

    /// True for [`EndpointId::BRIDGE`].
    pub const fn is_bridge(self) -> bool {
        self.0 == Self::BRIDGE.0
    }
}

impl LinkCounter {
    /// The next counter value, or `None` at `u64::MAX` (the link key is then
    /// used up; it cannot happen with a clock-seeded counter before the year
    /// 586 000).
    pub const fn checked_next(self) -> Option<LinkCounter> {
        match self.0.checked_add(1) {
            Some(v) => Some(LinkCounter(v)),
            None => None,
        }
    }
}
