//! The journal file: an append-only sequence of checksummed blocks of events.
//!
//! Format 2 (written since the journal could tell damage from a torn write):
//! ```text
//! file   = MAGIC, block*, zero*             (zeros: space reserved ahead, see embedded.rs)
//! block  = len: u32 LE | crc32(frames): u32 LE | frames          (len > 0)
//! frame  = len: u32 LE | crc32(payload): u32 LE | payload        (one event as JSON)
//! ```
//! The journal writer writes exactly one block per write and fsyncs it before writing the
//! next, so only the last block can be torn by a crash. Reading therefore tells three endings
//! apart, exactly:
//! - **clean**: the blocks end where the zeros (or the file) begin;
//! - **torn**: the bytes after the last good block are no whole block and no whole block
//!   follows them: an unfinished last write, never acknowledged (it was not yet fsynced);
//! - **damaged**: a block fails its check and a whole, valid block follows it. That later block
//!   was written after the bad one was fsynced, so the bad one held acknowledged data: the
//!   disk changed it (a flipped bit, a zeroed sector). The journal must not be cut there.
//!
//! Format 1 (the first version) is frames without blocks and without `MAGIC`; it is read (with
//! the same three endings, where "damaged" means a valid frame after a bad one) and converted.

use ticketrush_core::Event;

/// The first bytes of a format-2 journal.
pub const MAGIC: &[u8; 8] = b"TRJRNL2\n";
/// Largest frame we write or accept. An event is a few hundred bytes; anything near this is a
/// damaged length field, not an event.
pub const FRAME_BYTES_MAX: usize = 64 * 1024;
/// Largest block we write or accept: one group commit (the writer's backlog is bounded well
/// below this).
pub const BLOCK_BYTES_MAX: usize = 64 * 1024 * 1024;
pub const HEADER_BYTES: usize = 8;

/// Appends one event's frame to `buf`.
pub fn encode(event: &Event, buf: &mut Vec<u8>) {
    // The payload is written in place after room for its header (no copy of it).
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_BYTES]);
    crate::event_json::encode(event, buf);
    let payload = &buf[start + HEADER_BYTES..];
    assert!(payload.len() <= FRAME_BYTES_MAX, "event frame too large");
    let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
}

/// Appends one block holding `frames` (whole frames, as `encode` made them) to `out`.
pub fn block(frames: &[u8], out: &mut Vec<u8>) {
    assert!(
        !frames.is_empty() && frames.len() <= BLOCK_BYTES_MAX,
        "block size out of bounds"
    );
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(frames).to_le_bytes());
    out.extend_from_slice(frames);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Frames only (the first version); converted when opened.
    V1,
    V2,
}

/// How the readable history ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// Only zeros (or nothing) after the history.
    Clean,
    /// An unfinished last write: `bytes` bytes that are no whole block, and nothing valid after.
    Torn { bytes: u64 },
    /// Damage at the end of the history with valid data after it, from `resumes_at` on.
    Damaged {
        resumes_at: u64,
        /// What the valid data after the damage holds (read up to its own first problem).
        events_after: Vec<Event>,
    },
}

/// What reading a journal found.
#[derive(Debug, Clone)]
pub struct Scan {
    pub format: Format,
    /// Every event of the readable history, in order.
    pub events: Vec<Event>,
    /// Where the readable history ends: where appending resumes.
    pub data_end: u64,
    pub tail: Tail,
}

/// Reads a whole journal file's bytes (either format; empty is a clean, empty V2 journal).
pub fn scan(bytes: &[u8]) -> Scan {
    if bytes.is_empty() {
        return Scan {
            format: Format::V2,
            events: Vec::new(),
            data_end: 0,
            tail: Tail::Clean,
        };
    }
    // `brace`: where a unit's first JSON byte sits from its start, the cheap test that comes
    // first when every offset after damage is tried.
    let (format, start, unit, brace): (Format, usize, Unit, usize) = if bytes.starts_with(MAGIC) {
        (Format::V2, MAGIC.len(), block_at, 2 * HEADER_BYTES)
    } else {
        (Format::V1, 0, frame_at, HEADER_BYTES)
    };
    // The common case: every unit checks out and every event parses, in parallel. Anything
    // else is read again unit by unit below, which tells the endings apart.
    let (events, end) = match read_fast(bytes, start, format) {
        Some(done) => done,
        None => {
            let mut events = Vec::new();
            let end = read_units(bytes, start, unit, &mut events);
            (events, end)
        }
    };
    let rest = &bytes[end..];
    let tail = match rest.iter().rposition(|&b| b != 0) {
        None => Tail::Clean,
        Some(last) => match bytes
            .get(end + 1 + brace..)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'{')
            .map(|(i, _)| end + 1 + i)
            .find(|&p| unit(bytes, p).is_some())
        {
            Some(resumes_at) => {
                let mut events_after = Vec::new();
                read_units(bytes, resumes_at, unit, &mut events_after);
                Tail::Damaged {
                    resumes_at: resumes_at as u64,
                    events_after,
                }
            }
            None => Tail::Torn {
                bytes: (last + 1) as u64,
            },
        },
    };
    Scan {
        format,
        events,
        data_end: end as u64,
        tail,
    }
}

