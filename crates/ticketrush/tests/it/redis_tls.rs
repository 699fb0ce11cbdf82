//! TLS to Redis: a real `redis-server` listening only on a TLS port, requiring client
//! certificates, with a certificate authority the test makes with `openssl`, and an ACL user
//! with a password. `serve` and `audit` work over `rediss://` with `--redis-ca-file` and a
//! client certificate; another CA is refused at start with a clear error; the password is in no
//! log line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use ticketrush_testkit::redis_server::{free_cluster_port, free_port};
use ticketrush_testkit::TempDir;

/// Runs `openssl ARGS` (split at spaces) in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &str) {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A P-256 key (`NAME.key`) and a certificate for it (`NAME.crt`) with `subject`, signed by
/// the CA `CA` (`CA.crt`, `CA.key`) with the extensions `ext` (extensions make it X.509 v3,
/// which rustls requires).
pub(crate) fn signed_cert(dir: &Path, name: &str, subject: &str, ca: &str, ext: &str) {
    openssl(
        dir,
        &format!(
            "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}.key \
             -out {name}.csr -subj {subject}"
        ),
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &format!(
            "x509 -req -in {name}.csr -CA {ca}.crt -CAkey {ca}.key -CAcreateserial \
             -out {name}.crt -days 2 -extfile {name}.ext"
        ),
    );
}

/// A CA (`NAME-ca.crt`) and, signed by it, a server certificate for 127.0.0.1 (`NAME.crt`,
/// `NAME.key`).
pub(crate) fn ca_and_cert(dir: &Path, name: &str) {
    openssl(
        dir,
        &format!(
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}-ca.key \
             -out {name}-ca.crt -days 2 -subj /CN={name}-ca"
        ),
    );
    signed_cert(
        dir,
        name,
        "/CN=127.0.0.1",
        &format!("{name}-ca"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    );
}

