//! A real `redis-server` owned by one test: a free loopback port, its own data dir, the AOF
//! settings we recommend (`appendonly yes`, `appendfsync always`), killed when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TempDir;

/// A test cluster node's flags. `cluster-require-full-coverage no`, as docs/DEPLOYMENT.md
/// recommends: without it, once the cluster agrees a master without a replica has failed
/// (after the node timeout), every master refuses every command (CLUSTERDOWN), not just the
/// dead one's slots.
pub const CLUSTER_FLAGS: [&str; 6] = [
    "--cluster-enabled",
    "yes",
    "--cluster-node-timeout",
    "2000",
    "--cluster-require-full-coverage",
    "no",
];

pub struct RedisServer {
    pub port: u16,
    pub dir: TempDir,
    child: Option<Child>,
    /// Flags beyond the usual ones (cluster mode), kept for restarts.
    extra: Vec<String>,
}

fn redis_server_binary() -> PathBuf {
    for p in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!(
        "redis-server is not installed: scripts/test installs it (apt-get install redis-server)"
    );
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

/// A free port for a Redis Cluster node whose bus port (the port + 10000) is free too.
pub fn free_cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: TempDir::new("redis"),
            child: None,
            extra: Vec::new(),
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    fn spawn_with(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        let child = Command::new(redis_server_binary())
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir.0)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING in 10 s",
            self.port
        );
    }

    /// Whether Redis answers PING (and has loaded its data) right now.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    /// SIGKILL: no chance to write anything more than what `appendfsync always` already did.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` (e.g. "-STOP", "-CONT") to the server process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// Starts again on the same port, data dir and flags (it replays its AOF).
    pub fn restart(&mut self) {
        self.kill();
        let extra: Vec<String> = self.extra.clone();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        self.spawn_with(&extra);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real three-master Redis Cluster owned by one test: three `redis-server --cluster-enabled
/// yes` on free loopback ports (each bus port is its port + 10000), their own dirs, AOF always,
/// joined by `redis-cli --cluster create`; killed when dropped.
pub struct RedisCluster {
    pub masters: Vec<RedisServer>,
    /// With `start_with_replicas`: one replica per master, `replicas[i]` of `masters[i]`.
    pub replicas: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        RedisCluster::start_nodes(false)
    }

    /// Three masters, each with one replica (six servers); a master's failure promotes its
    /// replica after the cluster node timeout (2 s).
    pub fn start_with_replicas() -> RedisCluster {
        RedisCluster::start_nodes(true)
    }

    fn start_nodes(with_replicas: bool) -> RedisCluster {
        let mut masters = Vec::new();
        for _ in 0..if with_replicas { 6 } else { 3 } {
            // The bus port (port + 10000) must be free too.
            let port = free_cluster_port();
            let mut s = RedisServer {
                port,
                dir: TempDir::new("redis-cluster"),
                child: None,
                extra: Vec::new(),
            };
            s.spawn_with(&CLUSTER_FLAGS);
            masters.push(s);
        }
        let addrs: Vec<String> = masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let out = Command::new(redis_cli_binary())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", if with_replicas { "1" } else { "0" }])
            .arg("--cluster-yes")
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (masters, replicas) = if with_replicas {
            pair_replicas(masters)
        } else {
            (masters, Vec::new())
        };
        let cluster = RedisCluster { masters, replicas };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster
            .masters
            .iter()
            .chain(&cluster.replicas)
            .all(|m| m.cluster_ok())
        {
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ok in 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Replicas in sync with their masters: a write can be confirmed (WAIT) from now on.
        for r in &cluster.replicas {
            while !r
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
            {
                assert!(Instant::now() < deadline, "a replica did not sync in 20 s");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// Any one node's URL: the seed a client starts from.
    pub fn url(&self) -> String {
        self.masters[0].url()
    }
}

/// Splits the nodes `redis-cli --cluster create` chose into masters and, in the same order,
/// the replica of each (read from `CLUSTER NODES`).
fn pair_replicas(nodes: Vec<RedisServer>) -> (Vec<RedisServer>, Vec<RedisServer>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Lines: "<id> <ip:port@bus> <flags> <master id or -> ...".
        let table = nodes[0].cli(&["CLUSTER", "NODES"]);
        let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split(' ').collect()).collect();
        let port_of = |row: &Vec<&str>| -> Option<u16> {
            row.get(1)?
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        };
        let mut pairs = Vec::new();
        for row in &rows {
            if row.get(2).is_some_and(|f| f.contains("master")) {
                let id = row[0];
                let replica = rows.iter().find(|r| {
                    r.get(2).is_some_and(|f| f.contains("slave")) && r.get(3) == Some(&id)
                });
                if let (Some(m), Some(r)) = (port_of(row), replica.and_then(port_of)) {
                    pairs.push((m, r));
                }
            }
        }
        if pairs.len() == 3 {
            let mut nodes: Vec<Option<RedisServer>> = nodes.into_iter().map(Some).collect();
            let mut take = |port: u16| {
                let i = nodes
                    .iter()
                    .position(|n| n.as_ref().is_some_and(|n| n.port == port))
                    .expect("a node of the cluster");
                nodes[i].take().unwrap()
            };
            let masters = pairs.iter().map(|p| take(p.0)).collect();
            let replicas = pairs.iter().map(|p| take(p.1)).collect();
            return (masters, replicas);
        }
        assert!(
            Instant::now() < deadline,
            "replicas not attached in 20 s: {table}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn redis_cli_binary() -> PathBuf {
    for p in ["/usr/bin/redis-cli", "/usr/local/bin/redis-cli"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("redis-cli is not installed: scripts/test installs it (apt-get install redis-server)");
}

impl RedisServer {
    /// Whether this cluster node says `cluster_state:ok`.
    fn cluster_ok(&self) -> bool {
        Command::new(redis_cli_binary())
            .args(["-p", &self.port.to_string(), "CLUSTER", "INFO"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
    }

    /// Runs `redis-cli -p PORT ARGS` against this server and answers its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(redis_cli_binary())
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
