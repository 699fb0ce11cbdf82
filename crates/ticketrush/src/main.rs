//! The `ticketrush` binary: the command line that wires the crates together.
//!
//! Every flag also reads `TICKETRUSH_<FLAG>` from the environment. Bad flags exit with code 2
//! and a clear message (clap's behaviour).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

mod demo;
mod journal_cmd;
mod orders_cmd;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ticketrush_core::LedgerError;
use ticketrush_core::{NodeId, SaleId, SaleSpec, UnixMs};
use ticketrush_gateway::limits as gateway_limits;
use ticketrush_server::limits::{
    BATCH_SIZE_CEILING, BATCH_SIZE_DEFAULT, BATCH_WAIT_CEILING, BATCH_WAIT_DEFAULT,
    PENDING_CEILING, PENDING_DEFAULT,
};
use ticketrush_server::NodeConfig;
use ticketrush_store::{RedisConfig, RedisStore, Store, StoreError};

/// Most replicas a write may be required to reach (`--redis-wait-replicas`).
const REDIS_WAIT_REPLICAS_MAX: i64 = 5;

/// mimalloc: per-thread free lists make the many small allocations of HTTP handling cheaper
/// than glibc's arenas (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ticketrush",
    version,
    about = "A flash-sale ticketing system: sells every seat exactly once, fast."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a selling node (embedded store: all state in --data-dir).
    Serve(Box<ServeArgs>),
    /// Run a hello-world server on the same HTTP stack: the ceiling benchmarks compare against.
    Ceiling(CeilingArgs),
    /// Run the load-balancing gateway: nginx's smooth weighted round-robin over nodes.
    Gateway(GatewayArgs),
    /// Print a complete nginx configuration for the same load-balancing tier.
    NginxConf(TierArgs),
    /// Load a sale with N distinct users: latency, throughput, outcomes, and the sale checked.
    Bench(BenchArgs),
    /// Check a sale's invariants against its stores; exit 1 naming every violation.
    Audit(orders_cmd::AuditArgs),
    /// Run an order writer alone: Redis event streams to the PostgreSQL orders table.
    OrderWriter(orders_cmd::OrderWriterArgs),
    /// Check, repair or compact an embedded data dir's journal (no node running on it).
    Journal(journal_cmd::JournalArgs),
    /// Print the OpenAPI document every node serves at /api/v1/openapi.json.
    Openapi,
    /// The article's flash sale on this machine: weighted nodes behind the gateway, a million
    /// simulated users, what each node sold, and the audit.
    Demo(demo::DemoArgs),
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    bench: ticketrush_bench::Args,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TICKETRUSH_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory of the embedded store (journal); created if missing.
    #[arg(long, env = "TICKETRUSH_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Bearer token for creating sales. Prefer --admin-token-file: a flag is visible in process
    /// listings. With neither, a random one is made and written to DATA_DIR/admin-token (mode
    /// 0600); its path is logged, not the token.
    #[arg(
        long,
        env = "TICKETRUSH_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    admin_token: Option<String>,
    /// Read the admin token from this file (its first line).
    #[arg(long, env = "TICKETRUSH_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Who a reservation, payment or cancellation acts for: `none` trusts the body's user_id
    /// (demos, benchmarks); `jwt` needs `Authorization: Bearer <JWT>` and acts for its `sub`.
    #[arg(long, env = "TICKETRUSH_USER_AUTH", value_enum, default_value = "none")]
    user_auth: UserAuthMode,
    /// With --user-auth jwt: the HS256 secret (the file's bytes, a trailing newline removed;
    /// at least 32 bytes).
    #[arg(
        long,
        env = "TICKETRUSH_JWT_SECRET_FILE",
        conflicts_with = "jwt_public_key_file"
    )]
    jwt_secret_file: Option<PathBuf>,
    /// With --user-auth jwt: a PEM public key; Ed25519 (EdDSA), P-256 (ES256) or RSA (RS256).
    #[arg(long, env = "TICKETRUSH_JWT_PUBLIC_KEY_FILE")]
    jwt_public_key_file: Option<PathBuf>,
    /// With --user-auth jwt: accept only tokens with this `iss`.
    #[arg(long, env = "TICKETRUSH_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// With --user-auth jwt: accept only tokens with this `aud`.
    #[arg(long, env = "TICKETRUSH_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    #[command(flatten)]
    drain: DrainArgs,
    /// Create this sale at start if it does not exist (ID:TOTAL, repeatable). The first is the
    /// default sale of `/buy/ticket`.
    #[arg(long = "sale", env = "TICKETRUSH_SALE", value_delimiter = ',', value_parser = parse_sale)]
    sales: Vec<(SaleId, u64)>,
    /// This node's name, sent as X-Node-Id (default: node- and random characters).
    #[arg(long, env = "TICKETRUSH_NODE_ID", value_parser = parse_node_id)]
    node_id: Option<NodeId>,
    /// Most reservations committed to the store in one call.
    #[arg(long, env = "TICKETRUSH_BATCH_SIZE", default_value_t = BATCH_SIZE_DEFAULT as u64,
          value_parser = clap::value_parser!(u64).range(1..=BATCH_SIZE_CEILING as u64))]
    batch_size: u64,
    /// Longest wait, in microseconds, to fill a batch after its first request (0: none).
    #[arg(long, env = "TICKETRUSH_BATCH_WAIT_US", default_value_t = BATCH_WAIT_DEFAULT.as_micros() as u64,
          value_parser = clap::value_parser!(u64).range(0..=BATCH_WAIT_CEILING.as_micros() as u64))]
    batch_wait_us: u64,
    /// Reservations per sale waiting for the store before the node answers 429.
    #[arg(long, env = "TICKETRUSH_PENDING_MAX", default_value_t = PENDING_DEFAULT as u64,
          value_parser = clap::value_parser!(u64).range(1..=PENDING_CEILING as u64))]
    pending_max: u64,
    /// No effect since nodes stopped leasing allotments (every reservation is decided against
    /// the sale's one pool); still accepted so that existing start scripts run.
    #[arg(long, env = "TICKETRUSH_LEASE_SECONDS", hide = true)]
    lease_seconds: Option<u64>,
    /// Cluster mode: keep the global stock in this Redis (redis://HOST:PORT[/DB]) instead of
    /// the embedded store; any number of nodes may share one Redis. For a Redis Cluster, any
    /// one node's URL is enough; more (the flag repeated, or URLs separated by commas) are
    /// seeds tried in order.
    #[arg(long, env = "TICKETRUSH_REDIS", value_parser = parse_redis_url)]
    redis: Vec<String>,
    /// Replicas (of the sale's master) that must confirm every reservation, payment,
    /// cancellation and new sale before it is acknowledged (Redis `WAIT`, at most 500 ms; if
    /// fewer confirm, the client gets 503 naming the reservation). 0 trusts the master alone.
    #[arg(long, env = "TICKETRUSH_REDIS_WAIT_REPLICAS", default_value_t = 0, requires = "redis",
          value_parser = clap::value_parser!(u32).range(0..=REDIS_WAIT_REPLICAS_MAX))]
    redis_wait_replicas: u32,
    #[command(flatten)]
    redis_tls: RedisTlsArgs,
    /// Write orders to this PostgreSQL (postgres://USER@HOST:PORT/DB): the node runs an order
    /// writer that follows the sales' event streams in Redis (needs --redis).
    #[arg(long, env = "TICKETRUSH_POSTGRES", requires = "redis", value_parser = orders_cmd::parse_postgres_url)]
    postgres: Option<String>,
    /// PEM CA certificate(s) for a PostgreSQL URL with sslmode=verify-ca or verify-full
    /// (default: the system's roots).
    #[arg(long, env = "TICKETRUSH_POSTGRES_CA_FILE")]
    postgres_ca_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
