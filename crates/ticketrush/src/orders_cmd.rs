//! `audit`, `order-writer`, and the order writer inside `serve --postgres`.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use ticketrush_core::{AuditReport, NodeId, SaleId};
use ticketrush_orders::{
    EmbeddedRows, OrderRows, OrderWriter, OrdersDb, PostgresRows, WriterConfig,
};
use ticketrush_store::{RedisConfig, RedisStore};

use crate::RuntimeArgs;

/// Longest `audit` waits for the order writer to catch up, at most.
const AUDIT_WAIT_SECONDS_MAX: u64 = 3_600;

#[derive(Args)]
pub struct AuditArgs {
    /// The sale to check.
    #[arg(long, env = "TICKETRUSH_AUDIT_SALE", value_parser = parse_sale_id)]
    sale: SaleId,
    /// The cluster's Redis (the sale's truth); repeat it (or separate URLs with commas) to
    /// give several seeds of a Redis Cluster.
    #[arg(long, env = "TICKETRUSH_REDIS", value_parser = crate::parse_redis_url, conflicts_with = "data_dir")]
    redis: Vec<String>,
    #[command(flatten)]
    redis_tls: crate::RedisTlsArgs,
    /// The orders database: every reservation must have exactly one row in its state.
    #[arg(long, env = "TICKETRUSH_POSTGRES", requires = "redis", value_parser = parse_postgres_url)]
    postgres: Option<String>,
    /// PEM CA certificate(s) for a PostgreSQL URL with sslmode=verify-ca or verify-full
    /// (default: the system's roots).
    #[arg(long, env = "TICKETRUSH_POSTGRES_CA_FILE")]
    postgres_ca_file: Option<std::path::PathBuf>,
    /// An embedded store's data dir (the node must be stopped: the dir is locked while it runs).
    #[arg(long, env = "TICKETRUSH_DATA_DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// Longest wait, in seconds, for the order writer to write what is pending.
    #[arg(long, env = "TICKETRUSH_WAIT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=AUDIT_WAIT_SECONDS_MAX))]
    wait_seconds: u64,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args)]
pub struct OrderWriterArgs {
    /// The cluster's Redis, whose sale event streams are read; repeat it (or separate URLs
    /// with commas) to give several seeds of a Redis Cluster.
    #[arg(long, env = "TICKETRUSH_REDIS", value_parser = crate::parse_redis_url, required = true)]
    redis: Vec<String>,
    #[command(flatten)]
    redis_tls: crate::RedisTlsArgs,
    /// The database of the orders table (created if missing).
    #[arg(long, env = "TICKETRUSH_POSTGRES", value_parser = parse_postgres_url)]
    postgres: String,
    /// PEM CA certificate(s) for a PostgreSQL URL with sslmode=verify-ca or verify-full
    /// (default: the system's roots).
    #[arg(long, env = "TICKETRUSH_POSTGRES_CA_FILE")]
    postgres_ca_file: Option<std::path::PathBuf>,
    /// This writer's name in the consumer group (unique per running writer).
    #[arg(long, env = "TICKETRUSH_CONSUMER", value_parser = parse_node_id)]
    consumer: Option<NodeId>,
    /// Serve the writer's Prometheus figures (`/metrics`) and `/healthz` on this address
    /// (e.g. 127.0.0.1:9187); none by default.
    #[arg(long, env = "TICKETRUSH_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

fn parse_sale_id(s: &str) -> Result<SaleId, String> {
    SaleId::parse(s).map_err(|e| e.to_string())
}

fn parse_node_id(s: &str) -> Result<NodeId, String> {
    NodeId::parse(s).map_err(|e| e.to_string())
}

/// The PostgreSQL CA file's contents, if one was given.
pub fn read_ca(path: Option<&std::path::Path>) -> anyhow::Result<Option<Vec<u8>>> {
    path.map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
        .transpose()
}

pub fn parse_postgres_url(s: &str) -> Result<String, String> {
    if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
        return Err(format!("{s:?} is not a postgres:// URL"));
    }
    let (without_sslmode, _) = ticketrush_orders::tls::split_sslmode(s)?;
    without_sslmode
        .parse::<tokio_postgres::Config>()
        .map(|_| s.to_string())
        .map_err(|e| format!("not a postgres URL: {e}"))
}

