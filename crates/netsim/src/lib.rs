//! A UDP impairment relay for tests: loss, burst loss, delay, jitter, reordering and a rate cap
//! between a client and a UDP port, where the kernel has no netem.
//!
//! - [`Impairment`] is the pure model: given arrival times (and a seed) it decides which
//!   datagrams are dropped and when the others are delivered. No clock, no sockets.
//! - [`Relay`] is the tokio shell: a listen socket in front of an upstream address, one upstream
//!   socket per client (a NAT-like mapping), an impairment per direction and per client.
//! - The `kaskade-netsim` binary runs a relay from the command line for Python tests.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use kaskade_netsim::{ImpairmentConfig, Relay};
//!
//! let down = ImpairmentConfig {
//!     loss: 0.05,
//!     delay: Duration::from_millis(30),
//!     ..Default::default()
//! };
//! let relay = Relay::start(
//!     "127.0.0.1:0".parse().unwrap(),
//!     "127.0.0.1:10000".parse().unwrap(),
//!     down,
//!     ImpairmentConfig::none(),
//! )
//! .await?;
//! // Clients now send to relay.local_addr() instead of 127.0.0.1:10000.
//! println!("{}", relay.stats().to_json());
//! # Ok(())
//! # }
//! ```

mod model;
mod relay;
mod rtp_watch;

pub use model::{
    ConfigError, DEFAULT_REORDER_DELAY, DropReason, GilbertElliott, Impairment, ImpairmentConfig,
    JitterDistribution, MAX_DELAY, RateLimit, Verdict,
};
pub use relay::{DirectionStats, Relay, RelayHandle, RelayOptions, RelayStats};
pub use rtp_watch::{Observed, RtpWatch};
