//! One keep-alive connection's task: the generator's hot path.
//!
//! Each task owns everything it writes per request — its histogram, its counts, its per-second
//! counts, its retry queue, its `X-Node-Id` tally — and the results are merged once at the end,
//! so requests take no lock and write no shared cache line. What is shared is touched rarely:
//! users are claimed from one atomic counter in chunks of `CLAIM_CHUNK`; the progress cell is
//! this task's own padded atomic (a plain store); the timeline is added to once per second.
//!
//! A user answered 429 goes into this task's retry queue (bounded by `RETRY_QUEUE_MAX`; when it
//! is full the task waits for the queue rather than claim new users) and is tried again after
//! the answer's `Retry-After`, at most `--retries` times. A transport failure or timeout is an
//! error, and the connection is opened again with a backoff; a task whose target has not
//! answered anything for `--give-up-seconds` stops, so a dead target ends the run by itself.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Method, Uri};
use ticketrush_gateway::h1::{self, Chunked, Decoded, Framing, Parsed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::args::{Args, Endpoint, Target, RETRY_AFTER_MAX};
use crate::http::{BODY_BYTES_MAX, CONNECT_TIMEOUT, READ_BUF_BYTES};
use crate::timeline::{SecondCounts, Timeline};

/// Users claimed from the shared counter at a time: one atomic add per 16 users.
const CLAIM_CHUNK: u64 = 16;
/// Most users of one task waiting to be retried after a 429.
const RETRY_QUEUE_MAX: usize = 1_024;
/// First and longest wait before opening a connection again after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Longest sleep while waiting for a retry, so the stop flag is seen promptly.
const IDLE_STEP: Duration = Duration::from_millis(100);
/// Latency histogram range in microseconds (1 µs to 60 s, the longest `--timeout-ms`), 3
/// significant digits. Counts are `u32`: one task never makes 4 billion requests.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// A progress counter on its own cache line, written by one task only.
#[repr(align(128))]
#[derive(Default)]
pub struct Padded(pub AtomicU64);

/// What the connection tasks share.
pub struct Shared {
    pub args: Args,
    pub users: u64,
    pub next_user: Padded,
    /// Set when `--max-seconds` has passed: tasks finish their request and stop.
    pub stop: AtomicBool,
    pub started: Instant,
    pub timeline: Timeline,
    /// Requests answered or failed, per task (read by the progress bar).
    pub progress: Box<[Padded]>,
    /// With `--jwt-secret-file`: the key every request's bearer token is minted with (HS256,
    /// `sub` the user, valid for an hour), for nodes with proven users.
    pub tokens: Option<jsonwebtoken::EncodingKey>,
}

/// A bearer token for `user` (`Authorization` value), signed with `key`.
pub fn bearer(key: &jsonwebtoken::EncodingKey, prefix: &str, user: u64) -> HeaderValue {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let mut sub = Vec::with_capacity(24);
    push_user(&mut sub, prefix, user);
    let sub = std::str::from_utf8(&sub).expect("user ids are ASCII");
    let exp = jsonwebtoken::get_current_timestamp() + 3_600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub, exp },
        key,
    )
    .expect("HS256 signing cannot fail");
    HeaderValue::from_str(&format!("Bearer {token}")).expect("a JWT is a valid header value")
}

/// Everything one task counted; merged by `run`.
pub struct ConnResult {
    pub latency_us: Histogram<u32>,
    pub counts: Counts,
    /// Successes per `X-Node-Id`: a short list (a handful of nodes), the last hit first.
    pub by_node: Vec<(HeaderValue, u64)>,
    /// This task stopped because its target did not answer for `--give-up-seconds`.
    pub gave_up_on_target: bool,
    /// When, since the run started, this task's last success was answered.
    pub last_success: Option<Duration>,
    /// Per sale (in `--sale` order): when (µs since the start) this task sent its last
    /// request that went on to win.
    pub last_win_sent_us: Vec<Option<u64>>,
    /// When (µs since the start) each `sold_out` answer arrived, and for which sale, earliest
    /// first; only the first `times_max` are kept (the early ones matter, see `lib.rs`).
    pub sold_out_at_us: Vec<(u64, u32)>,
    /// `sold_out` answers per sale.
    pub sold_out_by_sale: Vec<u64>,
    /// When each win was answered (µs since the start); past `times_max` the older half is
    /// dropped, since the sale's tail is what is measured from them.
    pub won_at_us: Vec<u64>,
    /// Bound of both lists above, per task.
    pub times_max: usize,
    /// The winners' latencies (µs), an even sample: every `wins.stride`-th win of this task.
    pub wins: WinSample,
}