struct CeilingArgs {
    /// Address to listen on.
    #[arg(long, env = "TICKETRUSH_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
struct GatewayArgs {
    #[command(flatten)]
    tier: TierArgs,
    #[command(flatten)]
    drain: DrainArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// The load-balancing tier, the same for `gateway` and `nginx-conf`.
#[derive(Args)]
struct TierArgs {
    /// Address to listen on.
    #[arg(long, env = "TICKETRUSH_LISTEN", default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// A node and its weight: IP:PORT=WEIGHT, weight 1 to 100 (repeatable).
    #[arg(long = "node", env = "TICKETRUSH_NODE", value_delimiter = ',', required = true,
          value_name = "ADDR=WEIGHT", value_parser = parse_node)]
    nodes: Vec<ticketrush_gateway::NodeSpec>,
    /// Failures within the fail timeout that take a node out of rotation (0: never), as nginx.
    #[arg(long, env = "TICKETRUSH_MAX_FAILS", default_value_t = gateway_limits::MAX_FAILS_DEFAULT,
          value_parser = clap::value_parser!(u32).range(0..=gateway_limits::MAX_FAILS_CEILING as i64))]
    max_fails: u32,
    /// Seconds a failed node stays out of rotation before it is tried again, as nginx.
    #[arg(long, env = "TICKETRUSH_FAIL_TIMEOUT_SECONDS",
          default_value_t = gateway_limits::FAIL_TIMEOUT_SECONDS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=gateway_limits::FAIL_TIMEOUT_SECONDS_CEILING))]
    fail_timeout_seconds: u64,
}