struct TlsRedis {
    port: u16,
    child: Child,
    _dir: TempDir,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-server` on TLS port `port` only, with the server certificate in `certs`, AOF always,
/// its data in its own dir, and `extra` flags.
fn spawn_tls_redis(certs: &Path, port: u16, extra: &[&str]) -> TlsRedis {
    let dir = TempDir::new("redis-tls");
    let p = |f: &str| path(certs, f);
    let tls = format!(
        "--port 0 --tls-port {port} --bind 127.0.0.1 --tls-cert-file {} --tls-key-file {} \
         --tls-ca-cert-file {} --appendonly yes --appendfsync always",
        p("server.crt"),
        p("server.key"),
        p("server-ca.crt")
    );
    let child = Command::new("redis-server")
        .args(tls.split_whitespace())
        .args(["--save", ""])
        .args(extra)
        .arg("--dir")
        .arg(&dir.0)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    TlsRedis {
        port,
        child,
        _dir: dir,
    }
}

/// redis-server with only a TLS port (client certificates required), user `ticketrush`
/// with password `s3cret-pass`, the default user off.
fn tls_redis(certs: &Path) -> TlsRedis {
    let p = |f: &str| path(certs, f);
    // Each ACL directive's words as separate arguments (redis-server joins them).
    let redis = spawn_tls_redis(
        certs,
        free_port(),
        &[
            "--tls-auth-clients",
            "yes",
            "--user",
            "default",
            "off",
            "--user",
            "ticketrush",
            "on",
            ">s3cret-pass",
            "~*",
            "&*",
            "+@all",
        ],
    );
    let port = redis.port;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", &p("server-ca.crt")])
            .args(["--cert", &p("client.crt"), "--key", &p("client.key")])
            .args([
                "-p",
                &port.to_string(),
                "--user",
                "ticketrush",
                "--pass",
                "s3cret-pass",
            ])
            .args(["--no-auth-warning", "PING"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("PONG") {
            return redis;
        }
        assert!(
            Instant::now() < deadline,
            "TLS redis-server did not answer PING in 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn path(dir: &Path, f: &str) -> String {
    dir.join(f).to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_audit_reach_a_tls_only_redis_and_a_wrong_ca_is_refused() {
    let certs = TempDir::new("tls-certs");
    let dir: PathBuf = certs.0.clone();
    ca_and_cert(&dir, "server");
    // The client's certificate, from a CA the server trusts: its own.
    signed_cert(
        &dir,
        "client",
        "/CN=ticketrush-node",
        "server-ca",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    ca_and_cert(&dir, "other");
    let redis = tls_redis(&dir);
    let url = format!("rediss://ticketrush:s3cret-pass@127.0.0.1:{}", redis.port);
    let tls_flags = [
        "--redis-ca-file".to_string(),
        path(&dir, "server-ca.crt"),
        "--redis-cert-file".to_string(),
        path(&dir, "client.crt"),
        "--redis-key-file".to_string(),
        path(&dir, "client.key"),
    ];
    let tls: Vec<&str> = tls_flags.iter().map(String::as_str).collect();

    // serve over TLS, logs at info, piped so the test can read them.
    let mut args = vec![
        "--admin-token",
        ticketrush_testkit::ADMIN_TOKEN,
        "--redis",
        &url,
    ];
    args.extend(&tls);
    let (mut node, c) = crate::crash::spawn_serve_logging(&args, "info", Stdio::piped()).await;
    assert_eq!(c.create_sale("secure", 20, json!({})).await.status, 201);
    for i in 0..20 {
        assert_eq!(c.reserve("secure", &format!("u{i}")).await.status, 201);
    }
    assert_eq!(c.reserve("secure", "late").await.error(), "sold_out");

    // audit over TLS too.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .args(["audit", "--sale", "secure", "--redis", &url])
        .args(&tls)
        .env("TICKETRUSH_LOG", "info")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("PASSED"), "{said}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret-pass"));

    // The node's own log never shows the password.
    node.start_kill().unwrap();
    let logs = node.wait_with_output().await.unwrap();
    let logs = String::from_utf8_lossy(&logs.stderr);
    assert!(logs.contains("redis store connected"), "{logs}");
    assert!(
        !logs.contains("s3cret-pass"),
        "the password is in the log: {logs}"
    );

    // A CA that did not sign the server's certificate: a clear error at start.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            "x",
            "--redis",
            &url,
        ])
        .args(["--redis-ca-file", &path(&dir, "other-ca.crt")])
        .args(["--redis-cert-file", &path(&dir, "client.crt")])
        .args(["--redis-key-file", &path(&dir, "client.key")])
        .env("TICKETRUSH_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("serve gave up within 30 s")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot reach redis"), "{err}");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(!err.contains("s3cret-pass"), "{err}");

    // Certificates with a plain redis:// URL are refused rather than ignored.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-token", "x"])
        .args(["--redis", &format!("redis://127.0.0.1:{}", redis.port)])
        .args(["--redis-ca-file", &path(&dir, "server-ca.crt")])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("rediss://"), "{err}");
}

/// A three-master Redis Cluster on TLS ports only (`--tls-cluster yes`: the map it gives out
/// names TLS ports): one `rediss://` seed and the CA are enough; sales land on every master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_cluster_sells_from_one_rediss_seed() {
    let certs = TempDir::new("tls-cluster-certs");
    let dir: PathBuf = certs.0.clone();
    ca_and_cert(&dir, "server");
    let p = |f: &str| path(&dir, f);
    let mut nodes = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let port = free_cluster_port();
        nodes.push(spawn_tls_redis(
            &dir,
            port,
            &[
                &["--tls-auth-clients", "no", "--tls-cluster", "yes"][..],
                &ticketrush_testkit::redis_server::CLUSTER_FLAGS,
            ]
            .concat(),
        ));
        ports.push(port);
    }
    let cli = |args: &[&str]| {
        Command::new("redis-cli")
            .args(["--tls", "--cacert", &p("server-ca.crt")])
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in &ports {
        while !String::from_utf8_lossy(&cli(&["-p", &port.to_string(), "PING"]).stdout)
            .contains("PONG")
        {
            assert!(
                Instant::now() < deadline,
                "a TLS cluster node did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(addrs.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    let out = cli(&create);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    for port in &ports {
        while !String::from_utf8_lossy(&cli(&["-p", &port.to_string(), "CLUSTER", "INFO"]).stdout)
            .contains("cluster_state:ok")
        {
            assert!(
                Instant::now() < deadline,
                "the TLS cluster did not become ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let url = format!("rediss://127.0.0.1:{}", ports[1]);
    let (_node, c) =
        crate::crash::spawn_serve(&["--redis", &url, "--redis-ca-file", &p("server-ca.crt")]).await;
    let sales: Vec<String> = (0..9).map(|i| format!("tls{i}")).collect();
    for s in &sales {
        assert_eq!(c.create_sale(s, 5, json!({})).await.status, 201);
        for u in 0..5 {
            assert_eq!(c.reserve(s, &format!("u{u}")).await.status, 201, "{s}");
        }
        assert_eq!(c.reserve(s, "late").await.error(), "sold_out");
    }
    // Every master holds some of them.
    let holders = ports
        .iter()
        .filter(|port| {
            let keys = cli(&["-p", &port.to_string(), "DBSIZE"]);
            String::from_utf8_lossy(&keys.stdout)
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
                > 0
        })
        .count();
    assert_eq!(holders, 3, "sales on {holders} of 3 masters");
    drop(nodes);
}
