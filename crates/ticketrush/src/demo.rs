//! `ticketrush demo`: the article's flash sale end to end, in this one process.
//!
//! The article's architecture is a weighted load-balancing tier in front of selling nodes that
//! share one global stock. `demo` builds exactly that on loopback, from the same parts a
//! deployment uses, so what it shows is what production does rather than a simulation of it:
//!
//! - N nodes (`ticketrush_server::start` + `http::serve`, weights 1..N), each on its own free
//!   port. They share one global store: an `EmbeddedStore` in a fresh temp dir (one `Arc`;
//!   each node commits its own batches to it exactly as nodes do to Redis), or with `--redis`
//!   one `RedisStore` connection per node, as separate processes would have.
//! - The gateway (`ticketrush_gateway::Gateway`, nginx's smooth weighted round-robin) in front.
//! - The load generator (`ticketrush_bench::run`) against the gateway only, so every request
//!   crosses the tier; its `X-Node-Id` tally of the winners is what each node sold.
//! - After the run the tier is stopped (gateway, then nodes drained) and the
//!   sale is audited from the store itself (`Store::snapshot` + `audit_sale`), the same check
//!   and the same printout as `ticketrush audit` over a store.
//!
//! Everything the run starts is owned by [`Tier`] and the store by locals declared after the
//! data dir, so one path tears down in order whatever happened: `Tier::stop` always runs after
//! the load (also when it failed or was interrupted), the stores drop before the data dir
//! (`EmbeddedStore`'s drop flushes and joins its journal writer), and the dir's guard removes
//! it last. Every sale id is fresh (`demo-` and random characters), so reruns on one Redis or
//! one `--data-dir` never collide.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use ticketrush_bench::args::{CONNECTIONS_MAX, RUN_SECONDS_MAX, USERS_MAX};
use ticketrush_bench::report::thousands;
use ticketrush_bench::{Report, Stopped, Target};
use ticketrush_core::sale::SALE_TOTAL_MAX;
use ticketrush_core::{AuditReport, NodeId, SaleId, SaleSpec};
use ticketrush_gateway::{Gateway, GatewayConfig, NodeSpec};
use ticketrush_orders::{EmbeddedRows, OrderRows};
use ticketrush_server::NodeConfig;
use ticketrush_store::{EmbeddedStore, RedisConfig, RedisStore, Store};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::RuntimeArgs;

/// Most nodes one demo starts: each is a full node (tasks, pools, a port) in this process, and
/// sixteen already show the spread on a small machine.
pub const DEMO_NODES_MAX: u64 = 16;

#[derive(Args)]
pub struct DemoArgs {
    /// Distinct simulated users; each tries once to reserve a ticket.
    #[arg(long, env = "TICKETRUSH_USERS", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..=USERS_MAX))]
    users: u64,
    /// Tickets on sale (per sale, with --sales).
    #[arg(long, env = "TICKETRUSH_TICKETS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=SALE_TOTAL_MAX))]
    tickets: u64,
    /// Sales (trains) on sale at once, 1–1,024: each user picks one by a skewed popularity
    /// (the i-th is 1/i as popular as the first), so some sell out in seconds and others never.
    #[arg(long, env = "TICKETRUSH_SALES", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=1_024))]
    sales: u64,
    /// Selling nodes; node i has weight i in the gateway.
    #[arg(long, env = "TICKETRUSH_NODES", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=DEMO_NODES_MAX))]
    nodes: u64,
    /// Keep-alive connections of the load generator to the gateway.
    #[arg(long, env = "TICKETRUSH_CONNECTIONS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=CONNECTIONS_MAX))]
    connections: u64,
    /// Run over this Redis (redis://HOST:PORT) instead of the embedded store: one connection
    /// per node, as separate processes would have. The sale's keys stay in Redis.
    #[arg(long, env = "TICKETRUSH_REDIS", value_parser = crate::parse_redis_url,
          conflicts_with = "data_dir")]
    redis: Vec<String>,
    /// Keep the embedded store's journal in this directory (default: a fresh temp dir,
    /// removed at the end).
    #[arg(long, env = "TICKETRUSH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Write the load generator's report as JSON to this file.
    #[arg(long, env = "TICKETRUSH_JSON")]
    json: Option<PathBuf>,
    /// Draw throughput, p99 latency and remaining stock per second as SVG to this file.
    #[arg(long, env = "TICKETRUSH_CHART")]
    chart: Option<PathBuf>,
    /// Longest run of the simulated users, in seconds; a run cut short fails.
    #[arg(long, env = "TICKETRUSH_MAX_SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=RUN_SECONDS_MAX))]
    max_seconds: u64,
    /// After the run, keep the nodes and the gateway up (their dashboards too) until Ctrl-C;
    /// then stop them and audit.
    #[arg(long, env = "TICKETRUSH_HOLD")]
    hold: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Runs the demo; an error (exit 1) when the audit or the generator's check failed, the run
