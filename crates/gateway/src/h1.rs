//! The upstream half of HTTP/1.1, by hand and pure (bytes in, bytes out): the request head the
//! gateway writes to a node, the response head it reads back, and the chunked body decoder.
//!
//! Why not hyper's client: it drives each connection from a task of its own, so every
//! forwarded request crossed two channels and two extra task wake-ups, and re-parsed and
//! re-built headers the gateway only passes on; that was about a third of the gateway's
//! instructions per request (BENCHMARKS.md, "The gateway's upstream by hand"). What a node
//! sends is plain HTTP/1.1, and this module reads all of it: `Content-Length`, chunked, and
//! read-until-close bodies, informational answers skipped, hop-by-hop headers dropped.
//! Anything malformed or over a limit is an error, which the proxy answers 502.

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};

use crate::limits::{CHUNK_LINE_BYTES_MAX, RESPONSE_HEADERS_MAX, RESPONSE_HEAD_BYTES_MAX};

/// Why a node's answer cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum H1Error {
    #[error("the response head is not valid HTTP/1.1: {0}")]
    Head(&'static str),
    #[error("the response head is over {RESPONSE_HEAD_BYTES_MAX} bytes or {RESPONSE_HEADERS_MAX} headers")]
    HeadTooLarge,
    #[error("the chunked body is malformed: {0}")]
    Chunk(&'static str),
}

/// How the response's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (0 for HEAD, 204 and 304 answers).
    Length(u64),
    Chunked,
    /// Until the node closes the connection (HTTP/1.0 style); the connection is not reused.
    UntilClose,
}

/// A node's response head, headers ready to pass on (hop-by-hop ones already dropped).
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request after this body.
    pub keep_alive: bool,
}

/// What `parse_response` found at the front of the buffer.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet: read more.
    Partial,
    /// An informational (1xx) answer, already removed from the buffer: the real one follows.
    Informational,
    /// The head, removed from the buffer; the body (or its start) is what remains.
    Done(Head),
}

/// Headers that belong to one hop (RFC 9110 §7.6.1) and are never forwarded, in either
/// direction. `Expect` too: the gateway has the whole body before it writes a byte upstream.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::EXPECT
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Whether `name` is listed in a `Connection` header's value (comma-separated tokens, any case).
fn named_in(connection: &[u8], name: &[u8]) -> bool {
    connection
        .split(|&b| b == b',')
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(name))
}

