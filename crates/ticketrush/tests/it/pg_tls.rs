//! TLS to PostgreSQL: a PostgreSQL of the test's own (initdb as the `postgres` user) that
//! accepts only `hostssl` connections, with a certificate from a CA the test makes. The order
//! writer of `serve --postgres …?sslmode=verify-full --postgres-ca-file` writes every row and
//! `audit` reads them over TLS; `sslmode=disable`, and `verify-full` with another CA, fail at
//! start with a clear error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::redis_tls::{ca_and_cert, path};
use ticketrush_testkit::redis_server::{free_port, RedisServer};
use ticketrush_testkit::TempDir;

fn pg_bin(name: &str) -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(base)
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/test installs them)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    versions
        .last()
        .expect("a PostgreSQL version")
        .join("bin")
        .join(name)
}

/// Runs `cmd ARGS` as the `postgres` user; panics with its output when it fails.
fn as_postgres(cmd: &Path, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(cmd)
        .args(args)
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        cmd.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct SslPostgres {
    port: u16,
    data: PathBuf,
    _dir: TempDir,
}

impl Drop for SslPostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}

/// A PostgreSQL on a free port that takes TLS connections only (`hostssl` lines, no `host`).
fn ssl_postgres(certs: &Path) -> SslPostgres {
    let dir = TempDir::new("pg-ssl");
    let data = dir.0.join("data");
    std::fs::create_dir(&data).unwrap();
    let chown = |p: &Path| {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(p)
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown {}", p.display());
    };
    chown(&dir.0);
    let d = data.to_str().unwrap();
    as_postgres(
        &pg_bin("initdb"),
        &["-D", d, "-A", "trust", "-U", "postgres"],
    );
    for f in ["server.crt", "server.key"] {
        std::fs::copy(certs.join(f), data.join(f)).unwrap();
    }
    chown(&data);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        data.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    let port = free_port();
    let conf = format!(
        "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{d}'\n\
         ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nfsync = off\n"
    );
    let mut text = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    text.push_str(&conf);
    std::fs::write(data.join("postgresql.conf"), text).unwrap();
    chown(&data);
    let log = format!("{d}/server.log");
    as_postgres(
        &pg_bin("pg_ctl"),
        &["-D", d, "-l", &log, "-w", "-t", "30", "start"],
    );
    SslPostgres {
        port,
        data,
        _dir: dir,
    }
}

async fn run(args: &[&str]) -> std::process::Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .args(args)
        .env("TICKETRUSH_LOG", "warn")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("finished within 60 s")
        .expect("run ticketrush")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_reach_a_tls_only_postgres_with_verify_full_and_plain_text_is_refused() {
    if !crate::journal::is_root() {
        eprintln!("skipped: starting a PostgreSQL as the postgres user needs root (scripts/test runs as root in CI)");
        return;
    }
    let certs = TempDir::new("pg-certs");
    ca_and_cert(&certs.0, "server");
    ca_and_cert(&certs.0, "other");
    let pg = ssl_postgres(&certs.0);
    let base = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let verify_full = format!("{base}?sslmode=verify-full");
    let ca = path(&certs.0, "server-ca.crt");
    let redis = RedisServer::start();

    // A node with an order writer over verify-full TLS: every reservation becomes a row.
    let (_node, c) = crate::crash::spawn_serve(&[
        "--redis",
        &redis.url(),
        "--postgres",
        &verify_full,
        "--postgres-ca-file",
        &ca,
    ])
    .await;
    assert_eq!(c.create_sale("pgtls", 25, json!({})).await.status, 201);
    for i in 0..25 {
        assert_eq!(c.reserve("pgtls", &format!("u{i}")).await.status, 201);
    }
    let out = run(&[
        "audit",
        "--sale",
        "pgtls",
        "--redis",
        &redis.url(),
        "--postgres",
        &verify_full,
        "--postgres-ca-file",
        &ca,
        "--wait-seconds",
        "30",
    ])
    .await;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("order rows 25\nPASSED"), "{said}");

    // Plain text is refused by the server; the error says so at start.
    let out = run(&[
        "order-writer",
        "--redis",
        &redis.url(),
        "--postgres",
        &format!("{base}?sslmode=disable"),
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot reach postgres"), "{err}");
    assert!(
        err.contains("no encryption") || err.contains("pg_hba"),
        "{err}"
    );

    // verify-full against a CA that did not sign the server's certificate.
    let out = run(&[
        "order-writer",
        "--redis",
        &redis.url(),
        "--postgres",
        &verify_full,
        "--postgres-ca-file",
        &path(&certs.0, "other-ca.crt"),
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // An sslmode libpq has but we do not is a bad flag (exit 2), not a silent downgrade.
    let out = run(&[
        "order-writer",
        "--redis",
        &redis.url(),
        "--postgres",
        &format!("{base}?sslmode=allow"),
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