/// was cut short, or `interrupt` completed first. Everything started is stopped either way.
pub async fn demo(args: DemoArgs, interrupt: impl Future<Output = ()>) -> anyhow::Result<()> {
    let sale = fresh_sale_id("demo");
    // With --sales N: N sales under one fresh prefix, the most popular first.
    let sales: Vec<SaleId> = if args.sales == 1 {
        vec![sale.clone()]
    } else {
        (1..=args.sales)
            .map(|i| SaleId::parse(&format!("{sale}-{i}")).expect("a fresh id plus a number"))
            .collect()
    };
    let sale = sales[0].clone();
    // Declared before the stores, so it is dropped (and the dir removed) after them.
    let data_dir = match &crate::redis_urls(&args.redis) {
        Some(_) => None,
        None => Some(DataDir::new(args.data_dir.clone())?),
    };
    let stores = Stores::open(&args, data_dir.as_ref()).await?;
    for s in &sales {
        create_sale(stores.admin.as_ref(), s, args.tickets).await?;
    }

    let mut tier = Tier::default();
    let mut interrupt = std::pin::pin!(interrupt);
    let run = async {
        let gateway = tier.start(&stores, &sale, args.nodes as u32).await?;
        print_header(&args, &sale, &stores.label, &tier, gateway);
        let report = tokio::select! {
            report = ticketrush_bench::run(bench_args(&args, &sales, gateway)) => report?,
            () = &mut interrupt => bail!("interrupted"),
        };
        if args.hold {
            println!("{report}");
            println!(
                "run finished; holding for a look: http://{gateway}/dashboard (Ctrl-C stops the \
                 tier, then the audit runs)"
            );
            (&mut interrupt).await;
        }
        Ok(report)
    }
    .await;
    tier.stop().await;
    let report = run?;

    let mut audits = Vec::with_capacity(sales.len());
    for s in &sales {
        let table = stores.embedded.as_deref().map(EmbeddedRows);
        let table = table.as_ref().map(|t| t as &dyn OrderRows);
        let a = ticketrush_orders::audit(stores.admin.as_ref(), table, s, ORDERS_CATCH_UP_WAIT)
            .await
            .with_context(|| format!("cannot audit sale {s}"))?;
        audits.push(a);
    }
    if !args.hold {
        println!("{report}");
    }
    println!();
    print_nodes(&tier.nodes, &report);
    println!();
    if sales.len() == 1 {
        crate::orders_cmd::print_report(&sale, &audits[0]);
    } else {
        print_sales(&sales, &audits, args.tickets);
    }
    let failed: Vec<&SaleId> = sales
        .iter()
        .zip(&audits)
        .filter(|(_, a)| !a.passed())
        .map(|(s, _)| s)
        .collect();
    for (s, a) in sales.iter().zip(&audits).filter(|(_, a)| !a.passed()) {
        crate::orders_cmd::print_report(s, a);
    }
    let violations: u64 = audits.iter().map(|a| a.violation_count).sum();
    verdict(&args, &report, failed.len(), violations)
}

