//! The journal file: an append-only sequence of framed, checksummed events.
//!
//! Frame: `len: u32 LE | crc32(payload): u32 LE | payload` where the payload is one event as
//! JSON (readable with a hex dump, and cheap next to an fsync). A crash can leave a torn frame
//! at the tail; [`read_all`] stops at the first frame that is short or fails its checksum and
//! reports the offset of the last good byte, so the file can be cut there before appending.

use std::fs::File;
use std::io::{self, Read};

use ticketrush_core::Event;

/// Largest frame we write or accept. An event is a few hundred bytes; anything near this is a
/// damaged length field, not an event.
pub const FRAME_BYTES_MAX: usize = 64 * 1024;
const HEADER_BYTES: usize = 8;

/// Appends one event's frame to `buf`.
pub fn encode(event: &Event, buf: &mut Vec<u8>) {
    let payload = serde_json::to_vec(event).expect("events always serialise");
    assert!(payload.len() <= FRAME_BYTES_MAX, "event frame too large");
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    buf.extend_from_slice(&payload);
}

/// Everything a journal holds, up to its first damaged frame.
#[derive(Debug)]
pub struct Replay {
    pub events: Vec<Event>,
    /// Bytes of whole, valid frames from the start: where appending must resume.
    pub good_len: u64,
    /// Bytes after `good_len` that were not a valid frame (a torn write at the tail).
    pub torn_bytes: u64,
}

pub fn read_all(file: &mut File) -> io::Result<Replay> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(decode_all(&bytes))
}

/// Decodes whole frames from the start of `bytes` (a slice of a journal starting at a frame).
pub fn decode_all(bytes: &[u8]) -> Replay {
    let mut events = Vec::new();
    let mut at = 0usize;
    while let Some((event, next)) = decode_one(bytes, at) {
        events.push(event);
        at = next;
    }
    Replay {
        events,
        good_len: at as u64,
        torn_bytes: (bytes.len() - at) as u64,
    }
}

fn decode_one(bytes: &[u8], at: usize) -> Option<(Event, usize)> {
    let header = bytes.get(at..at + HEADER_BYTES)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if len > FRAME_BYTES_MAX {
        return None;
    }
    let payload = bytes.get(at + HEADER_BYTES..at + HEADER_BYTES + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let event = serde_json::from_slice(payload).ok()?;
    Some((event, at + HEADER_BYTES + len))
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

    #[test]
    fn decodes_what_it_encodes() {
        let mut buf = Vec::new();
        for n in 0..3 {
            encode(&event(n), &mut buf);
        }
        let r = decode_all(&buf);
        assert_eq!(r.events, vec![event(0), event(1), event(2)]);
        assert_eq!((r.good_len, r.torn_bytes), (buf.len() as u64, 0));
    }

    #[test]
    fn stops_at_a_torn_tail_at_every_cut() {
        let mut buf = Vec::new();
        encode(&event(0), &mut buf);
        let first = buf.len();
        encode(&event(1), &mut buf);
        for cut in first..buf.len() {
            let r = decode_all(&buf[..cut]);
            assert_eq!(r.events, vec![event(0)], "cut at {cut}");
            assert_eq!(r.good_len, first as u64);
            assert_eq!(r.torn_bytes, (cut - first) as u64);
        }
    }

    #[test]
    fn stops_at_a_flipped_bit() {
        let mut buf = Vec::new();
        encode(&event(0), &mut buf);
        let first = buf.len();
        encode(&event(1), &mut buf);
        buf[first + HEADER_BYTES + 3] ^= 0x20;
        let r = decode_all(&buf);
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.good_len, first as u64);
    }
}