/// Certificates for `rediss://` (serve, audit, order-writer).
#[derive(Args)]
pub(crate) struct RedisTlsArgs {
    /// PEM certificate(s) of the CA a rediss:// server's certificate must chain to (instead of
    /// the system's roots).
    #[arg(long, env = "TICKETRUSH_REDIS_CA_FILE")]
    redis_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS with Redis (with --redis-key-file).
    #[arg(long, env = "TICKETRUSH_REDIS_CERT_FILE", requires = "redis_key_file")]
    redis_cert_file: Option<PathBuf>,
    /// PEM private key of --redis-cert-file.
    #[arg(long, env = "TICKETRUSH_REDIS_KEY_FILE", requires = "redis_cert_file")]
    redis_key_file: Option<PathBuf>,
}

impl RedisTlsArgs {
    /// The files' contents; an unreadable file is an error at start.
    pub(crate) fn load(&self) -> anyhow::Result<ticketrush_store::RedisTls> {
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        Ok(ticketrush_store::RedisTls {
            ca: self.redis_ca_file.as_ref().map(read).transpose()?,
            client: match (&self.redis_cert_file, &self.redis_key_file) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            },
        })
    }
}

#[derive(Args)]
struct DrainArgs {
    /// On SIGTERM (or Ctrl-C), answer /readyz with 503 for this many seconds while still
    /// serving, so load balancers stop routing here; then stop accepting and finish what is
    /// in flight. A second signal skips the wait.
    #[arg(long, env = "TICKETRUSH_DRAIN_SECONDS", default_value_t = DRAIN_SECONDS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(0..=DRAIN_SECONDS_MAX))]
    drain_seconds: u64,
}

/// Seconds `/readyz` says 503 before a stopping node or gateway closes its listener: a few
/// health-check intervals of a typical load balancer.
const DRAIN_SECONDS_DEFAULT: u64 = 5;
const DRAIN_SECONDS_MAX: u64 = 300;

/// Completes when the process should stop accepting: a signal, then `drain` seconds (during
/// which `begin` has marked it not ready), or a second signal.
async fn drained(drain: &DrainArgs, begin: impl FnOnce()) {
    shutdown_signal().await;
    begin();
    if drain.drain_seconds > 0 {
        tracing::info!(
            seconds = drain.drain_seconds,
            "draining: /readyz answers 503 while requests are still served"
        );
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(drain.drain_seconds)) => {},
            () = shutdown_signal() => tracing::info!("second signal: stopping now"),
        }
    }
}

#[derive(Args)]
struct RuntimeArgs {
    /// Worker threads (default: one per core).
    #[arg(long, env = "TICKETRUSH_WORKERS", value_parser = clap::value_parser!(u64).range(1..=256))]
    workers: Option<u64>,
    /// Log filter, e.g. info or ticketrush_server=debug.
    #[arg(long, env = "TICKETRUSH_LOG", default_value = "info", value_parser = parse_log)]
    log: String,
    /// `text` for people, `json` for log shippers (one object a line: timestamp, level,
    /// target, fields with the message).
    #[arg(
        long,
        env = "TICKETRUSH_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_sale(s: &str) -> Result<(SaleId, u64), String> {
    // Sale ids may contain ':', so the total is what follows the last one.
    let (id, total) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not ID:TOTAL"))?;
    let id = SaleId::parse(id).map_err(|e| e.to_string())?;
    let total: u64 = total
        .parse()
        .map_err(|_| format!("{total:?} is not a whole number of tickets"))?;
    if !(1..=ticketrush_core::sale::SALE_TOTAL_MAX).contains(&total) {
        return Err(format!(
            "the total must be between 1 and {}",
            ticketrush_core::sale::SALE_TOTAL_MAX
        ));
    }
    Ok((id, total))
}

