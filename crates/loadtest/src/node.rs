//! Nodes to run clients against: one started in this process (tests), or the `kaskade` binary
//! as a child process (benchmarks, where the node's CPU and memory must be its own), and the
//! tokens to join them.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kaskade_bridge::config::{Config, DEV_API_KEY, DEV_API_SECRET};
use kaskade_bridge::metrics::Metrics;
use kaskade_bridge::{Node, auth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A dev-mode token for `identity` in `room`, valid for 10 minutes, allowed to publish and
/// subscribe.
pub fn token(room: &str, identity: &str) -> Result<String> {
    token_with(room, identity, true)
}

/// As [`token`]; `can_subscribe = false` makes a publish-only participant.
pub fn token_with(room: &str, identity: &str, can_subscribe: bool) -> Result<String> {
    auth::mint(
        DEV_API_KEY,
        DEV_API_SECRET,
        &auth::Claims {
            iss: String::new(),
            identity: identity.into(),
            room: room.into(),
            name: None,
            can_publish: true,
            can_subscribe,
            exp: auth::now_secs() + 600,
            nbf: None,
        },
    )
    .context("minting a token")
}

/// A dev-mode configuration on free loopback ports (port 0), with the dev key installed.
pub fn dev_config(max_participants: usize) -> Config {
    let mut config = Config {
        dev: true,
        ..Default::default()
    };
    config
        .auth
        .keys
        .insert(DEV_API_KEY.into(), DEV_API_SECRET.into());
    config.http.bind_ip = Ipv4Addr::LOCALHOST.into();
    config.http.port = 0;
    config.media.bind_ip = Ipv4Addr::LOCALHOST.into();
    config.media.port = 0;
    config.media.advertise_ip = Ipv4Addr::LOCALHOST.into();
    config.limits.max_participants = max_participants;
    config
}

/// A node serving inside this process, on the caller's tokio runtime, until the process ends.
pub struct InProcessNode {
    pub http: SocketAddr,
    pub media: SocketAddr,
    pub metrics: Arc<Metrics>,
}

impl InProcessNode {
    pub async fn start(config: Config) -> Result<InProcessNode> {
        let node = Node::start(config).await?;
        let started = InProcessNode {
            http: node.http_addr,
            media: node.media_addr,
            metrics: node.metrics(),
        };
        tokio::spawn(async move {
            if let Err(e) = node.serve(std::future::pending()).await {
                tracing::error!(error = %e, "in-process node stopped");
            }
        });
        Ok(started)
    }
}

/// The `kaskade` binary running as a child process; killed on drop.
pub struct ExternalNode {
    child: Child,
    pub http: SocketAddr,
    pub media: SocketAddr,
}

/// How to start an [`ExternalNode`].
#[derive(Debug, Clone)]
pub struct ExternalOptions {
    pub max_participants: usize,
    /// CPUs to pin the node to, as `taskset -c` takes them ("0"); `None` leaves it free.
    pub cpus: Option<String>,
    pub log_level: String,
    /// Where the node's stdout and stderr go; `None` discards them.
    pub log_file: Option<std::path::PathBuf>,
}

impl Default for ExternalOptions {
    fn default() -> Self {
        Self {
            max_participants: 100,
            cpus: None,
            log_level: "warn".into(),
            log_file: None,
        }
    }
}

impl ExternalNode {
    /// Starts `bin serve --dev` on free loopback ports and waits until `/health` answers.
    pub async fn start(bin: &Path, opts: &ExternalOptions) -> Result<ExternalNode> {
        if !bin.exists() {
            bail!(
                "{} does not exist: build it with `cargo build --release -p kaskade` \
                 (or point KASKADE_BIN at a kaskade binary)",
                bin.display()
            );
        }
        let http_port = free_tcp_port()?;
        let media_port = free_udp_port()?;
        let mut cmd = match &opts.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["serve", "--dev", "--http-port"])
            .arg(http_port.to_string())
            .arg("--media-port")
            .arg(media_port.to_string())
            .args([
                "--advertise-ip",
                "127.0.0.1",
                "--bind-ip",
                "127.0.0.1",
                "--http-bind-ip",
                "127.0.0.1",
                "--max-participants",
            ])
            .arg(opts.max_participants.to_string())
            .arg("--log-level")
            .arg(&opts.log_level)
            .stdin(Stdio::null());
        match &opts.log_file {
            Some(path) => {
                let f = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                let f2 = f.try_clone().context("duplicating the log file handle")?;
                cmd.stdout(f).stderr(f2);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        // Keep the node out of this process's environment-driven config: only the flags count.
        for (k, _) in std::env::vars() {
            if k.starts_with("KASKADE_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut node = ExternalNode {
            child,
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, http_port)),
            media: SocketAddr::from((Ipv4Addr::LOCALHOST, media_port)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = node.child.try_wait().context("polling the node")? {
                bail!("the node exited at start: {status}");
            }
            if let Ok((200, _)) = http_get(node.http, "/health").await {
                return Ok(node);
            }
            if Instant::now() > deadline {
                bail!("the node did not answer /health within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The node's `/metrics` text.
    pub async fn metrics_text(&self) -> Result<String> {
        match http_get(self.http, "/metrics").await? {
            (200, body) => Ok(body),
            (status, _) => bail!("/metrics answered {status}"),
        }
    }

    /// One sample of the node's metrics (`kaskade_rtp_forwarded_total`, ...), without labels.
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let text = self.metrics_text().await?;
        metric_value(&text, name).with_context(|| format!("{name} is not in /metrics"))
    }

    /// Kills the node and reaps it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ExternalNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The value of an unlabelled sample `name` in Prometheus text format.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

/// Asks the OS for a free port. Another process could take it before the node binds it; on
/// loopback, in a benchmark, that race is not worth more machinery.
fn free_tcp_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free TCP port")?;
    Ok(l.local_addr().context("free TCP port")?.port())
}

fn free_udp_port() -> Result<u16> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free UDP port")?;
    Ok(s.local_addr().context("free UDP port")?.port())
}

/// A minimal HTTP/1.1 GET (status, body): enough for `/health` and `/metrics`, and no HTTP
/// client dependency for the workspace.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let fetch = async {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .context("HTTP request timed out")?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("HTTP response without a header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("HTTP response without a status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// Joins a chunked body; stops at the first malformed chunk size.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let (Some(chunk), Some(after)) = (rest.get(..n), rest.get(n..)) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(chunk);
        s = after.trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lookup() {
        let text = "# HELP kaskade_rtp_forwarded_total x\n# TYPE kaskade_rtp_forwarded_total counter\n\
                    kaskade_rtp_forwarded_total 1234\nkaskade_udp_dropped_total{reason=\"x\"} 5\n";
        assert_eq!(
            metric_value(text, "kaskade_rtp_forwarded_total"),
            Some(1234.0)
        );
        assert_eq!(metric_value(text, "kaskade_udp_dropped_total"), None);
        assert_eq!(metric_value(text, "missing"), None);
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
