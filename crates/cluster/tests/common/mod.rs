//! What the Redis tests share: free ports, processes stopped on drop, records.

#![allow(dead_code)] // each test file uses its own part

use std::net::TcpListener;
use std::process::Child;

use kaskade_cluster::{NodeId, NodeRecord};

/// A child process killed and reaped when dropped (by PID, whatever the test did).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A valid, fresh record of bridge `id`.
pub fn record(id: &str, octo_id: u32) -> NodeRecord {
    NodeRecord {
        id: NodeId(id.into()),
        octo_id,
        region: "eu".into(),
        octo_addr: "127.0.0.1:4096".parse().expect("addr"),
        signaling_url: format!("ws://{id}:7880/ws"),
        stress: 0.25,
        participants: 3,
        conferences: 1,
        draining: false,
        updated_ms: now_ms(),
    }
}