/// Starts the order writer of `serve --postgres` and shows its figures in `/metrics`.
pub fn start_writer(
    redis: &str,
    redis_tls: ticketrush_store::RedisTls,
    postgres: &str,
    postgres_ca: Option<Vec<u8>>,
    node_id: &NodeId,
    node: &ticketrush_server::Node,
) -> OrderWriter {
    let writer = OrderWriter::start(WriterConfig {
        redis_tls,
        postgres_ca,
        ..WriterConfig::new(redis, postgres, node_id.as_str())
    });
    let stats = writer.stats.clone();
    node.metrics.extra.set(move |out| stats.render(out));
    let stats = writer.stats.clone();
    node.stats
        .set_orders_lag(move || ticketrush_server::dashboard::OrdersLag {
            lag_entries: stats.lag_entries.load(std::sync::atomic::Ordering::Relaxed),
            lag_ms: stats.lag_ms.load(std::sync::atomic::Ordering::Relaxed),
        });
    tracing::info!(consumer = %node_id, "order writer started");
    writer
}

pub async fn order_writer(
    args: OrderWriterArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let consumer = args.consumer.unwrap_or_else(|| {
        let r = ticketrush_server::node::new_random_id();
        NodeId::parse(&format!("writer-{}", &r.as_str()[..6])).expect("valid consumer name")
    });
    // Fail fast on a wrong URL or an unreachable database, then let the writer retry.
    let ca = read_ca(args.postgres_ca_file.as_deref())?;
    OrdersDb::connect(&args.postgres, ca.as_deref())
        .await
        .context("cannot reach postgres")?;
    let writer = OrderWriter::start(WriterConfig {
        redis_tls: args.redis_tls.load()?,
        postgres_ca: ca,
        ..WriterConfig::new(&args.redis.join(","), &args.postgres, consumer.as_str())
    });
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = match args.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let addr = listener.local_addr()?;
            let stats = writer.stats.clone();
            let name = consumer.to_string();
            let router = axum::Router::new()
                .route(
                    "/metrics",
                    axum::routing::get(move || {
                        let (stats, name) = (stats.clone(), name.clone());
                        async move {
                            let mut text = String::new();
                            ticketrush_server::metrics::render_build_info(&mut text, &name);
                            stats.render(&mut text);
                            ([("content-type", "text/plain; version=0.0.4")], text)
                        }
                    }),
                )
                .route("/healthz", axum::routing::get(|| async { "ok\n" }));
            println!("ticketrush order writer metrics on http://{addr}/metrics");
            Some(tokio::spawn(ticketrush_server::http::serve(
                listener,
                router,
                async move {
                    let _ = metrics_stopped.await;
                },
            )))
        }
        None => None,
    };
    println!("ticketrush order writer running as {consumer}");
    shutdown.await;
    writer.stop().await;
    let _ = stop_metrics.send(());
    if let Some(server) = metrics {
        let _ = server.await;
    }
    Ok(())
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let within = Duration::from_secs(args.wait_seconds);
    let report = match (&crate::redis_urls(&args.redis), &args.data_dir) {
        (Some(redis), _) => {
            let tls = args.redis_tls.load()?;
            let store = RedisStore::connect(RedisConfig {
                tls: tls.clone(),
                ..RedisConfig::new(redis)
            })
            .await
            .context("cannot reach redis")?;
            let table = match &args.postgres {
                Some(pg) => {
                    let ca = read_ca(args.postgres_ca_file.as_deref())?;
                    let db = OrdersDb::connect(pg, ca.as_deref())
                        .await
                        .context("cannot reach postgres")?;
                    Some(PostgresRows {
                        db,
                        redis: redis.clone(),
                        tls,
                    })
                }
                None => None,
            };
            let table = table.as_ref().map(|t| t as &dyn OrderRows);
            ticketrush_orders::audit(&store, table, &args.sale, within).await?
        }
        (None, Some(dir)) => {
            let (store, _) = ticketrush_orders::open_embedded(dir)
                .with_context(|| format!("cannot open the store in {}", dir.display()))?;
            let table = EmbeddedRows(&store);
            ticketrush_orders::audit(&store, Some(&table), &args.sale, within).await?
        }
        (None, None) => {
            bail!("give the store to audit: --redis URL [--postgres URL] or --data-dir DIR")
        }
    };
    print_report(&args.sale, &report);
    if !report.passed() {
        bail!(
            "audit of sale {} failed: {} violation(s)",
            args.sale,
            report.violation_count
        );
    }
    Ok(())
}

pub(crate) fn print_report(sale: &SaleId, r: &AuditReport) {
    println!(
        "audit of sale {sale}: reservations reserved {} paid {} cancelled {} expired {}{}",
        r.reserved,
        r.paid,
        r.cancelled,
        r.expired,
        r.orders
            .map_or(String::new(), |n| format!(", order rows {n}"))
    );
    for v in &r.violations {
        println!("VIOLATION: {v}");
    }
    if r.violation_count > r.violations.len() as u64 {
        println!(
            "… and {} more",
            r.violation_count - r.violations.len() as u64
        );
    }
    println!("{}", if r.passed() { "PASSED" } else { "FAILED" });
}
