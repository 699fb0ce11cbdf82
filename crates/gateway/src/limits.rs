//! Every limit of the gateway in one place, each with its reason. They mirror the node's
//! (`ticketrush_server::limits`) where the two meet, so the gateway never accepts what a node
//! would refuse, and never holds more than a node would.

use std::time::Duration;

/// Largest request body, as on the node: a ticketing request is tens of bytes. Larger bodies get
/// 413 `payload_too_large` from the gateway itself, and never reach a node.
pub const BODY_BYTES_MAX: usize = 4 * 1024;

/// A body the gateway refuses is read and thrown away up to this many bytes and this long, so
/// that a client still sending sees the 413 rather than a TCP reset (as the node does).
pub const BODY_DRAIN_BYTES_MAX: u64 = 2 * 1024 * 1024;
pub const BODY_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A declared body must arrive within this (slow-body slow-loris).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A client has this long to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest buffered request head (request line and headers). Real requests are well under
/// 1 KiB; nginx's default is 4 × 8 KiB buffers.
pub const HEADER_BYTES_MAX: usize = 16 * 1024;

/// Open client connections (in all: `serve_threads` gives each thread its share). Each may
/// hold one upstream connection while a request is in flight, so this also bounds upstream
/// connections in use. Past it, new connections wait in the kernel's accept backlog.
pub const CONNECTIONS_MAX: usize = 16 * 1024;

/// The kernel's queue of connections not yet accepted, per listener (tokio's default).
pub const LISTEN_BACKLOG: u32 = 1024;

/// On shutdown, open requests get this long to finish.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// Connecting to a node: a LAN connect takes well under a millisecond, and the first SYN
/// retransmission comes after 1 s; past 2 s the node is taken as down and the request goes to
/// the next one.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// From sending a request to a node to its response headers. A node answers in milliseconds
/// (its slowest legitimate wait, for a ticket on its way back, is 2 s); past this the gateway
/// answers 504 and counts a failure. Not retried: the node may have acted on the request.
pub const UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle keep-alive connections kept per node. Enough for the requests in flight at once on a
/// busy node (a connection is idle between requests only); past it a finished connection is
/// closed instead of kept.
pub const UPSTREAM_IDLE_PER_NODE_MAX: usize = 256;

/// An idle upstream connection unused this long is closed rather than reused. It must be shorter
/// than the node's own idle limit (its header read timeout, 10 s, also closes idle keep-alive
/// connections): reusing a connection at the very moment the node closes it would fail a request
/// that was already written, which the gateway must not retry.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Nodes behind one gateway (the balancer's tried-set is a 64-bit set).
pub const NODES_MAX: usize = crate::wrr::PEERS_MAX;

/// Weight of one node, as accepted on the command line; nginx's own limit is far higher, but a
/// ratio beyond 100:1 is a configuration mistake rather than a plan.
pub const WEIGHT_MAX: u32 = 100;

/// nginx's defaults for `max_fails` and `fail_timeout`, and the bounds the command line takes.
pub const MAX_FAILS_DEFAULT: u32 = 1;
pub const MAX_FAILS_CEILING: u32 = 100;
pub const FAIL_TIMEOUT_SECONDS_DEFAULT: u64 = 10;
pub const FAIL_TIMEOUT_SECONDS_CEILING: u64 = 3_600;

/// Largest response head a node may send (status line and headers), and most headers in it. A
/// node's answers carry a handful of headers in a few hundred bytes; past these the answer is
/// not a node's, and the client gets 502.
pub const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
pub const RESPONSE_HEADERS_MAX: usize = 64;

/// Longest chunk-size line of a chunked answer (hex size and extensions). Trailers, dropped,
/// are bounded by `RESPONSE_HEAD_BYTES_MAX` in all.
pub const CHUNK_LINE_BYTES_MAX: usize = 4 * 1024;

/// What one read from a node asks for: a whole answer of ours in one read, and a large body
/// streamed through in pieces of this size rather than held whole.
pub const UPSTREAM_READ_BYTES: usize = 8 * 1024;
