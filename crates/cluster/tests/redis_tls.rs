//! The Redis directory over TLS against real `redis-server`s that listen only on a TLS port
//! (`--port 0 --tls-port P`): a private CA, mutual TLS, a server from an unknown CA, a name
//! mismatch, skip-verify, and a Redis Cluster of 3 TLS masters. The CA and the certificates
//! are made by the test (rcgen) in a temporary directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, free_port, now_ms, record};
use kaskade_cluster::{Directory, DirectoryError, NodeId, RedisConfig, RedisDirectory};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "kaskade-{what}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&d).expect("temp dir");
        TempDir(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA that signs leaf certificates into `dir`.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new CA; its certificate is written to `<name>.pem`.
    fn new(dir: &TempDir, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("kaskade test {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA cert");
        std::fs::write(dir.path(&format!("{name}.pem")), cert.pem()).expect("write CA");
        Ca {
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IPs), good for server and client auth (the cluster
    /// bus uses the server's certificate as a client one); `<name>.pem` and `<name>.key`.
    fn leaf(&self, dir: &TempDir, name: &str, names: &[&str]) {
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        std::fs::write(dir.path(&format!("{name}.pem")), cert.pem()).expect("write cert");
        std::fs::write(dir.path(&format!("{name}.key")), key.serialize_pem()).expect("write key");
    }
}

/// The test PKI: `ca` signs `server` (127.0.0.1, localhost), `client` and `wrong-name`
/// (another host's name only); `other-ca` signs `other-server` (127.0.0.1).
fn pki(what: &str) -> TempDir {
    let dir = TempDir::new(what);
    let ca = Ca::new(&dir, "ca");
    ca.leaf(&dir, "server", &["127.0.0.1", "localhost"]);
    ca.leaf(&dir, "client", &["kaskade-bridge"]);
    ca.leaf(&dir, "wrong-name", &["redis.elsewhere.example"]);
    let other = Ca::new(&dir, "other-ca");
    other.leaf(&dir, "other-server", &["127.0.0.1"]);
    dir
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A redis-server listening on `port` over TLS only, with `<cert>.pem`/`<cert>.key`; clients
/// are verified against `ca.pem` when `extra` says `--tls-auth-clients yes`.
fn tls_redis(dir: &TempDir, port: u16, cert: &str, extra: &[&str]) -> Proc {
    let p = Proc(
        Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", &s(&dir.path(&format!("{cert}.pem")))])
            .args(["--tls-key-file", &s(&dir.path(&format!("{cert}.key")))])
            .args(["--tls-ca-cert-file", &s(&dir.path("ca.pem"))])
            .arg("--dir")
            .arg(&dir.0)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: tests/run.sh installs Debian's redis-server"),
    );
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "redis-server {port} did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// `redis-cli` over TLS (trusting `ca.pem`, presenting `client` if the server wants one).
fn cli(dir: &TempDir, port: u16, args: &[&str]) -> Output {
    Command::new("redis-cli")
        .args(["--tls", "--cacert", &s(&dir.path("ca.pem"))])
        .args(["--cert", &s(&dir.path("client.pem"))])
        .args(["--key", &s(&dir.path("client.key"))])
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli")
}

fn tls_config(dir: &TempDir, port: u16) -> RedisConfig {
    RedisConfig {
        address: format!("127.0.0.1:{port}"),
        tls: true,
        tls_ca_file: Some(dir.path("ca.pem")),
        ..RedisConfig::default()
    }
}

/// The error of a connect that must fail (a directory has no Debug to `expect_err` with).
async fn connect_err(cfg: &RedisConfig) -> DirectoryError {
    match RedisDirectory::connect(cfg).await {
        Ok(_) => panic!("connect succeeded with {cfg:?}"),
        Err(e) => e,
    }
}

/// Publishes a node record through `a`, gets a conference id through `a` and `b`, and reads
/// both back through `b`.
async fn round_trip(a: &RedisDirectory, b: &RedisDirectory, room: &str) {
    a.publish(&record("tls-1", 1)).await.expect("publish");
    let snap = b.nodes(now_ms()).await.expect("nodes");
    assert!(
        snap.nodes.iter().any(|n| n.id.0 == "tls-1"),
        "record not read back: {snap:?}"
    );
    let x = a.conference(room, now_ms()).await.expect("conference a");
    assert_ne!(x.id, 0);
    let n = NodeId("tls-1".into());
    a.set_host(room, x.id, &n, 4, now_ms()).await.expect("host");
    let y = b.conference(room, now_ms()).await.expect("conference b");
    assert_eq!(x.id, y.id, "both directories agree on the room's id");
    assert_eq!(y.hosts.get(&n), Some(&4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_over_tls_with_a_private_ca() {
    let dir = pki("tls-standalone");
    let port = free_port();
    let _server = tls_redis(&dir, port, "server", &["--tls-auth-clients", "no"]);

    let a = RedisDirectory::connect(&tls_config(&dir, port))
        .await
        .expect("connect over TLS");
    // The certificate names both 127.0.0.1 and localhost: the name is checked either way.
    let b = RedisDirectory::connect(&RedisConfig {
        address: format!("localhost:{port}"),
        ..tls_config(&dir, port)
    })
    .await
    .expect("connect over TLS by name");
    round_trip(&a, &b, "room-tls").await;
    // What the directory wrote is really in that Redis.
    let out = cli(&dir, port, &["GET", "kaskade:room:{room-tls}"]);
    let id = b.conference("room-tls", now_ms()).await.expect("entry").id;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id.to_string());

    // The server speaks only TLS: the same address without TLS does not work.
    let plain = RedisConfig {
        address: format!("127.0.0.1:{port}"),
        ..RedisConfig::default()
    };
    let e = connect_err(&plain).await;
    assert!(matches!(e, DirectoryError::Unavailable(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let dir = pki("tls-mutual");
    let port = free_port();
    let _server = tls_redis(&dir, port, "server", &["--tls-auth-clients", "yes"]);

    let with_cert = RedisConfig {
        tls_cert_file: Some(dir.path("client.pem")),
        tls_key_file: Some(dir.path("client.key")),
        ..tls_config(&dir, port)
    };
    let a = RedisDirectory::connect(&with_cert)
        .await
        .expect("connect with a client certificate");
    let b = RedisDirectory::connect(&with_cert)
        .await
        .expect("connect with a client certificate");
    round_trip(&a, &b, "room-mtls").await;

    // Without a client certificate the server ends the handshake: refused at connect, with
    // the TLS reason in the message.
    let e = connect_err(&tls_config(&dir, port)).await;
    let msg = e.to_string();
    assert!(matches!(e, DirectoryError::Unavailable(_)), "{msg}");
    assert!(
        msg.contains("CertificateRequired") || msg.contains("certificate required"),
        "no TLS reason in: {msg}"
    );

    // A certificate from another CA is not accepted by the server either.
    let foreign = RedisConfig {
        tls_cert_file: Some(dir.path("other-server.pem")),
        tls_key_file: Some(dir.path("other-server.key")),
        ..tls_config(&dir, port)
    };
    let e = connect_err(&foreign).await;
    assert!(matches!(e, DirectoryError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("UnknownCA"), "no TLS reason in: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_from_an_unknown_ca_or_with_another_name_is_refused() {
    let dir = pki("tls-verify");
    let (p_other, p_name) = (free_port(), free_port());
    let _other = tls_redis(&dir, p_other, "other-server", &["--tls-auth-clients", "no"]);
    let _name = tls_redis(&dir, p_name, "wrong-name", &["--tls-auth-clients", "no"]);

    // Signed by a CA we do not trust.
    let e = connect_err(&tls_config(&dir, p_other)).await;
    let msg = e.to_string();
    assert!(matches!(e, DirectoryError::Unavailable(_)), "{msg}");
    assert!(msg.contains("UnknownIssuer"), "no TLS reason in: {msg}");
    // Without redis.tls_ca_file only the system's roots are trusted: refused as well.
    let e = connect_err(&RedisConfig {
        tls_ca_file: None,
        ..tls_config(&dir, p_other)
    })
    .await;
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    // Our CA, but the certificate names another host.
    let e = connect_err(&tls_config(&dir, p_name)).await;
    assert!(e.to_string().contains("not valid for name"), "{e}");

    // Skip-verify (testing only) accepts both.
    for port in [p_other, p_name] {
        let cfg = RedisConfig {
            address: format!("127.0.0.1:{port}"),
            tls: true,
            tls_insecure_skip_verify: true,
            ..RedisConfig::default()
        };
        let d = RedisDirectory::connect(&cfg).await.expect("skip-verify");
        d.publish(&record("tls-1", 1)).await.expect("publish");
    }
}

#[tokio::test]
async fn tls_files_are_checked_with_their_path() {
    let dir = pki("tls-files");
    let missing = dir.path("no-such-ca.pem");
    let e = connect_err(&RedisConfig {
        address: "127.0.0.1:1".into(),
        tls: true,
        tls_ca_file: Some(missing.clone()),
        ..RedisConfig::default()
    })
    .await;
    assert!(matches!(e, DirectoryError::Refused(_)), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("redis.tls_ca_file"), "{msg}");
    assert!(msg.contains(&s(&missing)), "{msg}");

    // A readable file that holds no certificate.
    let junk = dir.path("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("write");
    let e = connect_err(&RedisConfig {
        address: "127.0.0.1:1".into(),
        tls: true,
        tls_ca_file: Some(junk.clone()),
        ..RedisConfig::default()
    })
    .await;
    assert!(matches!(e, DirectoryError::Refused(_)), "{e}");
    assert!(e.to_string().contains(&s(&junk)), "{e}");

    // A client certificate file that holds no certificate, then a key file that holds no key.
    let e = connect_err(&RedisConfig {
        address: "127.0.0.1:1".into(),
        tls: true,
        tls_cert_file: Some(junk.clone()),
        tls_key_file: Some(dir.path("client.key")),
        ..RedisConfig::default()
    })
    .await;
    assert!(matches!(e, DirectoryError::Refused(_)), "{e}");
    assert!(e.to_string().contains("redis.tls_cert_file"), "{e}");
    let e = connect_err(&RedisConfig {
        address: "127.0.0.1:1".into(),
        tls: true,
        tls_cert_file: Some(dir.path("client.pem")),
        tls_key_file: Some(junk.clone()),
        ..RedisConfig::default()
    })
    .await;
    assert!(matches!(e, DirectoryError::Refused(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("redis.tls_key_file") && msg.contains(&s(&junk)),
        "{msg}"
    );
}

#[test]
fn tls_keys_are_validated() {
    let base = RedisConfig {
        address: "127.0.0.1:6379".into(),
        tls: true,
        ..RedisConfig::default()
    };
    assert_eq!(base.validate(), Ok(()));
    let cert_only = RedisConfig {
        tls_cert_file: Some("c.pem".into()),
        ..base.clone()
    };
    let e = cert_only.validate().expect_err("cert without key");
    assert!(e.contains("redis.tls_key_file"), "{e}");
    let key_only = RedisConfig {
        tls_key_file: Some("k.pem".into()),
        ..base.clone()
    };
    let e = key_only.validate().expect_err("key without cert");
    assert!(e.contains("redis.tls_cert_file"), "{e}");
    let no_tls = RedisConfig {
        tls: false,
        tls_ca_file: Some("ca.pem".into()),
        ..base.clone()
    };
    let e = no_tls.validate().expect_err("CA without TLS");
    assert!(
        e.contains("redis.tls_ca_file") && e.contains("redis.tls"),
        "{e}"
    );
    let skip_no_tls = RedisConfig {
        tls: false,
        tls_insecure_skip_verify: true,
        ..base.clone()
    };
    let e = skip_no_tls.validate().expect_err("skip-verify without TLS");
    assert!(e.contains("redis.tls_insecure_skip_verify"), "{e}");
    let empty = RedisConfig {
        tls_ca_file: Some(PathBuf::new()),
        ..base.clone()
    };
    let e = empty.validate().expect_err("empty path");
    assert!(e.contains("redis.tls_ca_file"), "{e}");
    let sentinel_insecure_mtls = RedisConfig {
        sentinel_master_name: "m".into(),
        sentinel_addresses: vec!["127.0.0.1:26379".into()],
        tls_insecure_skip_verify: true,
        tls_cert_file: Some("c.pem".into()),
        tls_key_file: Some("k.pem".into()),
        ..base.clone()
    };
    let e = sentinel_insecure_mtls
        .validate()
        .expect_err("Sentinel, skip-verify and a client certificate");
    assert!(e.contains("redis.tls_insecure_skip_verify"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_on_a_three_master_tls_cluster() {
    let dir = pki("tls-rcluster");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut procs = Vec::new();
    for p in &ports {
        let conf = s(&dir.path(&format!("nodes-{p}.conf")));
        procs.push(tls_redis(
            &dir,
            *p,
            "server",
            &[
                "--tls-auth-clients",
                "no",
                "--tls-cluster",
                "yes",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf,
            ],
        ));
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert", &s(&dir.path("ca.pem"))])
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "cluster create: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for p in &ports {
        let t0 = Instant::now();
        while !String::from_utf8_lossy(&cli(&dir, *p, &["CLUSTER", "INFO"]).stdout)
            .contains("cluster_state:ok")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "cluster not ok on {p}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    let cfg = |seed: &str| RedisConfig {
        cluster_addresses: vec![seed.to_owned()],
        tls: true,
        tls_ca_file: Some(dir.path("ca.pem")),
        ..RedisConfig::default()
    };
    let a = RedisDirectory::connect(&cfg(&addrs[0]))
        .await
        .expect("connect a");
    let b = RedisDirectory::connect(&cfg(&addrs[2]))
        .await
        .expect("connect b");
    round_trip(&a, &b, "room-0").await;
    // Rooms on every master: the client reached all three over TLS.
    for i in 1..30 {
        let room = format!("room-{i}");
        let x = a.conference(&room, now_ms()).await.expect("a");
        let y = b.conference(&room, now_ms()).await.expect("b");
        assert_eq!(x.id, y.id);
    }
    let spread: Vec<usize> = ports
        .iter()
        .map(|p| {
            String::from_utf8_lossy(&cli(&dir, *p, &["DBSIZE"]).stdout)
                .trim()
                .parse()
                .unwrap_or(0)
        })
        .collect();
    assert!(
        spread.iter().all(|k| *k > 0),
        "keys not spread over the masters: {spread:?}"
    );

    // A cluster client that does not trust the CA gets nowhere.
    let e = connect_err(&RedisConfig {
        tls_ca_file: Some(dir.path("other-ca.pem")),
        ..cfg(&addrs[1])
    })
    .await;
    assert!(matches!(e, DirectoryError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    drop(procs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_and_master_over_mutual_tls() {
    const MASTER: &str = "kaskade-tls";
    let dir = pki("tls-sentinel");
    let (m, sp) = (free_port(), free_port());
    // Both ask for a client certificate: a connect shows that the directory presents it to
    // the sentinel and to the master the sentinel names.
    let _master = tls_redis(&dir, m, "server", &["--tls-auth-clients", "yes"]);
    let conf = dir.path("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port 0\ntls-port {sp}\nbind 127.0.0.1\n\
             tls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
             tls-auth-clients yes\ntls-replication yes\n\
             sentinel monitor {MASTER} 127.0.0.1 {m} 1\n",
            cert = s(&dir.path("server.pem")),
            key = s(&dir.path("server.key")),
            ca = s(&dir.path("ca.pem")),
        ),
    )
    .expect("sentinel conf");
    let _sentinel = Proc(
        Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    // The sentinel reached the master over TLS (else it would flag it down).
    let t0 = Instant::now();
    loop {
        let out = cli(&dir, sp, &["SENTINEL", "master", MASTER]);
        let text = String::from_utf8_lossy(&out.stdout);
        let ok = text.contains("role-reported\nmaster") && !text.contains("disconnected");
        if ok && text.contains("flags\nmaster\n") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "sentinel does not see the master: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let cfg = RedisConfig {
        sentinel_master_name: MASTER.into(),
        sentinel_addresses: vec![format!("127.0.0.1:{sp}")],
        tls: true,
        tls_ca_file: Some(dir.path("ca.pem")),
        tls_cert_file: Some(dir.path("client.pem")),
        tls_key_file: Some(dir.path("client.key")),
        ..RedisConfig::default()
    };
    let a = RedisDirectory::connect(&cfg)
        .await
        .expect("connect through the sentinel");
    let b = RedisDirectory::connect(&cfg)
        .await
        .expect("connect through the sentinel");
    round_trip(&a, &b, "room-sentinel").await;
    let out = cli(&dir, m, &["EXISTS", "kaskade:room:{room-sentinel}"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    // Without the client certificate the sentinel itself refuses.
    let e = connect_err(&RedisConfig {
        tls_cert_file: None,
        tls_key_file: None,
        ..cfg.clone()
    })
    .await;
    assert!(matches!(e, DirectoryError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("CertificateRequired"), "{e}");
}
