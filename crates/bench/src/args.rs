//! The generator's flags, validated where they are parsed.
//!
//! Every value is checked by a clap value parser, so a bad flag is refused before anything runs
//! and the binary exits 2 with clap's message naming the flag. Every flag has an explicit upper
//! bound (users, connections, retries, duration) so a typo cannot ask for an unbounded run; the
//! bounds are the constants below. `Args` is plain data with public fields, so `ticketrush
//! demo` can build one in code (see `Args::new`) and call `run` in-process.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, ValueEnum};
use ticketrush_core::{SaleId, UserId};

/// Most sales one run spreads its users over (the store's own bound).
pub const SALES_MAX: usize = 1_024;
/// Most distinct users one run simulates (the article has a million; this leaves room).
pub const USERS_MAX: u64 = 100_000_000;
/// Most keep-alive connections one run opens (each costs a socket, a task and ~70 KiB of
/// histogram).
pub const CONNECTIONS_MAX: u64 = 10_000;
/// Most retries of one user answered 429 (each waits its `Retry-After`).
pub const RETRIES_MAX: u32 = 10;
/// Longest run: it also bounds the per-second timeline of the chart (one slot per second).
pub const RUN_SECONDS_MAX: u64 = 3_600;
/// Longest a connection keeps trying a target that does not answer before it gives up.
pub const GIVE_UP_SECONDS_MAX: u64 = 60;
/// Longest wait for one answer.
pub const TIMEOUT_MS_MAX: u64 = 60_000;
/// Longest `Retry-After` the generator honours; a larger one is cut to this.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(10);
/// Most generator threads.
pub const THREADS_MAX: u64 = 256;
/// Most targets.
pub const TARGETS_MAX: usize = 1_024;

/// Which endpoint each user calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Endpoint {
    /// `POST /api/v1/sales/{sale}/reservations` with `{"user_id": …}` (201 wins).
    Reservations,
    /// The prototype's `GET /buy/ticket?sale_id=…&user_id=…` (200 with `code` 1 wins).
    BuyTicket,
}