/// Each sale (the most popular first): sold of its tickets, and the audit; past 20 sales, the
/// first 10 and the last 5, and a summary of all.
fn print_sales(sales: &[SaleId], audits: &[AuditReport], tickets: u64) {
    println!("sales (the most popular first):");
    let line = |s: &SaleId, a: &AuditReport| {
        let sold = a.reserved + a.paid;
        let state = if sold == tickets { "sold out" } else { "open" };
        let verdict = if a.passed() {
            "audit passed"
        } else {
            "AUDIT FAILED"
        };
        println!(
            "  {:<28} sold {:>9} of {:>9}  {state:<8}  {verdict}",
            s.as_str(),
            thousands(sold),
            thousands(tickets)
        );
    };
    for (i, (s, a)) in sales.iter().zip(audits).enumerate() {
        if sales.len() <= 20 || i < 10 || i >= sales.len() - 5 {
            line(s, a);
        } else if i == 10 {
            println!("  … {} more", sales.len() - 15);
        }
    }
    let sold_out = audits
        .iter()
        .filter(|a| a.reserved + a.paid == tickets)
        .count();
    let passed = audits.iter().filter(|a| a.passed()).count();
    println!(
        "{} sales: {sold_out} sold out, {} still open; audit passed for {passed} of {}",
        sales.len(),
        sales.len() - sold_out,
        sales.len()
    );
    if passed == sales.len() {
        println!("PASSED");
    }
}

/// A sale id no earlier run used: `PREFIX-` and 8 random characters.
fn fresh_sale_id(prefix: &str) -> SaleId {
    let r = ticketrush_server::node::new_random_id();
    SaleId::parse(&format!("{prefix}-{}", &r.as_str()[..8])).expect("a short valid id")
}

/// The embedded store's directory: a fresh temp dir removed when dropped, or the user's.
struct DataDir {
    path: PathBuf,
    remove_on_drop: bool,
}

impl DataDir {
    fn new(given: Option<PathBuf>) -> anyhow::Result<DataDir> {
        if let Some(path) = given {
            return Ok(DataDir {
                path,
                remove_on_drop: false,
            });
        }
        let r = ticketrush_server::node::new_random_id();
        let path = std::env::temp_dir().join(format!(
            "ticketrush-demo-{}-{}",
            std::process::id(),
            &r.as_str()[..8]
        ));
        std::fs::create_dir(&path)
            .with_context(|| format!("cannot create the temp dir {}", path.display()))?;
        Ok(DataDir {
            path,
            remove_on_drop: true,
        })
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.remove_on_drop {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                tracing::warn!(dir = %self.path.display(), error = %e, "could not remove the temp dir");
            }
        }
    }
}

/// The global store, as each node and the demo itself (sale creation, audit) reach it.
struct Stores {
    admin: Arc<dyn Store>,
    /// One per node: the same `Arc` embedded, an own connection with Redis.
    per_node: Vec<Arc<dyn Store>>,
    /// Where the stock lives, for the header.
    label: String,
    /// The embedded store itself (not with --redis): the audit also checks its orders table.
    embedded: Option<Arc<EmbeddedStore>>,
}

impl Stores {
    async fn open(args: &DemoArgs, dir: Option<&DataDir>) -> anyhow::Result<Stores> {
        if let Some(url) = &crate::redis_urls(&args.redis) {
            let shown = crate::redact_url(url);
            let connect = || async {
                let store = RedisStore::connect(RedisConfig::new(url.clone()))
                    .await
                    .with_context(|| format!("cannot reach redis at {shown}"))?;
                anyhow::Ok(Arc::new(store) as Arc<dyn Store>)
            };
            let admin = connect().await?;
            let mut per_node = Vec::with_capacity(args.nodes as usize);
            for _ in 0..args.nodes {
                per_node.push(connect().await?);
            }
            return Ok(Stores {
                admin,
                per_node,
                label: format!("redis at {shown}, one connection per node"),
                embedded: None,
            });
        }
        let dir = dir.expect("the embedded store has a data dir");
        let (store, _) = ticketrush_orders::open_embedded(&dir.path)
            .with_context(|| format!("cannot open the store in {}", dir.path.display()))?;
        let embedded = Arc::new(store);
        let store: Arc<dyn Store> = embedded.clone();
        Ok(Stores {
            embedded: Some(embedded),
            per_node: vec![store.clone(); args.nodes as usize],
            admin: store,
            label: format!(
                "embedded, shared by every node, journal in {}{}",
                dir.path.display(),
                if dir.remove_on_drop {
                    " (removed at the end)"
                } else {
                    ""
                }
            ),
        })
    }
}