fn parse_log(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("not a log filter: {e}"))
}

fn parse_node(s: &str) -> Result<ticketrush_gateway::NodeSpec, String> {
    ticketrush_gateway::NodeSpec::parse(s).map_err(|e| e.to_string())
}

fn parse_node_id(s: &str) -> Result<NodeId, String> {
    NodeId::parse(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::NginxConf(tier) = &cli.command {
        return nginx_conf(tier);
    }
    if let Command::Openapi = cli.command {
        let doc = ticketrush_server::openapi::document(&ticketrush_server::routes::openapi());
        print!("{doc}");
        return ExitCode::SUCCESS;
    }
    if let Command::Journal(args) = cli.command {
        init_logging("warn", LogFormat::Text);
        return match journal_cmd::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ticketrush: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime_args = match &cli.command {
        Command::Serve(a) => &a.runtime,
        Command::Ceiling(a) => &a.runtime,
        Command::Gateway(a) => &a.runtime,
        Command::NginxConf(_) | Command::Journal(_) | Command::Openapi => {
            unreachable!("handled above")
        }
        Command::Bench(a) => &a.runtime,
        Command::Audit(a) => &a.runtime,
        Command::OrderWriter(a) => &a.runtime,
        Command::Demo(a) => &a.runtime,
    };
    init_logging(&runtime_args.log, runtime_args.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = runtime_args.workers {
        builder.worker_threads(n as usize);
    }
    if let Command::Gateway(_) = cli.command {
        // The gateway's workers are threads of their own (`gateway`); this runtime only waits
        // for the signals.
        builder.worker_threads(1);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ticketrush: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(a) => serve(*a).await,
            Command::Ceiling(a) => ceiling(a).await,
            Command::Gateway(a) => gateway(a.tier, a.drain, a.runtime.workers).await,
            Command::NginxConf(_) | Command::Journal(_) | Command::Openapi => {
                unreachable!("handled above")
            }
            Command::Bench(a) => ticketrush_bench::command(a.bench).await,
            Command::Audit(a) => orders_cmd::audit(a).await,
            Command::OrderWriter(a) => orders_cmd::order_writer(a, shutdown_signal()).await,
            Command::Demo(a) => demo::demo(a, shutdown_signal()).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ticketrush: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let store = open_store(&args).await?;
    for (id, total) in &args.sales {
        ensure_sale(store.as_ref(), id, *total).await?;
    }
    if args.lease_seconds.is_some() {
        tracing::warn!("--lease-seconds has no effect any more: nodes hold no allotments");
    }
    let admin_token = admin_token(&args)?;
    let user_auth = user_auth(&args)?;
    let node_id = args.node_id.unwrap_or_else(|| {
        let r = ticketrush_server::node::new_random_id();
        NodeId::parse(&format!("node-{}", &r.as_str()[..6])).expect("valid node id")
    });
    let config = NodeConfig {
        node_id: node_id.clone(),
        admin_token,
        batch_size_max: args.batch_size as usize,
        batch_wait: Duration::from_micros(args.batch_wait_us),
        pending_max: args.pending_max as usize,
        default_sale: args.sales.first().map(|(id, _)| id.clone()),
        user_auth,
    };
    let app = ticketrush_server::Application::bind(config, store, args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = app.addr();
    let writer = match &args.postgres {
        Some(pg) => {
            let redis = redis_urls(&args.redis).expect("clap requires --redis with --postgres");
            let tls = args.redis_tls.load()?;
            let ca = orders_cmd::read_ca(args.postgres_ca_file.as_deref())?;
            Some(orders_cmd::start_writer(
                &redis,
                tls,
                pg,
                ca,
                &node_id,
                app.node(),
            ))
        }
        None => None,
    };
    // The one line on stdout: tests and scripts read the address from it.
    println!("ticketrush listening on http://{addr} as {node_id}");
    tracing::info!(%addr, node = %node_id, "serving");
    let node = app.node().clone();
    app.run(drained(&args.drain, move || node.begin_drain()))
        .await;
    tracing::info!("stopped");
    if let Some(w) = writer {
        w.stop().await;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum UserAuthMode {
    None,
    Jwt,
}

/// The admin token: the flag, the file's first line, or a new one written to
/// `DATA_DIR/admin-token` (0600) whose path, not value, is logged.
fn admin_token(args: &ServeArgs) -> anyhow::Result<String> {
    if let Some(t) = &args.admin_token {
        return Ok(t.clone());
    }
    if let Some(path) = &args.admin_token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the admin token file {}", path.display()))?;
        let t = text.lines().next().unwrap_or("").trim().to_string();
        anyhow::ensure!(
            !t.is_empty(),
            "the admin token file {} is empty",
            path.display()
        );
        return Ok(t);
    }
    let t = ticketrush_server::node::new_random_id().to_string();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let path = args.data_dir.join("admin-token");
    write_secret(&path, &t)?;
    tracing::warn!(file = %path.display(), "no --admin-token-file given; made an admin token for this run and wrote it there (mode 0600)");
    Ok(t)
}

/// Writes `secret` to `path`, readable by this user only.
fn write_secret(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{secret}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Proven users from the flags; a missing or unreadable key is an error at start.
fn user_auth(args: &ServeArgs) -> anyhow::Result<Option<Arc<ticketrush_server::auth::UserAuth>>> {
    use ticketrush_server::auth::{KeySource, UserAuth};
    if args.user_auth == UserAuthMode::None {
        anyhow::ensure!(
            args.jwt_secret_file.is_none() && args.jwt_public_key_file.is_none(),
            "--jwt-secret-file and --jwt-public-key-file need --user-auth jwt"
        );
        return Ok(None);
    }
    let read = |p: &PathBuf| {
        std::fs::read(p).with_context(|| format!("cannot read the JWT key file {}", p.display()))
    };
    let auth = match (&args.jwt_secret_file, &args.jwt_public_key_file) {
        (Some(p), None) => {
            let mut secret = read(p)?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            UserAuth::new(
                KeySource::Secret(&secret),
                args.jwt_issuer.as_deref(),
                args.jwt_audience.as_deref(),
            )
        }
        (None, Some(p)) => UserAuth::new(
            KeySource::PublicKeyPem(&read(p)?),
            args.jwt_issuer.as_deref(),
            args.jwt_audience.as_deref(),
        ),
        _ => anyhow::bail!("--user-auth jwt needs --jwt-secret-file or --jwt-public-key-file"),
    }
    .map_err(|e| anyhow::anyhow!(e))?;
    tracing::info!(algorithm = ?auth.algorithm(), "proven users: reservations need a JWT");
    Ok(Some(Arc::new(auth)))
}

/// The embedded store in `--data-dir`, or Redis with `--redis`.
async fn open_store(args: &ServeArgs) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(url) = &redis_urls(&args.redis) {
        let config = RedisConfig {
            orders: args.postgres.is_some(),
            wait_replicas: args.redis_wait_replicas,
            tls: args.redis_tls.load()?,
            ..RedisConfig::new(url.clone())
        };
        let store = RedisStore::connect(config)
            .await
            .with_context(|| format!("cannot reach redis at {}", redact_url(url)))?;
        tracing::info!(
            redis = %redact_url(url),
            cluster = store.is_cluster(),
            "redis store connected"
        );
        return Ok(Arc::new(store));
    }
    let (store, recovery) = ticketrush_orders::open_embedded(&args.data_dir)?;
    tracing::info!(
        data_dir = %args.data_dir.display(),
        events = recovery.events,
        torn_bytes = recovery.torn_bytes,
        leases_reclaimed = recovery.leases_reclaimed,
        "embedded store opened"
    );
    Ok(Arc::new(store))
}

/// The `--redis` URLs given (the flag repeated, or commas), as one comma-separated list.
pub(crate) fn redis_urls(given: &[String]) -> Option<String> {
    (!given.is_empty()).then(|| given.join(","))
}

/// A Redis URL, or several separated by commas: nodes of one Redis Cluster, each a seed the
/// cluster's map can be read from.
fn parse_redis_url(list: &str) -> Result<String, String> {
    for s in list.split(',') {
        if !(s.starts_with("redis://")
            || s.starts_with("rediss://")
            || s.starts_with("redis+unix://"))
        {
            return Err(format!("{s:?} is not a redis:// URL"));
        }
        redis::Client::open(s).map_err(|e| format!("not a redis URL: {e}"))?;
    }
    Ok(list.to_string())
}

/// URLs (comma-separated) without their passwords, for logs.
fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Creates the sale of `--sale ID:TOTAL` with the contract's defaults, unless it exists.
async fn ensure_sale(store: &dyn Store, id: &SaleId, total: u64) -> anyhow::Result<()> {
    let now: UnixMs = store.now();
    let spec = SaleSpec::new(id.clone(), None, total, None, None, now)
        .with_context(|| format!("--sale {id}:{total}"))?;
    // An existing sale needs no change, so a node whose store refuses changes (a full disk)
    // still starts, not ready, instead of exiting.
    if matches!(store.sale(id).await, Ok(Some(_))) {
        tracing::info!(sale = %id, "sale exists; keeping it as it is");
        return Ok(());
    }
    match store.create_sale(spec).await {
        Ok(_) => tracing::info!(sale = %id, total, "sale created"),
        Err(StoreError::Ledger(LedgerError::SaleExists)) => {
            tracing::info!(sale = %id, "sale exists; keeping it as it is")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create sale {id}")),
    }
    Ok(())
}

async fn ceiling(args: CeilingArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("ticketrush ceiling listening on http://{addr}");
    let router = ticketrush_server::routes::hello_world();
    ticketrush_server::http::serve(listener, router, shutdown_signal()).await;
    Ok(())
}

impl TierArgs {
    /// The gateway's configuration; a tier the flags cannot express (too many nodes) exits 2
    /// like any other bad flag.
    fn config(&self) -> ticketrush_gateway::GatewayConfig {
        let config = ticketrush_gateway::GatewayConfig {
            nodes: self.nodes.clone(),
            max_fails: self.max_fails,
            fail_timeout: Duration::from_secs(self.fail_timeout_seconds),
            response_timeout: gateway_limits::UPSTREAM_RESPONSE_TIMEOUT,
        };
        if let Err(e) = config.validate() {
            <Cli as clap::CommandFactory>::command()
                .error(clap::error::ErrorKind::ValueValidation, e)
                .exit();
        }
        config
    }
}

/// `ticketrush gateway`: one thread per worker (`--workers`, default one per core), each with
/// its own runtime, listener and pools (`Gateway::serve_threads`, nginx's worker model).
async fn gateway(tier: TierArgs, drain: DrainArgs, workers: Option<u64>) -> anyhow::Result<()> {
    let gateway = ticketrush_gateway::Gateway::new(tier.config())?;
    let threads = workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n as usize,
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = {
        let gateway = gateway.clone();
        let listen = tier.listen;
        tokio::task::spawn_blocking(move || gateway.serve_threads(listen, threads, stopped))
            .await?
            .with_context(|| format!("cannot listen on {}", tier.listen))?
    };
    let addr = serving.addr;
    println!("ticketrush gateway listening on http://{addr}");
    tracing::info!(%addr, nodes = tier.nodes.len(), threads, "gateway serving");
    let draining = gateway.clone();
    drained(&drain, move || draining.begin_drain()).await;
    let _ = stop.send(true);
    tokio::task::spawn_blocking(move || serving.join()).await?;
    Ok(())
}

fn nginx_conf(tier: &TierArgs) -> ExitCode {
    let config = tier.config();
    print!(
        "{}",
        ticketrush_gateway::nginx::render(&ticketrush_gateway::nginx::NginxTier {
            listen: tier.listen,
            nodes: &config.nodes,
            max_fails: config.max_fails,
            fail_timeout: config.fail_timeout,
        })
    );
    ExitCode::SUCCESS
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
