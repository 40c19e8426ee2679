//! `kaskade loadtest` as an operator runs it: against a `kaskade serve` process, the table on
//! stderr and the JSON on stdout with `--json -`, exit status 0; against nothing, exit status 1.

use std::path::Path;
use std::process::{Command, Output};

use kaskade_loadtest::node::{ExternalNode, ExternalOptions};

const BIN: &str = env!("CARGO_BIN_EXE_kaskade");

async fn loadtest(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .arg("loadtest")
            .args(args)
            .env_remove("KASKADE_API_KEY")
            .env_remove("KASKADE_API_SECRET")
            .env_remove("KASKADE_URL")
            .output()
            .expect("run kaskade loadtest")
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_against_a_node() {
    let node = ExternalNode::start(Path::new(BIN), &ExternalOptions::default())
        .await
        .expect("kaskade serve");
    let out = loadtest(
        [
            "--url",
            &format!("http://{}", node.http),
            "--subscribers",
            "2",
            "--resolution",
            "360p",
            "--duration",
            "2s",
            "--join-rate",
            "20",
            "--json",
            "-",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", out.status);
    assert!(
        stderr.contains("total (3)"),
        "the table on stderr:\n{stderr}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(json["ok"], true);
    assert_eq!(json["settings"]["resolution"], "360p");
    assert_eq!(json["total"]["tracks_expected"], 4);
    assert_eq!(json["total"]["tracks_received"], 4, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_exits_non_zero_when_clients_cannot_connect() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let out = loadtest(
        [
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--subscribers",
            "1",
            "--duration",
            "500ms",
            "--quiet",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("errors:"), "{stdout}");
}