/// Decodes the whole blocks at the start of `bytes` (a format-2 journal's bytes from a block
/// boundary): their events and how many bytes they span.
pub fn decode_blocks(bytes: &[u8]) -> (Vec<Event>, u64) {
    let mut events = Vec::new();
    let end = read_units(bytes, 0, block_at, &mut events);
    (events, end as u64)
}

/// The frames' payloads from `start` while the units' checksums hold (no JSON parsed), and
/// where the first unit that does not check out starts.
fn frames_checked(bytes: &[u8], start: usize, format: Format) -> (Vec<(usize, usize)>, usize) {
    let mut payloads = Vec::new();
    let mut at = start;
    // One frame at `at` within `limit`: its payload range and the next offset.
    let frame = |at: usize, limit: usize| -> Option<((usize, usize), usize)> {
        let (len, crc) = plausible_frame(bytes, at)?;
        let (from, to) = (at + HEADER_BYTES, at + HEADER_BYTES + len);
        if to > limit || crc32fast::hash(&bytes[from..to]) != crc {
            return None;
        }
        Some(((from, to), to))
    };
    match format {
        Format::V1 => {
            while let Some((p, next)) = frame(at, bytes.len()) {
                payloads.push(p);
                at = next;
            }
        }
        Format::V2 => {
            while let Some((len, crc)) = header(bytes, at) {
                let (from, to) = (at + HEADER_BYTES, at + HEADER_BYTES + len);
                if len == 0
                    || len > BLOCK_BYTES_MAX
                    || to > bytes.len()
                    || crc32fast::hash(&bytes[from..to]) != crc
                {
                    break;
                }
                let mark = payloads.len();
                let mut f = from;
                while f < to {
                    match frame(f, to) {
                        Some((p, next)) => {
                            payloads.push(p);
                            f = next;
                        }
                        None => break,
                    }
                }
                if f != to {
                    payloads.truncate(mark);
                    break;
                }
                at = to;
            }
        }
    }
    (payloads, at)
}