/// Reads one response head from the front of `buf`. `request_method` decides whether a body
/// follows (none for HEAD). On `Done`, the head's bytes are split off `buf` and the headers
/// share them (no copy per header).
pub fn parse_response(buf: &mut BytesMut, request_method: &Method) -> Result<Parsed, H1Error> {
    // Offsets of each header's name and value in `buf` (a head is at most 16 KiB: `u16`),
    // found by the parser; the headers are built from the frozen head after the parser's
    // borrow of `buf` ends. Neither array is initialised beyond what the parser fills: zeroing
    // 64 headers' worth cost more than parsing a node's five.
    let mut spans = [(0u16, 0u16, 0u16, 0u16); RESPONSE_HEADERS_MAX];
    let (len, code, version, count) = {
        let mut raw =
            [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; RESPONSE_HEADERS_MAX];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut raw);
        let status = match parsed {
            Ok(s) => s,
            Err(httparse::Error::TooManyHeaders) => return Err(H1Error::HeadTooLarge),
            Err(_) => return Err(H1Error::Head("unparsable status line or header")),
        };
        let httparse::Status::Complete(len) = status else {
            return if buf.len() > RESPONSE_HEAD_BYTES_MAX {
                Err(H1Error::HeadTooLarge)
            } else {
                Ok(Parsed::Partial)
            };
        };
        if len > RESPONSE_HEAD_BYTES_MAX {
            return Err(H1Error::HeadTooLarge);
        }
        let base = buf.as_ptr() as usize;
        // Every offset is within the head, so below `RESPONSE_HEAD_BYTES_MAX` (checked above).
        let at = |p: *const u8| (p as usize - base) as u16;
        for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
            let (name, value) = (at(h.name.as_ptr()), at(h.value.as_ptr()));
            *span = (
                name,
                name + h.name.len() as u16,
                value,
                value + h.value.len() as u16,
            );
        }
        let code = resp.code.ok_or(H1Error::Head("no status code"))?;
        let version = resp.version.ok_or(H1Error::Head("no version"))?;
        (len, code, version, resp.headers.len())
    };
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Head("status out of range"))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // The gateway never forwards `Upgrade`, so a node has nothing to switch to.
            return Err(H1Error::Head(
                "101 Switching Protocols without an upgrade request",
            ));
        }
        buf.advance(len);
        return Ok(Parsed::Informational);
    }
    let head = buf.split_to(len).freeze();
    let spans = &spans[..count];

    // What the hop-by-hop headers say, before the others are kept.
    let mut connection = Vec::new();
    let mut chunked = false;
    let mut encoded = false;
    let mut length: Option<u64> = None;
    let range = |a: u16, b: u16| usize::from(a)..usize::from(b);
    for &(n0, n1, v0, v1) in spans {
        let (name, value) = (&head[range(n0, n1)], &head[range(v0, v1)]);
        if name.eq_ignore_ascii_case(b"connection") {
            if !connection.is_empty() {
                connection.push(b',');
            }
            connection.extend_from_slice(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encoded = true;
            // The last coding decides: chunked last means chunked framing (RFC 9112 §6.3).
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(value).ok_or(H1Error::Head("invalid Content-Length"))?;
            if length.is_some_and(|m| m != n) {
                return Err(H1Error::Head("conflicting Content-Length headers"));
            }
            length = Some(n);
        }
    }
    let mut keep_alive = version == 1 && !named_in(&connection, b"close");
    let no_body = *request_method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Length(0)
    } else if encoded {
        if length.is_some() {
            // Both framings at once is how responses are smuggled (RFC 9112 §6.3): read this
            // one as chunked, then close the connection rather than trust what follows.
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked
        } else {
            keep_alive = false;
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };

    let mut headers = HeaderMap::with_capacity(count);
    for &(n0, n1, v0, v1) in spans {
        let name = HeaderName::from_bytes(&head[range(n0, n1)])
            .map_err(|_| H1Error::Head("invalid header name"))?;
        if is_hop_by_hop(&name) || named_in(&connection, name.as_str().as_bytes()) {
            continue;
        }
        // A chunked body reaches the client re-framed; its length is not what the node sent.
        if encoded && name == header::CONTENT_LENGTH {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(range(v0, v1)))
            .map_err(|_| H1Error::Head("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(Parsed::Done(Head {
        status,
        headers,
        framing,
        keep_alive,
    }))
}

/// A `Content-Length` value: digits only, at most 19 of them (no sign, no spaces inside).
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// What the chunked decoder took from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes (never empty).
    Data(Bytes),
    /// The buffer ends inside framing: read more.
    NeedMore,
    /// The last chunk and the trailers were read: the body is complete.
    End,
}

/// The chunked transfer coding's decoder (RFC 9112 §7.1). Chunk extensions are ignored and
/// trailers dropped, as a proxy may; every framing line is bounded by `CHUNK_LINE_BYTES_MAX`
/// and the trailers by `RESPONSE_HEAD_BYTES_MAX` in all.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data: this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailer,
    Done,
}

impl Chunked {
    /// Takes what it can from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(Decoded::End),
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Chunk("no CRLF after a chunk's data"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_chunk_size(&line)?;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Trailer => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    } else {
                        self.trailer_bytes += line.len() + 2;
                        if self.trailer_bytes > RESPONSE_HEAD_BYTES_MAX {
                            return Err(H1Error::Chunk("trailers too large"));
                        }
                    }
                }
            }
        }
    }
}

