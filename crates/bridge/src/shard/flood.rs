//! STUN flood guard: connectivity checks are the one thing an outsider can make a leg work on
//! (each costs the leg an HMAC check and usually an answer), so they are rate-limited per
//! source transport address and per leg before the leg sees them. A browser sends a few checks
//! a second per candidate pair and one consent check every ~5 s; the defaults leave it far
//! below. The key is the address *and port*: many participants behind one NAT (an office, or
//! every load client on loopback) share an IP, each from its own port.
//!
//! Pure: token buckets driven by `now`; the shard drops and counts what they refuse.

use std::net::SocketAddr;
use std::time::Instant;

use crate::demux::LegId;
use crate::limits::{self, PerKeyRate, WhenFull};

/// Tracked source addresses at most: past it (a spoofed-source flood), new addresses share
/// one bucket, so the map cannot grow without bound and the flood is still limited.
const MAX_ADDRESSES: usize = 16_384;

/// Which limit refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StunLimit {
    PerAddress,
    PerLeg,
}

impl StunLimit {
    pub(super) fn label(self) -> &'static str {
        match self {
            StunLimit::PerAddress => limits::STUN_PER_ADDRESS,
            StunLimit::PerLeg => limits::STUN_PER_LEG,
        }
    }
}

/// Per-address and per-leg limits on STUN reaching legs: buckets of the rate a second and two
/// seconds' burst.
pub(super) struct StunGuard {
    addresses: PerKeyRate<SocketAddr>,
    legs: PerKeyRate<LegId>,
}

impl StunGuard {
    /// Rates in messages per second; 0 turns that limit off.
    pub(super) fn new(per_address: u32, per_leg: u32) -> Self {
        Self {
            addresses: PerKeyRate::new(per_address, 2 * per_address, MAX_ADDRESSES)
                .when_full(WhenFull::ShareOneBucket),
            // One per leg the shard has: bounded by the legs themselves.
            legs: PerKeyRate::new(per_leg, 2 * per_leg, usize::MAX),
        }
    }

    /// Whether a STUN message from `from` to `leg` may reach the leg now.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        from: SocketAddr,
        leg: LegId,
    ) -> Result<(), StunLimit> {
        if !self.addresses.allow(now, from) {
            return Err(StunLimit::PerAddress);
        }
        if !self.legs.allow(now, leg) {
            return Err(StunLimit::PerLeg);
        }
        Ok(())
    }

    /// A closed leg's bucket goes with it (its id may be reused).
    pub(super) fn forget_leg(&mut self, leg: LegId) {
        self.legs.forget(&leg);
    }

    /// Forgets buckets idle long enough to be full again (once a second).
    pub(super) fn expire(&mut self, now: Instant) {
        self.addresses.expire(now);
        self.legs.expire(now);
    }

    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        (self.addresses.tracked(), self.legs.tracked())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(last: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], 5000))
    }

    #[test]
    fn one_address_is_limited_and_the_others_are_not() {
        let mut g = StunGuard::new(10, 1000);
        let t0 = Instant::now();
        let admitted = (0..100)
            .filter(|_| g.admit(t0, ip(1), LegId(1)).is_ok())
            .count();
        assert_eq!(admitted, 20, "a burst of two seconds' worth");
        assert_eq!(g.admit(t0, ip(1), LegId(1)), Err(StunLimit::PerAddress));
        // Another address, even to the same leg, is not held up by the first one's flood; nor
        // is another port of the same IP (another participant behind the same NAT).
        assert!(g.admit(t0, ip(2), LegId(1)).is_ok());
        let same_ip = SocketAddr::from(([192, 0, 2, 1], 5001));
        assert!(g.admit(t0, same_ip, LegId(2)).is_ok());
        // Refilled at the rate: 0.5 s later, 5 more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(
            (0..100)
                .filter(|_| g.admit(t1, ip(1), LegId(1)).is_ok())
                .count(),
            5
        );
    }

    #[test]
    fn one_leg_is_limited_whatever_the_sources() {
        let mut g = StunGuard::new(1000, 10);
        let t0 = Instant::now();
        let admitted = (0..100u8)
            .filter(|&i| g.admit(t0, ip(i), LegId(7)).is_ok())
            .count();
        assert_eq!(admitted, 20);
        assert_eq!(g.admit(t0, ip(99), LegId(7)), Err(StunLimit::PerLeg));
        assert!(
            g.admit(t0, ip(200), LegId(8)).is_ok(),
            "another leg is not affected"
        );
        g.forget_leg(LegId(7));
        assert!(
            g.admit(t0, ip(201), LegId(7)).is_ok(),
            "a reused id starts afresh"
        );
    }

    #[test]
    fn spoofed_sources_cannot_grow_the_table_and_idle_buckets_go() {
        let mut g = StunGuard::new(1, 0);
        let t0 = Instant::now();
        let mut admitted = 0;
        for i in 0..(MAX_ADDRESSES as u32 + 1000) {
            let a = SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 9));
            admitted += usize::from(g.admit(t0, a, LegId(0)).is_ok());
        }
        assert_eq!(g.tracked().0, MAX_ADDRESSES);
        // Each tracked address sent one, admitted; the 1000 beyond share one bucket of 2.
        assert_eq!(admitted, MAX_ADDRESSES + 2);
        // Two seconds' burst refills in two seconds: then every bucket is as new, and goes.
        g.expire(t0 + Duration::from_secs(2));
        assert_eq!(g.tracked(), (0, 0));
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let mut g = StunGuard::new(0, 0);
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| g.admit(t0, ip(1), LegId(1)).is_ok()));
        assert_eq!(g.tracked(), (0, 0));
    }
}
