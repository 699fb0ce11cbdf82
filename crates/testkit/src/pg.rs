//! A fresh PostgreSQL database per test on the machine's server (`TICKETRUSH_TEST_POSTGRES`,
//! default `postgres://postgres@127.0.0.1:5432/postgres`; scripts/test starts or installs it),
//! dropped afterwards; and a TCP proxy in front of it that a test can freeze, to stall
//! PostgreSQL for the writer without stopping the server other tests share.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;

fn admin_url() -> String {
    std::env::var("TICKETRUSH_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database made for one test.
pub struct TestDb {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "ticketrush_it_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let admin = admin_url();
        let config: tokio_postgres::Config = admin.parse().expect("TICKETRUSH_TEST_POSTGRES");
        let (client, conn) = config.connect(NoTls).await.unwrap_or_else(|e| {
            panic!("cannot reach PostgreSQL at {admin} ({e}); scripts/test starts it")
        });
        tokio::spawn(conn);
        for sql in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            client
                .batch_execute(&sql)
                .await
                .expect("create the test database");
        }
        let host = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[allow(unreachable_patterns)]
            _ => "127.0.0.1".into(),
        };
        TestDb {
            name,
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            user: config.get_user().unwrap_or("postgres").to_string(),
        }
    }

    pub fn url(&self) -> String {
        self.url_via(self.port)
    }

    /// The URL through another port on the same host (a proxy).
    pub fn url_via(&self, port: u16) -> String {
        format!(
            "postgres://{}@{}:{}/{}?connect_timeout=5",
            self.user, self.host, port, self.name
        )
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(conn);
        client
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Best effort, in the background of whatever runtime is still there: a leftover
        // database named after a dead pid harms nothing.
        let name = self.name.clone();
        let admin = admin_url();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) = tokio_postgres::connect(&admin, NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        });
    }
}

/// A loopback TCP proxy to PostgreSQL that can be frozen: while frozen it forwards nothing
/// (the server looks stalled), and new connections wait too.
pub struct FreezableProxy {
    pub port: u16,
    frozen: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezableProxy {
    pub async fn start(upstream: (String, u16)) -> FreezableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (f, upstream) = (f.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect((upstream.0.as_str(), upstream.1)).await
                    else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, f.clone()));
                    pump(sr, cw, f).await;
                });
            }
        });
        FreezableProxy { port, frozen, task }
    }

    pub fn freeze(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
