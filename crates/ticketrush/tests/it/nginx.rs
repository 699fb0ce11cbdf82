//! The load-balancing tier as the binary makes it: `gateway` and `nginx-conf` on the command
//! line, and a real nginx running the configuration `ticketrush nginx-conf` prints.
//!
//! nginx runs one balancer per worker process, so its spread is checked within 2 percentage
//! points. The nginx tests need the nginx binary (scripts/test installs it when missing) and
//! fail, not skip, without it. Each nginx runs in its own prefix under the temp dir and is
//! stopped when its handle drops. (The built-in gateway's own tests are in `crates/gateway`.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ticketrush_gateway::NodeSpec;

use ticketrush_testkit::gateway::{concurrent_node_ids, counts, four_nodes, refused_addr};
use ticketrush_testkit::{wait_until, Client, TempDir};

#[test]
fn gateway_and_nginx_conf_refuse_bad_flags_with_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["gateway"], "--node"),
        (&["gateway", "--node", "127.0.0.1:3001"], "ADDR=WEIGHT"),
        (&["gateway", "--node", "127.0.0.1:3001=0"], "from 1 to 100"),
        (
            &["nginx-conf", "--node", "127.0.0.1:3001=101"],
            "from 1 to 100",
        ),
        (&["nginx-conf", "--node", "localhost:3001=1"], "IP address"),
        (&["nginx-conf"], "--node"),
        (
            &["gateway", "--node", "127.0.0.1:1=1", "--max-fails", "101"],
            "--max-fails",
        ),
        (
            &[
                "gateway",
                "--node",
                "127.0.0.1:1=1",
                "--fail-timeout-seconds",
                "0",
            ],
            "--fail-timeout-seconds",
        ),
    ];
    for (args, needle) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_ticketrush"))
            .args(*args)
            .env_remove("TICKETRUSH_NODE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?} should say {needle:?}: {stderr}"
        );
    }
}

#[test]
fn gateway_and_nginx_conf_have_help() {
    for sub in ["gateway", "nginx-conf"] {
        let out = Command::new(env!("CARGO_BIN_EXE_ticketrush"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{sub}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--node <ADDR=WEIGHT>"), "{help}");
        assert!(help.contains("TICKETRUSH_FAIL_TIMEOUT_SECONDS"), "{help}");
    }
}

#[test]
fn nginx_conf_reads_its_flags_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .arg("nginx-conf")
        .env("TICKETRUSH_NODE", "127.0.0.1:3001=1,127.0.0.1:3002=4")
        .env("TICKETRUSH_MAX_FAILS", "3")
        .env("TICKETRUSH_FAIL_TIMEOUT_SECONDS", "20")
        .env("TICKETRUSH_LISTEN", "127.0.0.1:9000")
        .output()
        .unwrap();
    assert!(out.status.success());
    let conf = String::from_utf8(out.stdout).unwrap();
    assert!(conf.contains("server 127.0.0.1:3002 weight=4 max_fails=3 fail_timeout=20s;"));
    assert!(conf.contains("listen 127.0.0.1:9000 "));
}

// ---- nginx ----------------------------------------------------------------------------------

/// The nginx binary: on PATH, or where distributions put it.
fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nginx"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(
            [
                "/usr/sbin/nginx",
                "/usr/local/sbin/nginx",
                "/usr/local/nginx/sbin/nginx",
            ]
            .map(PathBuf::from),
        )
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed (looked on PATH and in /usr/sbin): run scripts/test, \
                 which installs it, or `apt-get install -y nginx-light`"
            )
        })
}

/// The configuration `ticketrush nginx-conf` prints for this tier, written into `prefix`.
fn write_conf(
    prefix: &Path,
    listen: SocketAddr,
    nodes: &[NodeSpec],
    fail_timeout_s: u64,
) -> PathBuf {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ticketrush"));
    cmd.args(["nginx-conf", "--listen", &listen.to_string()]);
    for n in nodes {
        cmd.args(["--node", &format!("{}={}", n.addr, n.weight)]);
    }
    cmd.args(["--fail-timeout-seconds", &fail_timeout_s.to_string()]);
    let out = cmd.env_remove("TICKETRUSH_NODE").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = prefix.join("ticketrush.conf");
    std::fs::write(&file, out.stdout).unwrap();
    file
}

/// An nginx master process in the foreground with its own prefix; stopped (workers included)
/// when dropped.
struct Nginx {
    child: Child,
    prefix: TempDir,
}

impl Nginx {
    fn start(prefix: TempDir, conf: &Path) -> Nginx {
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(&prefix.0)
            .arg("-c")
            .arg(conf)
            .arg("-e")
            .arg(prefix.0.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        Nginx { child, prefix }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.0.join("error.log")).unwrap_or_default()
    }

    /// Panics with nginx's error log if it has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("nginx exited ({status}): {}", self.error_log());
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers and exits. A SIGKILL'd master would leave its
        // workers running, so that is only the fallback, followed by the workers themselves.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("pkill").args(["-KILL", "-P", &pid]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn nginx_accepts_the_generated_configuration() {
    let prefix = TempDir::new("nginx-t");
    let nodes: Vec<NodeSpec> = (1..=4)
        .map(|i| NodeSpec::parse(&format!("127.0.0.1:{}={i}", 3000 + i)).unwrap())
        .collect();
    let conf = write_conf(&prefix.0, "127.0.0.1:8000".parse().unwrap(), &nodes, 10);
    let out = Command::new(nginx_binary())
        .arg("-t")
        .arg("-p")
        .arg(&prefix.0)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(prefix.0.join("error.log"))
        .output()
        .expect("run nginx -t");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "nginx -t refused the configuration: {stderr}"
    );
    assert!(stderr.contains("syntax is ok"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_spreads_1_2_3_4_within_2_points_and_routes_around_a_dead_node() {
    let (mut nodes, specs) = four_nodes().await;
    let prefix = TempDir::new("nginx");
    let listen = refused_addr().await;
    let conf = write_conf(&prefix.0, listen, &specs, 10);
    let mut nginx = Nginx::start(prefix, &conf);
    let client = Client::new(listen);
    let probe = client.clone();
    let up = wait_until(Duration::from_secs(10), || {
        let probe = probe.clone();
        async move {
            probe
                .http
                .get(format!("{}/healthz", probe.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    nginx.assert_running();
    assert!(
        up,
        "nginx did not answer within 10 s: {}",
        nginx.error_log()
    );

    let ids = concurrent_node_ids(&client, 2000, 8).await;
    let c = counts(&ids);
    for i in 1..=4 {
        let share = c.get(&format!("n{i}")).copied().unwrap_or(0) as f64 / ids.len() as f64;
        let expected = i as f64 / 10.0;
        assert!(
            (share - expected).abs() <= 0.02,
            "n{i} got {:.1} % instead of {:.0} % ({c:?})",
            share * 100.0,
            expected * 100.0
        );
    }

    // A dead node is routed around: every request still succeeds, none from the dead one.
    nodes.pop().unwrap().stop().await;
    let ids = concurrent_node_ids(&client, 400, 8).await;
    let c = counts(&ids);
    assert!(!c.contains_key("n4"), "{c:?}");
    assert_eq!(c.values().sum::<usize>(), 400);
    nginx.assert_running();
    drop(nginx);
    for n in nodes {
        n.stop().await;
    }
}