/// An even sample of one task's win latencies in at most `max` entries: every win until it is
/// full, then every other one kept and every second win taken from then on, and so on, so the
/// sample spans the whole run evenly. Merged with each entry weighing `stride` wins.
pub struct WinSample {
    pub latency_us: Vec<u32>,
    pub stride: u64,
    seen: u64,
    max: usize,
}

impl WinSample {
    pub fn new(max: usize) -> WinSample {
        WinSample {
            latency_us: Vec::new(),
            stride: 1,
            seen: 0,
            max: max.max(2),
        }
    }

    pub fn record(&mut self, latency_us: u64) {
        self.seen += 1;
        if !self.seen.is_multiple_of(self.stride) {
            return;
        }
        if self.latency_us.len() >= self.max {
            let mut i: usize = 0;
            self.latency_us.retain(|_| {
                i += 1;
                i.is_multiple_of(2)
            });
            self.stride *= 2;
            if !self.seen.is_multiple_of(self.stride) {
                return;
            }
        }
        self.latency_us
            .push(u32::try_from(latency_us).unwrap_or(u32::MAX));
    }
}

/// Most answer times one run keeps in all, shared out over its connections.
pub const ANSWER_TIMES_MAX: usize = 8 * 1024 * 1024;

/// Outcome counts. `requests` is the sum of the four outcomes.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Counts {
    pub succeeded: u64,
    pub sold_out: u64,
    pub other: u64,
    pub errors: u64,
    /// 429 answers (counted in `other` too).
    pub overloaded: u64,
    /// Users answered 429 more than `--retries` times.
    pub users_gave_up: u64,
    /// Users claimed (tried at least once).
    pub users_tried: u64,
    /// Users left in a retry queue when the task stopped.
    pub users_abandoned: u64,
    pub pay_attempted: u64,
    pub paid: u64,
    /// Payments answered with something other than 200.
    pub pay_refused: u64,
    /// Payments with no answer (they may or may not have happened).
    pub pay_unknown: u64,
}

impl Counts {
    pub fn requests(&self) -> u64 {
        self.succeeded + self.sold_out + self.other + self.errors
    }

    pub fn add(&mut self, o: &Counts) {
        self.succeeded += o.succeeded;
        self.sold_out += o.sold_out;
        self.other += o.other;
        self.errors += o.errors;
        self.overloaded += o.overloaded;
        self.users_gave_up += o.users_gave_up;
        self.users_tried += o.users_tried;
        self.users_abandoned += o.users_abandoned;
        self.pay_attempted += o.pay_attempted;
        self.paid += o.paid;
        self.pay_refused += o.pay_refused;
        self.pay_unknown += o.pay_unknown;
    }
}

#[derive(Clone, Copy)]
struct Job {
    user: u64,
    attempt: u32,
}

enum Next {
    Go(Job),
    WaitUntil(Instant),
    Done,
}

enum Outcome {
    Won,
    SoldOut,
    Overloaded(Duration),
    Other,
    Error,
}

struct Answer {
    status: u16,
    node: Option<HeaderValue>,
    retry_after: Duration,
    body: Bytes,
}

/// The connection task's state: all of it owned by the task.
struct Conn<'a> {
    shared: &'a Shared,
    index: usize,
    target: &'a Target,
    /// The reservation path of each sale.
    reserve_paths: Vec<String>,
    timeout: Duration,
    give_up: Duration,
    claimed: std::ops::Range<u64>,
    retries: VecDeque<(Instant, Job)>,
    pay_credit: f64,
    requests: u64,
    second: SecondCounts,
    out: ConnResult,
}