/// One CRLF-terminated line off the front of `buf` (without its CRLF), `None` if the buffer
/// has no whole line yet.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, H1Error> {
    let window = &buf[..buf.len().min(CHUNK_LINE_BYTES_MAX + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = buf.split_to(end);
            buf.advance(2);
            Ok(Some(line))
        }
        None if buf.len() >= CHUNK_LINE_BYTES_MAX + 2 => {
            Err(H1Error::Chunk("framing line too long"))
        }
        None => Ok(None),
    }
}

/// A chunk-size line: hex digits (at most 15: a chunk under 2^60 bytes), then optionally
/// whitespace and `;extensions`.
fn parse_chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(H1Error::Chunk("invalid chunk size"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(H1Error::Chunk("invalid chunk size"));
    }
    Ok(line[..digits].iter().fold(0u64, |n, &d| {
        n * 16 + u64::from((d as char).to_digit(16).unwrap_or(0))
    }))
}

/// Appends a request head for a node: `METHOD TARGET HTTP/1.1`, the end-to-end headers of
/// `headers` (hop-by-hop ones, those named in `Connection`, `Content-Length` and
/// `X-Forwarded-For` left out), `X-Forwarded-For` with `client` appended, and the body's
/// `Content-Length`.
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    client: &HeaderValue,
    body_len: usize,
) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let connection: Vec<u8> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().iter().copied().chain([b',']))
        .collect();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut prior_xff: Vec<&[u8]> = Vec::new();
    for (name, value) in headers {
        if name == xff {
            prior_xff.push(value.as_bytes());
            continue;
        }
        if name == header::CONTENT_LENGTH
            || is_hop_by_hop(name)
            || (!connection.is_empty() && named_in(&connection, name.as_str().as_bytes()))
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    for prior in prior_xff {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client.as_bytes());
    out.extend_from_slice(b"\r\n");
    if body_len > 0 || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, body_len as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the decimal digits of `n`, without a formatter (a `Content-Length`, a user number).
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8], method: &Method) -> (Head, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        loop {
            match parse_response(&mut buf, method).unwrap() {
                Parsed::Partial => panic!("partial: {bytes:?}"),
                Parsed::Informational => continue,
                Parsed::Done(head) => return (head, buf),
            }
        }
    }

    #[test]
    fn a_content_length_answer_keeps_end_to_end_headers_only() {
        let raw = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\
            Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
            X-Node-Id: n1\r\nContent-Length: 2\r\n\r\n{}rest";
        let (head, rest) = parse_all(raw, &Method::POST);
        assert_eq!(head.status, 201);
        assert_eq!(head.framing, Framing::Length(2));
        assert!(head.keep_alive);
        let names: Vec<&str> = head.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-node-id", "content-length"]);
        assert_eq!(head.headers["x-node-id"], "n1");
        assert_eq!(&rest[..], b"{}rest");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases: [(&[u8], Method, Framing, bool); 7] = [
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                Method::GET,
                Framing::Chunked,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Method::GET,
                Framing::UntilClose,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                Method::GET,
                Framing::UntilClose,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
                Method::HEAD,
                Framing::Length(0),
                true,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                Method::DELETE,
                Framing::Length(0),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
                Method::GET,
                Framing::Length(3),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
                Method::GET,
                Framing::Length(3),
                false,
            ),
        ];
        for (raw, method, framing, keep_alive) in &cases {
            let (head, _) = parse_all(raw, method);
            assert_eq!(
                (head.framing, head.keep_alive),
                (*framing, *keep_alive),
                "{raw:?}"
            );
        }
        // The chunked body's length is not forwarded (the client's framing is the gateway's).
        let (head, _) = parse_all(cases[0].0, &Method::GET);
        assert!(head.headers.get(header::CONTENT_LENGTH).is_none());
    }

    #[test]
    fn informational_answers_are_skipped_and_heads_arrive_in_pieces() {
        let raw: &[u8] =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx";
        for cut in 0..raw.len() {
            let mut buf = BytesMut::from(&raw[..cut]);
            let mut got = None;
            let mut fed = false;
            loop {
                match parse_response(&mut buf, &Method::GET).unwrap() {
                    Parsed::Informational => {}
                    Parsed::Done(head) => {
                        got = Some(head);
                        break;
                    }
                    Parsed::Partial if !fed => {
                        buf.extend_from_slice(&raw[cut..]);
                        fed = true;
                    }
                    Parsed::Partial => break,
                }
            }
            assert_eq!(got.expect("the head").status, 200, "cut at {cut}");
        }
    }

    #[test]
    fn bad_heads_are_errors_not_panics() {
        let bad: [&[u8]; 5] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"NOTHTTP\r\n\r\n",
        ];
        for raw in bad {
            let mut buf = BytesMut::from(raw);
            assert!(parse_response(&mut buf, &Method::GET).is_err(), "{raw:?}");
        }
        // Too long a head, even before it is complete.
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        buf.extend_from_slice(&vec![b'a'; RESPONSE_HEAD_BYTES_MAX]);
        assert_eq!(
            parse_response(&mut buf, &Method::GET).unwrap_err(),
            H1Error::HeadTooLarge
        );
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=RESPONSE_HEADERS_MAX {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let mut buf = BytesMut::from(&many[..]);
        assert_eq!(
            parse_response(&mut buf, &Method::GET).unwrap_err(),
            H1Error::HeadTooLarge
        );
    }

    /// Decodes `raw` fed in pieces of `step` bytes; answers the body and what is left after it.
    fn dechunk(raw: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), H1Error> {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(d) => {
                    assert!(!d.is_empty());
                    body.extend_from_slice(&d);
                }
                Decoded::NeedMore => {
                    if fed == raw.len() {
                        return Err(H1Error::Chunk("ended early"));
                    }
                    let to = (fed + step).min(raw.len());
                    buf.extend_from_slice(&raw[fed..to]);
                    fed = to;
                }
                Decoded::End => {
                    let mut rest = buf.to_vec();
                    rest.extend_from_slice(&raw[fed..]);
                    return Ok((body, rest));
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let raw = b"5;name=value\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        for step in 1..=raw.len() {
            let (body, rest) = dechunk(raw, step).unwrap();
            assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert_eq!(rest, b"NEXT", "step {step}");
        }
    }

    #[test]
    fn malformed_chunks_are_errors() {
        let bad: [&[u8]; 4] = [
            b"zz\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"1000000000000000\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
        ];
        for raw in bad {
            assert!(
                matches!(dechunk(raw, raw.len()), Err(H1Error::Chunk(_))),
                "{raw:?}"
            );
        }
        let long = vec![b'1'; CHUNK_LINE_BYTES_MAX + 10];
        assert!(dechunk(&long, long.len()).is_err());
    }

    #[test]
    fn the_request_head_is_origin_form_with_forwarded_for_and_length() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("tickets.example"));
        h.insert(header::CONNECTION, HeaderValue::from_static("x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("idempotency-key", HeaderValue::from_static("k1"));
        let mut out = Vec::new();
        let client = HeaderValue::from_static("192.0.2.7");
        write_request_head(
            &mut out,
            &Method::POST,
            "/api/v1/sales/G1/reservations?x=1",
            &h,
            &client,
            2,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /api/v1/sales/G1/reservations?x=1 HTTP/1.1\r\nhost: tickets.example\r\n\
             idempotency-key: k1\r\nx-forwarded-for: 10.0.0.1, 192.0.2.7\r\ncontent-length: 2\r\n\r\n"
        );
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            &Method::GET,
            "/healthz",
            &HeaderMap::new(),
            &client,
            0,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /healthz HTTP/1.1\r\nx-forwarded-for: 192.0.2.7\r\n\r\n"
        );
    }
}