/// Creates the sale with the contract's defaults: 1 ticket per user, a 900 s hold (longer
/// than any demo run, so no hold expires and the generator's check is exact).
async fn create_sale(store: &dyn Store, id: &SaleId, tickets: u64) -> anyhow::Result<()> {
    let name = format!("{tickets} tickets, the article's flash sale");
    let spec = SaleSpec::new(id.clone(), Some(name), tickets, None, None, store.now())
        .with_context(|| format!("sale {id} of {tickets} tickets"))?;
    store
        .create_sale(spec)
        .await
        .with_context(|| format!("cannot create sale {id}"))?;
    Ok(())
}

/// A task serving until its stop sender fires (or is dropped), then finishing its drain.
struct Served {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Served {
    async fn stop(self, what: &str) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "{what} did not stop cleanly");
        }
    }
}

/// A node of the tier, as the summary names it.
struct DemoNode {
    id: NodeId,
    weight: u32,
    addr: SocketAddr,
}

/// The nodes and the gateway this run started; `stop` stops whatever was started.
#[derive(Default)]
struct Tier {
    nodes: Vec<DemoNode>,
    /// The nodes, serving, in the order of `nodes`; emptied by `stop`.
    serving: Vec<ticketrush_server::Running>,
    gateway: Option<Served>,
}

impl Tier {
    /// Starts node 1..=`count` (weight = its number) and the gateway; answers its address.
    async fn start(
        &mut self,
        stores: &Stores,
        sale: &SaleId,
        count: u32,
    ) -> anyhow::Result<SocketAddr> {
        for i in 1..=count {
            let store = stores.per_node[(i - 1) as usize].clone();
            let (node, served) = start_node(i, store, sale).await?;
            self.nodes.push(node);
            self.serving.push(served);
        }
        let specs = self
            .nodes
            .iter()
            .map(|n| NodeSpec {
                addr: n.addr,
                weight: n.weight,
            })
            .collect();
        let gateway = Gateway::new(GatewayConfig::new(specs))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen on a loopback port for the gateway")?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            gateway
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await;
        });
        self.gateway = Some(Served { stop, task });
        Ok(addr)
    }

    /// The gateway first (no new requests reach the nodes), then the nodes: each drains its
    /// connections and stops its background tasks. All nodes are
    /// signalled before any is waited for, so their drains overlap.
    async fn stop(&mut self) {
        if let Some(g) = self.gateway.take() {
            g.stop("the gateway").await;
        }
        let mut serving = std::mem::take(&mut self.serving);
        for s in &mut serving {
            s.begin_stop();
        }
        for s in serving {
            s.stop().await;
        }
    }
}

async fn start_node(
    i: u32,
    store: Arc<dyn Store>,
    sale: &SaleId,
) -> anyhow::Result<(DemoNode, ticketrush_server::Running)> {
    let id = NodeId::parse(&format!("node-{i}")).expect("a valid node id");
    let config = NodeConfig {
        node_id: id.clone(),
        // Nobody creates sales over HTTP in the demo; a random token keeps the endpoint shut.
        admin_token: ticketrush_server::node::new_random_id().to_string(),
        batch_size_max: ticketrush_server::limits::BATCH_SIZE_DEFAULT,
        batch_wait: ticketrush_server::limits::BATCH_WAIT_DEFAULT,
        pending_max: ticketrush_server::limits::PENDING_DEFAULT,
        default_sale: Some(sale.clone()),
        user_auth: None,
    };
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let app = ticketrush_server::Application::bind(config, store, loopback)
        .await
        .with_context(|| format!("cannot listen on a loopback port for node {i}"))?;
    let addr = app.addr();
    Ok((
        DemoNode {
            id,
            weight: i,
            addr,
        },
        app.spawn(),
    ))
}