/// Reads every unit from `start` on, parsing the events on every core. `None` when a frame
/// whose checksum held does not parse (then the careful reader decides what it is).
fn read_fast(bytes: &[u8], start: usize, format: Format) -> Option<(Vec<Event>, usize)> {
    let (payloads, end) = frames_checked(bytes, start, format);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let chunk = payloads.len().div_ceil(threads).max(1);
    let parsed: Vec<Option<Vec<Event>>> = std::thread::scope(|s| {
        let handles: Vec<_> = payloads
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&(from, to)| crate::event_json::decode(&bytes[from..to]).ok())
                        .collect::<Option<Vec<Event>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    let mut events = Vec::with_capacity(payloads.len());
    for part in parsed {
        events.extend(part?);
    }
    Some((events, end))
}

/// A reader of one unit (a block, or a bare frame in format 1) at an offset: its events and
/// where the next unit starts, or `None` if no valid unit starts there.
type Unit = fn(&[u8], usize) -> Option<(Vec<Event>, usize)>;

/// Reads units from `at` while they are valid; answers where the first invalid one starts.
fn read_units(bytes: &[u8], mut at: usize, unit: Unit, events: &mut Vec<Event>) -> usize {
    while let Some((mut evs, next)) = unit(bytes, at) {
        events.append(&mut evs);
        at = next;
    }
    at
}

fn header(bytes: &[u8], at: usize) -> Option<(usize, u32)> {
    let h = bytes.get(at..at.checked_add(HEADER_BYTES)?)?;
    let len = u32::from_le_bytes(h[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(h[4..8].try_into().ok()?);
    Some((len, crc))
}

/// A frame's cheap plausibility test: a bounded, non-zero length and a JSON object after the
/// header. Scanning for valid data after damage tests every offset, so this comes before any
/// checksum.
fn plausible_frame(bytes: &[u8], at: usize) -> Option<(usize, u32)> {
    let (len, crc) = header(bytes, at)?;
    if len == 0 || len > FRAME_BYTES_MAX || bytes.get(at + HEADER_BYTES) != Some(&b'{') {
        return None;
    }
    Some((len, crc))
}

fn frame_at(bytes: &[u8], at: usize) -> Option<(Vec<Event>, usize)> {
    let (len, crc) = plausible_frame(bytes, at)?;
    let payload = bytes.get(at + HEADER_BYTES..at + HEADER_BYTES + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let event = crate::event_json::decode(payload).ok()?;
    Some((vec![event], at + HEADER_BYTES + len))
}

fn block_at(bytes: &[u8], at: usize) -> Option<(Vec<Event>, usize)> {
    let (len, crc) = header(bytes, at)?;
    if len == 0 || len > BLOCK_BYTES_MAX {
        return None;
    }
    let start = at + HEADER_BYTES;
    plausible_frame(bytes, start)?;
    let frames = bytes.get(start..start + len)?;
    if crc32fast::hash(frames) != crc {
        return None;
    }
    // The block's checksum held, so its frames are as written: all of them must decode and
    // fill it exactly.
    let mut events = Vec::new();
    let end = read_units(frames, 0, frame_at, &mut events);
    (end == len).then_some((events, start + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticketrush_core::{SaleId, SaleSpec, UnixMs};

    fn event(n: u64) -> Event {
        let id = SaleId::parse(&format!("s{n}")).unwrap();
        let spec = SaleSpec::new(id, None, n + 1, None, None, UnixMs(0)).unwrap();
        Event::SaleCreated {
            spec,
            at: UnixMs(n as i64),
        }
    }

    /// A format-2 journal of `blocks` blocks of two events each, then `zeros` zero bytes;
    /// answers it and where each block starts.
    fn journal(blocks: u64, zeros: usize) -> (Vec<u8>, Vec<usize>) {
        let mut out = MAGIC.to_vec();
        let mut starts = Vec::new();
        for b in 0..blocks {
            let mut frames = Vec::new();
            encode(&event(2 * b), &mut frames);
            encode(&event(2 * b + 1), &mut frames);
            starts.push(out.len());
            block(&frames, &mut out);
        }
        out.resize(out.len() + zeros, 0);
        (out, starts)
    }

    #[test]
    fn a_clean_journal_with_reserved_space_reads_whole() {
        let (bytes, starts) = journal(3, 4096);
        let s = scan(&bytes);
        assert_eq!(s.format, Format::V2);
        assert_eq!(s.events, (0..6).map(event).collect::<Vec<_>>());
        assert_eq!(s.data_end as usize, bytes.len() - 4096);
        assert_eq!(s.tail, Tail::Clean);
        assert_eq!(starts[0], MAGIC.len());
        let (events, end) = decode_blocks(&bytes[MAGIC.len()..]);
        assert_eq!((events.len(), end as usize), (6, bytes.len() - 4096 - 8));
    }

    #[test]
    fn a_torn_last_write_is_torn_at_every_cut() {
        let (full, starts) = journal(3, 0);
        let last = starts[2];
        for cut in last + 1..full.len() {
            // The write's bytes up to `cut` landed; the reserved zeros follow.
            let mut bytes = full[..cut].to_vec();
            bytes.resize(full.len() + 512, 0);
            let s = scan(&bytes);
            assert_eq!(s.events.len(), 4, "cut at {cut}");
            assert_eq!(s.data_end as usize, last);
            assert!(
                matches!(s.tail, Tail::Torn { .. }),
                "cut at {cut}: {:?}",
                s.tail
            );
        }
        // A last write whose first sector never landed but a later one did: still torn.
        let mut bytes = full.clone();
        bytes[last..last + 8].fill(0);
        assert!(matches!(scan(&bytes).tail, Tail::Torn { .. }));
    }

    #[test]
    fn damage_before_a_valid_block_is_damage_not_a_tail() {
        let (full, starts) = journal(4, 256);
        for at in starts[1]..starts[2] {
            for flip in [0x01u8, 0x80] {
                let mut bytes = full.clone();
                bytes[at] ^= flip;
                let s = scan(&bytes);
                assert_eq!(s.data_end as usize, starts[1], "flip at {at}");
                match s.tail {
                    Tail::Damaged {
                        resumes_at,
                        events_after,
                    } => {
                        assert_eq!(resumes_at as usize, starts[2]);
                        assert_eq!(events_after, (4..8).map(event).collect::<Vec<_>>());
                    }
                    other => panic!("flip at {at}: {other:?}"),
                }
            }
        }
        // A zeroed sector in the middle is damage too, not a clean end.
        let mut bytes = full.clone();
        bytes[starts[1]..starts[2]].fill(0);
        assert!(matches!(scan(&bytes).tail, Tail::Damaged { .. }));
    }

    #[test]
    fn format_1_frames_read_with_the_same_endings() {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for n in 0..3 {
            starts.push(bytes.len());
            encode(&event(n), &mut bytes);
        }
        let s = scan(&bytes);
        assert_eq!(
            (s.format, s.events.len(), s.tail.clone()),
            (Format::V1, 3, Tail::Clean)
        );
        let mut torn = bytes.clone();
        torn.truncate(bytes.len() - 3);
        assert_eq!(
            scan(&torn).tail,
            Tail::Torn {
                bytes: (bytes.len() - 3 - starts[2]) as u64
            }
        );
        let mut damaged = bytes.clone();
        damaged[starts[1] + 12] ^= 0x10;
        let s = scan(&damaged);
        assert_eq!(s.events.len(), 1);
        assert!(
            matches!(s.tail, Tail::Damaged { resumes_at, .. } if resumes_at as usize == starts[2])
        );
    }
}