/// Runs connection `index` against its target until the users run out, the run is stopped,
/// or the target has not answered for `--give-up-seconds`.
pub async fn run_connection(shared: std::sync::Arc<Shared>, index: usize) -> ConnResult {
    let args = &shared.args;
    let target = &args.targets[index % args.targets.len()];
    let reserve_paths: Vec<String> = args
        .sales
        .iter()
        .map(|s| {
            let path = format!("/api/v1/sales/{s}/reservations");
            path.parse::<Uri>().expect("sale ids are valid in a path");
            path
        })
        .collect();
    // This task's share of the answer times the run keeps (and of its wins' latencies).
    let times_max = (ANSWER_TIMES_MAX / args.connections.max(1) as usize).max(1024);
    let mut conn = Conn {
        shared: &shared,
        index,
        target,
        reserve_paths,
        timeout: Duration::from_millis(args.timeout_ms),
        give_up: Duration::from_secs(args.give_up_seconds),
        claimed: 0..0,
        retries: VecDeque::new(),
        pay_credit: 0.0,
        requests: 0,
        second: SecondCounts::new(),
        out: ConnResult {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("valid histogram bounds"),
            counts: Counts::default(),
            by_node: Vec::new(),
            gave_up_on_target: false,
            last_success: None,
            last_win_sent_us: vec![None; args.sales.len()],
            sold_out_at_us: Vec::new(),
            sold_out_by_sale: vec![0; args.sales.len()],
            won_at_us: Vec::new(),
            times_max,
            wins: WinSample::new(times_max),
        },
    };
    conn.drive().await;
    conn.second.flush(&shared.timeline);
    conn.out.counts.users_abandoned = conn.retries.len() as u64;
    conn.out
}