/// Longest the embedded audit waits for the orders table to hold every durable change.
const ORDERS_CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The audit of `ticketrush audit`, from the store itself, on the now quiet sale.
fn bench_args(args: &DemoArgs, sales: &[SaleId], gateway: SocketAddr) -> ticketrush_bench::Args {
    let target = Target {
        authority: gateway.to_string(),
    };
    let mut b = ticketrush_bench::Args::new(vec![target], sales[0].clone(), args.users);
    b.sales = sales.to_vec();
    b.connections = args.connections;
    b.max_seconds = args.max_seconds;
    b.json = args.json.clone();
    b.chart = args.chart.clone();
    // The progress bar (drawn only when stderr is a terminal).
    b.quiet = false;
    b
}

fn print_header(args: &DemoArgs, sale: &SaleId, store: &str, tier: &Tier, gateway: SocketAddr) {
    let what = if args.sales == 1 {
        format!("sale {sale}, {} tickets", thousands(args.tickets))
    } else {
        format!(
            "{} sales from {sale}, {} tickets each",
            args.sales,
            thousands(args.tickets)
        )
    };
    println!(
        "demo: {what}, {} users over {} connections",
        thousands(args.users),
        args.connections
    );
    println!("  store    {store}");
    for n in &tier.nodes {
        println!(
            "  {:<8} http://{} weight {}",
            n.id.as_str(),
            n.addr,
            n.weight
        );
    }
    println!("  gateway  http://{gateway} (smooth weighted round-robin, as nginx)");
    println!("  dashboard http://{gateway}/dashboard (each node has its own at /dashboard)");
}

/// What each node sold (the `X-Node-Id` of every win), beside the share its weight asks for.
fn print_nodes(nodes: &[DemoNode], report: &Report) {
    let weight_sum: u32 = nodes.iter().map(|n| n.weight).sum();
    let sold_sum = report.succeeded.max(1);
    let mut by_node: BTreeMap<&str, u64> = report
        .by_node
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    println!("sold by node (X-Node-Id of each 201):");
    for n in nodes {
        let sold = by_node.remove(n.id.as_str()).unwrap_or(0);
        println!(
            "  {:<8} weight {:>2} ({:>5.1} %)  sold {:>11} ({:>5.1} %)",
            n.id.as_str(),
            n.weight,
            100.0 * f64::from(n.weight) / f64::from(weight_sum),
            thousands(sold),
            100.0 * sold as f64 / sold_sum as f64
        );
    }
    // Winners answered by a name we did not start would be a bug; show them rather than hide.
    for (name, sold) in by_node {
        println!(
            "  {name:<29}sold {:>11} (not a node of this demo)",
            thousands(sold)
        );
    }
    println!("  {:<29}sold {:>11}", "total", thousands(report.succeeded));
}

/// The last line, and the exit status: the audit, the generator's check, a complete run.
fn verdict(
    args: &DemoArgs,
    report: &Report,
    audits_failed: usize,
    violations: u64,
) -> anyhow::Result<()> {
    let sold = report.succeeded;
    let summary = format!(
        "{} of {} tickets sold to {} users in {:.2} s: {} req/s, p99 {:.3} ms",
        thousands(sold),
        thousands(args.tickets * args.sales),
        thousands(args.users),
        report.duration_s,
        thousands(report.rps.round() as u64),
        report.latency_ms.p99
    );
    let failure = if audits_failed > 0 {
        Some(format!(
            "the audit found {violations} violation(s) in {audits_failed} sale(s)"
        ))
    } else if !report.passed() {
        Some(format!(
            "the generator's check failed: {}",
            report.check.notes.first().map_or("", String::as_str)
        ))
    } else if report.stopped != Stopped::Completed {
        Some(format!("the run did not complete ({:?})", report.stopped))
    } else {
        None
    };
    match failure {
        None => {
            println!("demo passed: {summary}");
            Ok(())
        }
        Some(why) => {
            println!("demo FAILED: {summary}");
            bail!("demo failed: {why}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sale_ids_are_fresh_and_valid() {
        let (a, b) = (fresh_sale_id("demo"), fresh_sale_id("demo"));
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("demo-") && a.as_str().len() == 13);
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
