//! Synthetic WebRTC clients for kaskade, and what a load run needs around them.
//!
//! One client is a real WebRTC endpoint on `rtc` (webrtc-rs sans-I/O) over real UDP: it speaks
//! the signaling protocol (proto/signaling.md) over a real WebSocket, negotiates DTLS-SRTP legs
//! with the bridge, publishes synthetic Opus/VP8-shaped RTP at configurable rates and counts what
//! it receives. The bridge's integration tests and the forwarding benchmark use this one copy.
//!
//! - [`client`]: the client task, its spec and its reports;
//! - [`media`]: publishing rates and the probe carried in every payload (send time, index);
//! - [`stats`]: per-client counters (packets, bytes, loss by sequence gaps, latency);
//! - [`node`]: starting a node, in-process or as the `kaskade` binary, and minting tokens;
//! - [`procfs`]: CPU time and resident memory of a process, from `/proc`;
//! - [`run`]: a load run, many clients against one node ([`run::run`]);
//! - [`report`]: its result, as a table and as JSON;
//! - [`cli`]: the `kaskade loadtest` subcommand (docs/loadtest.md).

pub mod cli;
pub mod client;
pub mod media;
pub mod node;
pub mod procfs;
pub mod report;
pub mod run;
pub mod stats;

pub use client::{
    ClientHandle, ClientOptions, ClientSpec, Report, run_client, run_client_with, spawn_client,
    spawn_client_with,
};
pub use media::{Kind, MediaProfile, Probe, Resolution, VideoProfile};
pub use node::{ExternalNode, InProcessNode, token};
pub use report::LoadReport;
pub use run::{LoadConfig, run};
pub use stats::{ClientStats, Histogram, ReceiveStats, SendStats};
