//! Every limit of a node in one place, each with its reason. Configurable ones are defaults
//! with a hard ceiling; the rest are constants.

use std::time::Duration;

/// Largest request body. A reservation body is ~30 bytes and a sale ~300; anything near this is
/// not a ticketing request. Larger bodies get 413 `payload_too_large` before they are read.
pub const BODY_BYTES_MAX: usize = 4 * 1024;

/// A request body the node did not read to its end (an early 4xx: bad token, bad path, too
/// large) is read and thrown away, up to this many bytes and this long, before the answer goes
/// out. Closing a socket with unread input makes the kernel send a reset, and a client still
/// sending its body then never sees the answer: the contract wants a 413 (or 401, 404...), not
/// a dropped connection. Past either bound the node answers with `Connection: close` instead.
pub const BODY_DRAIN_BYTES_MAX: u64 = 2 * 1024 * 1024;
pub const BODY_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A declared body must arrive within this; past it the node answers 408 `invalid_request`.
/// Headers have their own timeout (`HEADER_READ_TIMEOUT`); this closes the slow-body variant of
/// slow-loris.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Open connections per node. Past this, new connections wait in the kernel's accept backlog
/// rather than costing the node memory and file descriptors.
pub const CONNECTIONS_MAX: usize = 16 * 1024;

/// Most bytes a connection buffers while reading a request head (hyper's read buffer; its
/// floor is 8 KiB). A head larger than this is answered 431 and the connection closed. The
/// default was about 400 KiB: at `CONNECTIONS_MAX` connections that is gigabytes held for up
/// to `HEADER_READ_TIMEOUT`; this is 256 MiB at most. Real heads are well under 4 KiB (nginx's
/// default buffers are 1 KiB, then 8 KiB).
pub const HEADER_BYTES_MAX: usize = 16 * 1024;

/// A client has this long to send a request's headers; stops slow-loris connections.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// On SIGTERM, idle keep-alive connections stay open this long (answering with `Connection:
/// close`), so a request a client already sent on one is answered rather than cut off.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// On SIGTERM, open requests get this long to finish before the node exits anyway.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// Default and ceiling of reservations committed in one store call. Hundreds keep one Redis
/// script short (it blocks Redis while it runs) and one journal write small.
pub const BATCH_SIZE_DEFAULT: usize = 256;
pub const BATCH_SIZE_CEILING: usize = 4_096;

/// Default and ceiling of how long the batcher waits to fill a batch after its first item.
/// Under load batches fill while the previous commit is in flight, so the wait matters little;
/// it bounds the latency it can add at low load.
pub const BATCH_WAIT_DEFAULT: Duration = Duration::from_micros(500);
pub const BATCH_WAIT_CEILING: Duration = Duration::from_millis(100);

/// Batches of one sale committing at once. More overlap hides a store round trip; each holds
/// up to a batch of requests open.
pub const BATCHES_IN_FLIGHT_MAX: usize = 4;

/// Default and ceiling of reservations waiting for a store commit, per sale. Past it the node
/// sheds with 429 `overloaded` rather than queueing: a request that waits longer than a client
/// would is work thrown away.
pub const PENDING_DEFAULT: usize = 4_096;
pub const PENDING_CEILING: usize = 1_000_000;

/// What `Retry-After` tells a shed client, in seconds.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// When a batch found the pool empty, the node answers `sold_out` from memory for this long
/// before one request asks the store again (cancellations and expiries put tickets back; one
/// made on this node reopens at once). The longest a node can lag behind a returned ticket.
pub const SOLD_OUT_RECHECK: Duration = Duration::from_millis(100);

/// How often the reaper expires due holds (and takes back lapsed first-version leases), and
/// how many holds one pass expires at most (one critical section; the next pass follows at
/// once if it was full). An expired ticket is on sale again well within 2 seconds.
pub const REAP_INTERVAL: Duration = Duration::from_millis(250);
pub const REAP_BATCH_MAX: usize = 10_000;

/// After a batch commit failed as unavailable, the longest the batcher spends looking its
/// reservations up to learn whether the store applied it anyway (see `batcher.rs`).
pub const RESOLVE_WAIT_MAX: Duration = Duration::from_secs(1);