/// One server to send requests to: `http://host:port`, no path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, as sent in the `Host` header and dialled.
    pub authority: String,
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        let uri: hyper::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("{s:?}: only http:// targets are supported"));
        }
        let Some(auth) = uri.authority() else {
            return Err(format!("{s:?} has no host"));
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "{s:?}: give the server only (http://host:port), no path"
            ));
        }
        let port = auth.port_u16().unwrap_or(80);
        Ok(Target {
            authority: format!("{}:{port}", auth.host()),
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// `ticketrush bench`: N distinct users each try to get a ticket once.
#[derive(ClapArgs, Clone, Debug)]
pub struct Args {
    /// A server to load, http://host:port (repeatable; connections are spread round-robin).
    #[arg(long = "target", env = "TICKETRUSH_TARGET", value_delimiter = ',', required = true,
          value_parser = Target::parse)]
    pub targets: Vec<Target>,
    /// The sale every user tries to buy from; several (comma-separated or repeated, at most
    /// 1,024): each user picks one by a skewed popularity (Zipf: the i-th is 1/i as popular as
    /// the first), so some sell out at once and others never.
    #[arg(long = "sale", env = "TICKETRUSH_BENCH_SALE", value_delimiter = ',', required = true,
          value_parser = parse_sale)]
    pub sales: Vec<SaleId>,
    /// Distinct users; each tries once (and again after a 429, up to --retries).
    #[arg(long, env = "TICKETRUSH_USERS", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..=USERS_MAX))]
    pub users: u64,
    /// Keep-alive connections, each sending one request at a time.
    #[arg(long, env = "TICKETRUSH_CONNECTIONS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=CONNECTIONS_MAX))]
    pub connections: u64,
    /// Generator threads, each with its own runtime and its share of the connections
    /// (default: one per core).
    #[arg(long, env = "TICKETRUSH_THREADS",
          value_parser = clap::value_parser!(u64).range(1..=THREADS_MAX))]
    pub threads: Option<u64>,
    /// Which endpoint the users call.
    #[arg(long, env = "TICKETRUSH_ENDPOINT", value_enum, default_value_t = Endpoint::Reservations)]
    pub endpoint: Endpoint,
    /// Share of the winners who pay at once (0–1); the others let their hold expire.
    #[arg(long, env = "TICKETRUSH_PAY_RATIO", default_value_t = 0.0, value_parser = parse_ratio)]
    pub pay_ratio: f64,
    /// Times a user answered 429 tries again, after the answer's Retry-After.
    #[arg(long, env = "TICKETRUSH_RETRIES", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(0..=RETRIES_MAX as i64))]
    pub retries: u32,
    /// Prefix of the user ids (user i is PREFIX + i); change it to run again on the same sale.
    #[arg(long, env = "TICKETRUSH_USER_PREFIX", default_value = "u", value_parser = parse_prefix)]
    pub user_prefix: String,
    /// Longest run in seconds; users not tried by then are reported as such.
    #[arg(long, env = "TICKETRUSH_MAX_SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=RUN_SECONDS_MAX))]
    pub max_seconds: u64,
    /// A connection whose target has not answered for this many seconds stops.
    #[arg(long, env = "TICKETRUSH_GIVE_UP_SECONDS", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..=GIVE_UP_SECONDS_MAX))]
    pub give_up_seconds: u64,
    /// Longest wait for one answer, in milliseconds (then it counts as an error).
    #[arg(long, env = "TICKETRUSH_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=TIMEOUT_MS_MAX))]
    pub timeout_ms: u64,
    /// Write the report as JSON to this file.
    #[arg(long, env = "TICKETRUSH_JSON")]
    pub json: Option<PathBuf>,
    /// Draw throughput, p99 latency and remaining stock per second as SVG to this file.
    #[arg(long, env = "TICKETRUSH_CHART")]
    pub chart: Option<PathBuf>,
    /// Do not read the sale before and after (for servers without the sales API, e.g. the
    /// hello-world ceiling); the check is then reported as skipped.
    #[arg(long, env = "TICKETRUSH_NO_CHECK")]
    pub no_check: bool,
    /// No progress bar (it is shown only when stderr is a terminal anyway).
    #[arg(long, env = "TICKETRUSH_QUIET")]
    pub quiet: bool,
    /// Sign a bearer token per request with this HS256 secret (the file's bytes, a trailing
    /// newline removed), `sub` the user: for nodes with `--user-auth jwt`.
    #[arg(long, env = "TICKETRUSH_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Go through the sale's waiting room: each user joins its queue, polls its place with
    /// the documented backoff and reserves with its admission token once admitted; the report
    /// shows the admission rate held, the line's order and the waiting times (the first sale
    /// only; `--endpoint`, `--pay-ratio` and `--chart` do not apply).
    #[arg(long, env = "TICKETRUSH_BENCH_QUEUE")]
    pub queue: bool,
}

impl Args {
    /// The first sale (the only one in a single-sale run).
    pub fn sale(&self) -> &SaleId {
        &self.sales[0]
    }

    /// Which sale user `user` tries: the first of one, or by popularity (see `--sale`).
    pub fn sale_of(&self, user: u64) -> usize {
        let n = self.sales.len();
        if n == 1 {
            return 0;
        }
        // A fixed hash of the user (splitmix64) to [0, 1), then the Zipf distribution's
        // inverse: the smallest i whose cumulative weight reaches it.
        let mut z = user.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let u = (z >> 11) as f64 / (1u64 << 53) as f64;
        let total: f64 = (1..=n).map(|i| 1.0 / i as f64).sum();
        let mut acc = 0.0;
        for i in 0..n {
            acc += 1.0 / (i + 1) as f64 / total;
            if u < acc {
                return i;
            }
        }
        n - 1
    }

    /// The defaults of the command line for these targets and sale, for callers in code.
    pub fn new(targets: Vec<Target>, sale: SaleId, users: u64) -> Args {
        Args {
            targets,
            sales: vec![sale],
            users,
            connections: 100,
            threads: None,
            endpoint: Endpoint::Reservations,
            pay_ratio: 0.0,
            retries: 3,
            user_prefix: "u".to_string(),
            max_seconds: 600,
            give_up_seconds: 3,
            timeout_ms: 10_000,
            json: None,
            chart: None,
            no_check: false,
            quiet: true,
            jwt_secret_file: None,
            queue: false,
        }
    }