impl Conn<'_> {
    async fn drive(&mut self) {
        let mut link: Option<Link> = None;
        let mut last_answer = Instant::now();
        let mut backoff = BACKOFF_MIN;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let job = match self.next_job(Instant::now()) {
                Next::Go(job) => job,
                Next::WaitUntil(t) => {
                    tokio::time::sleep_until(t.min(Instant::now() + IDLE_STEP).into()).await;
                    continue;
                }
                Next::Done => return,
            };
            let l = match link.as_mut() {
                Some(l) => l,
                None => match Link::open(self.target, self.timeout).await {
                    Ok(l) => link.insert(l),
                    Err(_) => {
                        // The user's request could not even be sent: an error, as wrk counts
                        // a failed connect.
                        self.count_failed(Instant::now());
                        if last_answer.elapsed() >= self.give_up {
                            self.out.gave_up_on_target = true;
                            return;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                },
            };
            let answered = self.attempt(l, job).await;
            if answered {
                last_answer = Instant::now();
                backoff = BACKOFF_MIN;
                if l.spent {
                    link = None;
                }
            } else {
                link = None;
                if last_answer.elapsed() >= self.give_up {
                    self.out.gave_up_on_target = true;
                    return;
                }
            }
        }
    }

    /// A due retry first, then a new user (unless the retry queue is full), else wait.
    fn next_job(&mut self, now: Instant) -> Next {
        if let Some(&(due, job)) = self.retries.front() {
            if due <= now {
                self.retries.pop_front();
                return Next::Go(job);
            }
        }
        if self.retries.len() < RETRY_QUEUE_MAX {
            if let Some(user) = self.claim() {
                return Next::Go(Job { user, attempt: 0 });
            }
        }
        match self.retries.front() {
            Some(&(due, _)) => Next::WaitUntil(due),
            None => Next::Done,
        }
    }

    fn claim(&mut self) -> Option<u64> {
        if self.claimed.is_empty() {
            let first = self
                .shared
                .next_user
                .0
                .fetch_add(CLAIM_CHUNK, Ordering::Relaxed);
            if first >= self.shared.users {
                return None;
            }
            self.claimed = first..(first + CLAIM_CHUNK).min(self.shared.users);
        }
        self.out.counts.users_tried += 1;
        self.claimed.next()
    }

    /// One user's request (and its payment, if it won and is due to pay). Answers whether the
    /// target answered (false: the connection is broken and must be opened again).
    async fn attempt(&mut self, link: &mut Link, job: Job) -> bool {
        let method = self.write_request(&mut link.out, job.user);
        let sent = Instant::now();
        let answer = link.exchange(&method, self.timeout).await;
        let done = Instant::now();
        let Some(answer) = answer else {
            self.count_failed(done);
            return false;
        };
        let latency_us = done.duration_since(sent).as_micros() as u64;
        self.out.latency_us.saturating_record(latency_us.max(1));
        let outcome = classify(self.shared.args.endpoint, &answer);
        self.count_answered(&outcome, done, latency_us, &answer);
        let sale = self.shared.args.sale_of(job.user);
        self.note_time(&outcome, sale, sent, done);
        match outcome {
            Outcome::Overloaded(after) => {
                if job.attempt < self.shared.args.retries {
                    let next = Job {
                        user: job.user,
                        attempt: job.attempt + 1,
                    };
                    self.retries.push_back((done + after, next));
                } else {
                    self.out.counts.users_gave_up += 1;
                }
            }
            Outcome::Won if self.due_to_pay() => return self.pay(link, job.user, &answer).await,
            _ => {}
        }
        true
    }

    fn count_answered(&mut self, o: &Outcome, done: Instant, latency_us: u64, a: &Answer) {
        let second = self.second_of(done);
        self.second.record(
            &self.shared.timeline,
            second,
            latency_us,
            matches!(o, Outcome::Won),
        );
        if let Outcome::Won = o {
            self.out.wins.record(latency_us);
            let since = done.saturating_duration_since(self.shared.started);
            self.shared.timeline.record_win(since);
            self.out.last_success = Some(since);
            tally(&mut self.out.by_node, a.node.as_ref());
        }
        self.bump(o);
    }

    /// Keeps what `early_sold_out` and the sale's tail are computed from.
    fn note_time(&mut self, o: &Outcome, sale: usize, sent: Instant, done: Instant) {
        let us = |t: Instant| t.saturating_duration_since(self.shared.started).as_micros() as u64;
        let out = &mut self.out;
        match o {
            Outcome::SoldOut => {
                out.sold_out_by_sale[sale] += 1;
                if out.sold_out_at_us.len() < out.times_max {
                    out.sold_out_at_us.push((us(done), sale as u32));
                }
            }
            Outcome::Won => {
                out.last_win_sent_us[sale] = Some(us(sent));
                if out.won_at_us.len() >= out.times_max {
                    out.won_at_us.drain(..out.times_max / 2);
                }
                out.won_at_us.push(us(done));
            }
            _ => {}
        }
    }

    /// Counts a request that got no answer (so no latency sample): an error.
    fn count_failed(&mut self, done: Instant) {
        let second = self.second_of(done);
        self.second.record_failed(&self.shared.timeline, second);
        self.bump(&Outcome::Error);
    }

    fn bump(&mut self, o: &Outcome) {
        let c = &mut self.out.counts;
        match o {
            Outcome::Won => c.succeeded += 1,
            Outcome::SoldOut => c.sold_out += 1,
            Outcome::Overloaded(_) => {
                c.other += 1;
                c.overloaded += 1;
            }
            Outcome::Other => c.other += 1,
            Outcome::Error => c.errors += 1,
        }
        self.requests += 1;
        self.shared.progress[self.index]
            .0
            .store(self.requests, Ordering::Relaxed);
    }

    fn second_of(&self, t: Instant) -> u32 {
        t.saturating_duration_since(self.shared.started).as_secs() as u32
    }

    /// Spreads payments evenly: every winner adds the ratio, a whole credit pays.
    fn due_to_pay(&mut self) -> bool {
        let ratio = self.shared.args.pay_ratio;
        if ratio <= 0.0 {
            return false;
        }
        self.pay_credit += ratio;
        if self.pay_credit >= 1.0 - 1e-9 {
            self.pay_credit -= 1.0;
            return true;
        }
        false
    }

    async fn pay(&mut self, link: &mut Link, user: u64, won: &Answer) -> bool {
        let c = &mut self.out.counts;
        c.pay_attempted += 1;
        let Some(id) = reservation_id(&won.body) else {
            c.pay_refused += 1;
            return true;
        };
        self.write_pay_request(&mut link.out, id, user);
        let answer = link.exchange(&Method::POST, self.timeout).await;
        let c = &mut self.out.counts;
        match answer {
            Some(a) if a.status == 200 => c.paid += 1,
            Some(_) => c.pay_refused += 1,
            None => {
                c.pay_unknown += 1;
                return false;
            }
        }
        true
    }

    /// Writes one user's request into `out` (emptied first): the whole of it, head and body,
    /// for one write. Answers its method.
    fn write_request(&self, out: &mut Vec<u8>, user: u64) -> Method {
        let args = &self.shared.args;
        out.clear();
        match args.endpoint {
            Endpoint::Reservations => {
                let path = &self.reserve_paths[args.sale_of(user)];
                out.extend_from_slice(b"POST ");
                out.extend_from_slice(path.as_bytes());
                let len = user_body_len(&args.user_prefix, user);
                self.end_head(out, user, Some(len));
                push_user_body(out, &args.user_prefix, user);
                Method::POST
            }
            Endpoint::BuyTicket => {
                out.extend_from_slice(b"GET /buy/ticket?sale_id=");
                out.extend_from_slice(args.sales[args.sale_of(user)].as_str().as_bytes());
                out.extend_from_slice(b"&user_id=");
                push_user(out, &args.user_prefix, user);
                self.end_head(out, user, None);
                Method::GET
            }
        }
    }

    /// Writes the payment of `reservation` by `user` into `out` (emptied first).
    fn write_pay_request(&self, out: &mut Vec<u8>, reservation: &str, user: u64) {
        out.clear();
        // The id came from the answer body: only a valid id (its characters are path-safe) goes
        // into the request line.
        let id = match ticketrush_core::ids::ReservationId::parse(reservation) {
            Ok(_) => reservation,
            Err(_) => "invalid",
        };
        let prefix = &self.shared.args.user_prefix;
        out.extend_from_slice(b"POST /api/v1/reservations/");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"/pay");
        self.end_head(out, user, Some(user_body_len(prefix, user)));
        push_user_body(out, prefix, user);
    }

    /// The rest of a head after its method and target (written by the caller straight into
    /// `out`): the version, `Host`, a JSON body's type and length, the user's bearer token
    /// with `--jwt-secret-file`.
    fn end_head(&self, out: &mut Vec<u8>, user: u64, body: Option<usize>) {
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(self.target.authority.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(key) = &self.shared.tokens {
            out.extend_from_slice(b"authorization: ");
            out.extend_from_slice(bearer(key, &self.shared.args.user_prefix, user).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(len) = body {
            out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
            h1::push_decimal(out, len as u64);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The body of a user's request, `{"user_id":"<prefix><user>"}`.
fn push_user_body(out: &mut Vec<u8>, prefix: &str, user: u64) {
    out.extend_from_slice(USER_BODY_START);
    push_user(out, prefix, user);
    out.extend_from_slice(USER_BODY_END);
}

const USER_BODY_START: &[u8] = b"{\"user_id\":\"";
const USER_BODY_END: &[u8] = b"\"}";

/// The length of `push_user_body`'s output, known before it is written (the head says it).
fn user_body_len(prefix: &str, user: u64) -> usize {
    let digits = user.checked_ilog10().map_or(1, |d| d as usize + 1);
    USER_BODY_START.len() + prefix.len() + digits + USER_BODY_END.len()
}

/// An open connection: the socket, what has been read from it and not yet used, the request
/// being sent (written in place by `Conn`), and the watchdog that bounds each exchange. The
/// requests are written and the answers read by hand (`ticketrush_gateway::h1` reads the
/// heads), in the connection's own task: no driver, no channel, no header map built for a
/// request. The watchdog is one timer per connection, re-armed only when it fires (about
/// once per `--timeout-ms`), not a timer registered and cancelled per request.
struct Link {
    stream: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
    watchdog: Pin<Box<tokio::time::Sleep>>,
    /// The last answer said the connection ends after it (`Connection: close`, a body read to
    /// the end of the stream): the next request needs a new link.
    spent: bool,
}

impl Link {
    async fn open(target: &Target, timeout: Duration) -> std::io::Result<Link> {
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect(target.authority.as_str()),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Link {
            stream,
            buf: BytesMut::with_capacity(READ_BUF_BYTES),
            out: Vec::with_capacity(512),
            watchdog: Box::pin(tokio::time::sleep(timeout)),
            spent: false,
        })
    }

    /// Sends the request in `out` and reads its answer; `None` if the connection ended, the
    /// answer was not HTTP or over `BODY_BYTES_MAX`, or `timeout` passed first (the link must
    /// then be dropped).
    async fn exchange(&mut self, method: &Method, timeout: Duration) -> Option<Answer> {
        let deadline = Instant::now() + timeout;
        let Link {
            stream,
            buf,
            out,
            watchdog,
            spent,
        } = self;
        let mut answer = pin!(exchange(stream, buf, out, method));
        let (answer, keep_alive) = std::future::poll_fn(|cx| {
            if let Poll::Ready(a) = answer.as_mut().poll(cx) {
                return Poll::Ready(a);
            }
            while watchdog.as_mut().poll(cx).is_ready() {
                if Instant::now() >= deadline {
                    return Poll::Ready(None);
                }
                watchdog.as_mut().reset(deadline.into());
            }
            Poll::Pending
        })
        .await?;
        *spent = !keep_alive;
        Some(answer)
    }
}

/// Writes `out`, reads one answer: the answer and whether the connection may carry another.
async fn exchange(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    out: &[u8],
    method: &Method,
) -> Option<(Answer, bool)> {
    stream.write_all(out).await.ok()?;
    let head = loop {
        if !buf.is_empty() {
            match h1::parse_response(buf, method).ok()? {
                Parsed::Done(head) => break head,
                Parsed::Informational => continue,
                Parsed::Partial => {}
            }
        }
        fill(stream, buf).await?;
    };
    let status = head.status.as_u16();
    let node = if status < 300 {
        head.headers.get("x-node-id").cloned()
    } else {
        None
    };
    let retry_after = if status == 429 {
        retry_after(head.headers.get(RETRY_AFTER))
    } else {
        Duration::ZERO
    };
    let (body, keep_alive) = match head.framing {
        Framing::Length(n) => {
            let n = usize::try_from(n).ok().filter(|&n| n <= BODY_BYTES_MAX)?;
            while buf.len() < n {
                fill(stream, buf).await?;
            }
            (buf.split_to(n).freeze(), head.keep_alive)
        }
        Framing::Chunked => {
            let mut dec = Chunked::default();
            let mut body = BytesMut::new();
            loop {
                match dec.decode(buf).ok()? {
                    Decoded::Data(d) if body.len() + d.len() <= BODY_BYTES_MAX => {
                        body.extend_from_slice(&d)
                    }
                    Decoded::Data(_) => return None,
                    Decoded::End => break,
                    Decoded::NeedMore => fill(stream, buf).await?,
                }
            }
            (body.freeze(), head.keep_alive)
        }
        Framing::UntilClose => {
            loop {
                if buf.len() > BODY_BYTES_MAX {
                    return None;
                }
                buf.reserve(READ_BUF_BYTES);
                if stream.read_buf(buf).await.ok()? == 0 {
                    break;
                }
            }
            (buf.split().freeze(), false)
        }
    };
    let answer = Answer {
        status,
        node,
        retry_after,
        body,
    };
    Some((answer, keep_alive))
}

/// Reads more into `buf`; `None` at the end of the stream or on an error.
async fn fill(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<()> {
    buf.reserve(READ_BUF_BYTES);
    match stream.read_buf(buf).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(()),
    }
}

/// Counts one success of `node` (or of "(none)"): the node found is moved to the front, so a
/// run against one node compares one header per success. Bounded by the number of distinct
/// node names, a handful.
fn tally(by_node: &mut Vec<(HeaderValue, u64)>, node: Option<&HeaderValue>) {
    let none = HeaderValue::from_static("(none)");
    let node = node.unwrap_or(&none);
    match by_node.iter().position(|(n, _)| n == node) {
        Some(0) => by_node[0].1 += 1,
        Some(i) => {
            by_node[i].1 += 1;
            by_node.swap(0, i);
        }
        None => by_node.insert(0, (node.clone(), 1)),
    }
}

/// `Retry-After` in whole seconds (1 if absent or unreadable), at most `RETRY_AFTER_MAX`.
fn retry_after(h: Option<&HeaderValue>) -> Duration {
    let secs = h
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(secs).min(RETRY_AFTER_MAX)
}

/// The outcome of an answer. `/buy/ticket` always answers 200; its `msg` tells why it failed
/// (the node's messages for sold out and overload, see the server's `error.rs`).
fn classify(endpoint: Endpoint, a: &Answer) -> Outcome {
    if a.status >= 500 {
        return Outcome::Error;
    }
    match endpoint {
        Endpoint::Reservations => match a.status {
            200 | 201 => Outcome::Won,
            409 if contains(&a.body, b"\"sold_out\"") => Outcome::SoldOut,
            429 => Outcome::Overloaded(a.retry_after),
            _ => Outcome::Other,
        },
        Endpoint::BuyTicket => match a.status {
            200 if a.body.starts_with(b"{\"code\":1,") => Outcome::Won,
            200 if contains(&a.body, b"every ticket of this sale is taken") => Outcome::SoldOut,
            200 if contains(&a.body, b"Retry-After") => Outcome::Overloaded(Duration::from_secs(1)),
            429 => Outcome::Overloaded(a.retry_after),
            _ => Outcome::Other,
        },
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The `reservation_id` of a reservation object, alone or as `/buy/ticket`'s `data`.
fn reservation_id(body: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"reservation_id\":\"";
    let start = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = body[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&body[start..start + len]).ok()
}

/// Appends `prefix` and the decimal digits of `n`, without a formatter.
fn push_user(out: &mut Vec<u8>, prefix: &str, n: u64) {
    out.extend_from_slice(prefix.as_bytes());
    h1::push_decimal(out, n);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &'static str) -> Answer {
        Answer {
            status,
            node: None,
            retry_after: Duration::from_secs(1),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn answers_are_classified_per_endpoint() {
        let r = Endpoint::Reservations;
        assert!(matches!(classify(r, &answer(201, "{}")), Outcome::Won));
        let sold = r#"{"error":"sold_out","message":"x"}"#;
        assert!(matches!(classify(r, &answer(409, sold)), Outcome::SoldOut));
        let limit = r#"{"error":"limit_reached","message":"x"}"#;
        assert!(matches!(classify(r, &answer(409, limit)), Outcome::Other));
        assert!(matches!(
            classify(r, &answer(429, "")),
            Outcome::Overloaded(_)
        ));
        assert!(matches!(classify(r, &answer(503, "")), Outcome::Error));
        let b = Endpoint::BuyTicket;
        let won = r#"{"code":1,"msg":"reserved","data":{"reservation_id":"abc"}}"#;
        assert!(matches!(classify(b, &answer(200, won)), Outcome::Won));
        let sold = r#"{"code":-1,"msg":"every ticket of this sale is taken"}"#;
        assert!(matches!(classify(b, &answer(200, sold)), Outcome::SoldOut));
        assert_eq!(reservation_id(won.as_bytes()), Some("abc"));
    }

    #[test]
    fn a_user_body_is_as_long_as_its_head_says() {
        for (prefix, user) in [
            ("u", 0),
            ("u", 9),
            ("u", 10),
            ("user-", 999_999),
            ("", u64::MAX),
        ] {
            let mut out = Vec::new();
            push_user_body(&mut out, prefix, user);
            assert_eq!(out.len(), user_body_len(prefix, user), "{prefix}{user}");
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["user_id"], format!("{prefix}{user}"));
        }
    }

    #[test]
    fn the_win_sample_stays_bounded_and_even_over_the_run() {
        let mut w = WinSample::new(8);
        for latency in 1..=5 {
            w.record(latency);
        }
        assert_eq!(
            (w.latency_us.as_slice(), w.stride),
            (&[1, 2, 3, 4, 5][..], 1)
        );
        // Win n has latency n: the sample is always the wins stride, 2 stride, 3 stride, ...
        for latency in 6..=1_000 {
            w.record(latency);
            assert!(w.latency_us.len() <= 8);
            let expected: Vec<u32> = (1..=w.latency_us.len() as u32)
                .map(|k| k * w.stride as u32)
                .collect();
            assert_eq!(w.latency_us, expected, "after win {latency}");
        }
        assert_eq!(w.stride, 128);
        // Each entry weighs `stride` wins: together they stand for every win but the last few.
        let covered = w.latency_us.len() as u64 * w.stride;
        assert!(covered <= 1_000 && 1_000 - covered < w.stride, "{covered}");
    }

    #[test]
    fn user_ids_and_retry_after() {
        let mut v = Vec::new();
        push_user(&mut v, "u", 0);
        push_user(&mut v, "-", 1_234_567);
        assert_eq!(v, b"u0-1234567");
        assert_eq!(retry_after(None), Duration::from_secs(1));
        let h = HeaderValue::from_static("3600");
        assert_eq!(retry_after(Some(&h)), RETRY_AFTER_MAX);
    }
}