    /// Checks the bounds again, for `Args` built in code rather than by clap.
    pub fn validate(&self) -> Result<(), String> {
        if self.targets.is_empty() || self.targets.len() > TARGETS_MAX {
            return Err(format!("give 1 to {TARGETS_MAX} targets"));
        }
        if self.sales.is_empty() || self.sales.len() > SALES_MAX {
            return Err(format!("give 1 to {SALES_MAX} sales"));
        }
        if !(1..=USERS_MAX).contains(&self.users) {
            return Err(format!("--users must be 1 to {USERS_MAX}"));
        }
        if !(1..=CONNECTIONS_MAX).contains(&self.connections) {
            return Err(format!("--connections must be 1 to {CONNECTIONS_MAX}"));
        }
        if self
            .threads
            .is_some_and(|t| !(1..=THREADS_MAX).contains(&t))
        {
            return Err(format!("--threads must be 1 to {THREADS_MAX}"));
        }
        if self.retries > RETRIES_MAX {
            return Err(format!("--retries must be 0 to {RETRIES_MAX}"));
        }
        if !(1..=RUN_SECONDS_MAX).contains(&self.max_seconds) {
            return Err(format!("--max-seconds must be 1 to {RUN_SECONDS_MAX}"));
        }
        if !(1..=GIVE_UP_SECONDS_MAX).contains(&self.give_up_seconds) {
            return Err(format!(
                "--give-up-seconds must be 1 to {GIVE_UP_SECONDS_MAX}"
            ));
        }
        if !(1..=TIMEOUT_MS_MAX).contains(&self.timeout_ms) {
            return Err(format!("--timeout-ms must be 1 to {TIMEOUT_MS_MAX}"));
        }
        parse_ratio(&self.pay_ratio.to_string())?;
        parse_prefix(&self.user_prefix)?;
        Ok(())
    }
}

fn parse_sale(s: &str) -> Result<SaleId, String> {
    SaleId::parse(s).map_err(|e| e.to_string())
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number between 0 and 1"))?;
    if !(0.0..=1.0).contains(&r) {
        return Err(format!("{s} is not between 0 and 1"));
    }
    Ok(r)
}

/// A prefix that, followed by the largest user number, is still a valid user id.
fn parse_prefix(s: &str) -> Result<String, String> {
    let longest = format!("{s}{}", USERS_MAX - 1);
    UserId::parse(&longest)
        .map(|_| s.to_string())
        .map_err(|e| format!("user ids {s:?}+number would be invalid: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn users_pick_sales_by_a_skewed_popularity() {
        let t = vec![Target::parse("http://127.0.0.1:1").unwrap()];
        let mut a = Args::new(t, SaleId::parse("s0").unwrap(), 100_000);
        assert_eq!(a.sale_of(7), 0, "one sale: always it");
        a.sales = (0..10)
            .map(|i| SaleId::parse(&format!("s{i}")).unwrap())
            .collect();
        let mut n = [0u32; 10];
        for u in 0..100_000 {
            n[a.sale_of(u)] += 1;
        }
        // Zipf over 10: the first about 34 %, the last about 3.4 %; each less than the one
        // before it (within noise), and every sale chosen.
        assert!((31_000..37_000).contains(&n[0]), "{n:?}");
        assert!((2_800..4_000).contains(&n[9]), "{n:?}");
        assert!(n[0] > n[1] && n[1] > n[3] && n[3] > n[9], "{n:?}");
        assert_eq!(
            a.sale_of(12_345),
            a.sale_of(12_345),
            "the same user, the same sale"
        );
    }

    use super::*;

    #[test]
    fn targets_are_http_host_port() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8080").unwrap().authority,
            "127.0.0.1:8080"
        );
        assert_eq!(Target::parse("http://h/").unwrap().authority, "h:80");
        assert!(Target::parse("https://h:1").is_err());
        assert!(Target::parse("http://h:1/api").is_err());
        assert!(Target::parse("not a url").is_err());
    }

    #[test]
    fn ratios_and_prefixes_are_bounded() {
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert!(parse_prefix("bad prefix").is_err());
        assert!(parse_prefix(&"x".repeat(60)).is_err());
        assert!(parse_prefix("run2-u").is_ok());
    }
}
