//! The journal's most common frame, a `reserved` event of the pool, written and read by hand.
//!
//! A win is one such frame: written once by the journal writer and read back by the orders
//! table's follower (and by every replay at start). Through serde they cost about 4,000
//! instructions to write and 7,600 to read (BENCHMARKS.md, issue 17). Here the frame is
//! written byte for byte as serde writes it, and read when it has exactly that layout; any
//! other frame, or one of that shape with a value the hand reader does not take (an escape in
//! a string, a negative time, an id that does not parse), goes through serde as before, with
//! its errors. Unit tests hold both paths equal, on valid frames and on damaged ones.

use ticketrush_core::{
    Event, IdempotencyKey, Reservation, ReservationId, ReservationState, SaleId, UnixMs, UserId,
};

/// Appends `event`'s JSON to `out`: the same bytes as `serde_json::to_writer`.
pub fn encode(event: &Event, out: &mut Vec<u8>) {
    match event {
        Event::Reserved {
            reservation: r,
            lease: 0,
            idempotency_key,
        } if plain(idempotency_key.as_ref().map_or("", IdempotencyKey::as_str)) => {
            out.extend_from_slice(b"{\"type\":\"reserved\",\"reservation\":{\"id\":\"");
            out.extend_from_slice(r.id.as_str().as_bytes());
            out.extend_from_slice(b"\",\"sale_id\":\"");
            out.extend_from_slice(r.sale_id.as_str().as_bytes());
            out.extend_from_slice(b"\",\"user_id\":\"");
            out.extend_from_slice(r.user_id.as_str().as_bytes());
            out.extend_from_slice(b"\",\"state\":\"");
            out.extend_from_slice(r.state.as_str().as_bytes());
            out.extend_from_slice(b"\",\"created_at\":");
            number(r.created_at.0, out);
            out.extend_from_slice(b",\"expires_at\":");
            number(r.expires_at.0, out);
            out.extend_from_slice(b",\"paid_at\":");
            match r.paid_at {
                Some(t) => number(t.0, out),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"updated_at\":");
            number(r.updated_at.0, out);
            out.extend_from_slice(b"},\"idempotency_key\":");
            match idempotency_key {
                Some(k) => {
                    out.push(b'"');
                    out.extend_from_slice(k.as_str().as_bytes());
                    out.push(b'"');
                }
                None => out.extend_from_slice(b"null"),
            }
            out.push(b'}');
        }
        _ => serde_json::to_writer(out, event).expect("events always serialise"),
    }
}

/// Reads one event's JSON: the hand reader for a `reserved` frame as `encode` writes it,
/// serde for anything else.
pub fn decode(payload: &[u8]) -> Result<Event, serde_json::Error> {
    match reserved(payload) {
        Some(event) => Ok(event),
        None => serde_json::from_slice(payload),
    }
}

/// Whether `s` is written in JSON as it is (no escapes): the ids' alphabet always is, an
/// idempotency key (printable ASCII) unless it holds `"` or `\`.
fn plain(s: &str) -> bool {
    s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

fn number(n: i64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let negative = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if negative {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[i..]);
}

/// A cursor over a frame that only moves forward on an exact match.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn lit(&mut self, s: &[u8]) -> Option<()> {
        self.rest = self.rest.strip_prefix(s)?;
        Some(())
    }

    /// A string's contents up to its closing quote, none if it holds an escape.
    fn string(&mut self) -> Option<&'a str> {
        let end = self.rest.iter().position(|&b| b == b'"' || b == b'\\')?;
        if self.rest[end] != b'"' {
            return None;
        }
        let s = std::str::from_utf8(&self.rest[..end]).ok()?;
        if s.bytes().any(|b| b < 0x20) {
            return None;
        }
        self.rest = &self.rest[end + 1..];
        Some(s)
    }

    /// A time: 1 to 18 digits (no sign, no leading zero but a lone 0), so it fits in i64.
    fn time(&mut self) -> Option<UnixMs> {
        let digits = self.rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 18 || (digits > 1 && self.rest[0] == b'0') {
            return None;
        }
        let mut v = 0i64;
        for &b in &self.rest[..digits] {
            v = v * 10 + i64::from(b - b'0');
        }
        self.rest = &self.rest[digits..];
        Some(UnixMs(v))
    }

    fn null_or<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.rest.starts_with(b"null") {
            self.rest = &self.rest[4..];
            Some(None)
        } else {
            read(self).map(Some)
        }
    }
}

/// A `reserved` event of the pool in exactly `encode`'s layout, or none.
fn reserved(payload: &[u8]) -> Option<Event> {
    let mut r = Reader { rest: payload };
    r.lit(b"{\"type\":\"reserved\",\"reservation\":{\"id\":\"")?;
    let id = r.string()?;
    r.lit(b",\"sale_id\":\"")?;
    let sale_id = r.string()?;
    r.lit(b",\"user_id\":\"")?;
    let user_id = r.string()?;
    r.lit(b",\"state\":\"")?;
    let state = ReservationState::parse(r.string()?)?;
    r.lit(b",\"created_at\":")?;
    let created_at = r.time()?;
    r.lit(b",\"expires_at\":")?;
    let expires_at = r.time()?;
    r.lit(b",\"paid_at\":")?;
    let paid_at = r.null_or(Reader::time)?;
    r.lit(b",\"updated_at\":")?;
    let updated_at = r.time()?;
    r.lit(b"},\"idempotency_key\":")?;
    let key = r.null_or(|r| {
        r.lit(b"\"")?;
        r.string()
    })?;
    r.lit(b"}")?;
    if !r.rest.is_empty() {
        return None;
    }
    Some(Event::Reserved {
        reservation: Reservation {
            id: ReservationId::parse(id).ok()?,
            sale_id: SaleId::parse(sale_id).ok()?,
            user_id: UserId::parse(user_id).ok()?,
            state,
            created_at,
            expires_at,
            paid_at,
            updated_at,
        },
        lease: 0,
        idempotency_key: match key {
            Some(k) => Some(IdempotencyKey::parse(k).ok()?),
            None => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reserved_event(
        state: ReservationState,
        times: [i64; 3],
        paid: Option<i64>,
        key: Option<&str>,
        user: &str,
    ) -> Event {
        Event::Reserved {
            reservation: Reservation {
                id: ReservationId::parse("01m8vsxwp4h76zm21zhmkswzkm.s-1").unwrap(),
                sale_id: SaleId::parse("s-1").unwrap(),
                user_id: UserId::parse(user).unwrap(),
                state,
                created_at: UnixMs(times[0]),
                expires_at: UnixMs(times[1]),
                paid_at: paid.map(UnixMs),
                updated_at: UnixMs(times[2]),
            },
            lease: 0,
            idempotency_key: key.map(|k| IdempotencyKey::parse(k).unwrap()),
        }
    }

    fn by_serde(e: &Event) -> Vec<u8> {
        serde_json::to_vec(e).unwrap()
    }

    /// Both readers agree: the same event, or both an error.
    fn same_reading(bytes: &[u8]) {
        let hand = decode(bytes);
        let serde: Result<Event, _> = serde_json::from_slice(bytes);
        match (&hand, &serde) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{}", String::from_utf8_lossy(bytes)),
            (Err(_), Err(_)) => {}
            _ => panic!(
                "readers disagree on {}: {hand:?} against {serde:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }

    proptest! {
        #[test]
        fn reserved_frames_are_written_as_serde_writes_them_and_read_back(
            state in prop::sample::select(ReservationState::ALL.to_vec()),
            times in prop::array::uniform3(-5i64..=i64::MAX),
            paid in prop::option::of(0i64..=4_102_444_800_000),
            key in prop::option::of("[ -~]{1,40}"),
            user in "[A-Za-z0-9._:-]{1,40}",
        ) {
            let e = reserved_event(state, times, paid, key.as_deref(), &user);
            let mut mine = Vec::new();
            encode(&e, &mut mine);
            prop_assert_eq!(&mine, &by_serde(&e));
            prop_assert_eq!(decode(&mine).unwrap(), e);
        }
    }

    #[test]
    fn the_hand_reader_takes_the_common_frame_and_leaves_the_rest_to_serde() {
        let common = reserved_event(
            ReservationState::Reserved,
            [1_796_229_493_474, 1_796_230_393_474, 1_796_229_493_474],
            None,
            None,
            "u0",
        );
        assert!(reserved(&by_serde(&common)).is_some(), "the win's frame");
        let keyed = reserved_event(
            ReservationState::Reserved,
            [1, 2, 3],
            Some(0),
            Some("k 1"),
            "u",
        );
        assert!(reserved(&by_serde(&keyed)).is_some());
        // An escaped key, a negative time, a lease: serde's, read back the same.
        for e in [
            reserved_event(
                ReservationState::Paid,
                [1, 2, 3],
                None,
                Some("a\"b\\c"),
                "u",
            ),
            reserved_event(ReservationState::Reserved, [-1, 2, 3], None, None, "u"),
            match common.clone() {
                Event::Reserved {
                    reservation,
                    idempotency_key,
                    ..
                } => Event::Reserved {
                    reservation,
                    lease: 7,
                    idempotency_key,
                },
                _ => unreachable!(),
            },
        ] {
            let bytes = by_serde(&e);
            assert!(reserved(&bytes).is_none());
            let mut mine = Vec::new();
            encode(&e, &mut mine);
            assert_eq!(mine, bytes);
            assert_eq!(decode(&bytes).unwrap(), e);
        }
    }

    #[test]
    fn damaged_frames_read_as_serde_reads_them() {
        let e = reserved_event(
            ReservationState::Paid,
            [1_796_229_493_474, 1_796_230_393_474, 1_796_229_493_999],
            Some(1_796_229_493_999),
            Some("order-42"),
            "user.7",
        );
        let good = by_serde(&e);
        same_reading(&good);
        for cut in 0..good.len() {
            same_reading(&good[..cut]);
        }
        let mut trailing = good.clone();
        trailing.extend_from_slice(b" ");
        same_reading(&trailing);
        trailing.extend_from_slice(b"x");
        same_reading(&trailing);
        for at in 0..good.len() {
            for b in [
                b'"', b'\\', b'0', b'9', b'-', b' ', b'x', b'{', b'}', 0x01, 0xff,
            ] {
                let mut bad = good.clone();
                bad[at] = b;
                same_reading(&bad);
            }
        }
        // Values the ids refuse, a leading zero, a time past i64, another state.
        for text in [
            good_with(&good, "\"user.7\"", "\"user 7\""),
            good_with(&good, "\"user.7\"", "\"\""),
            good_with(&good, "1796229493474,", "01796229493474,"),
            good_with(&good, "1796229493474,", "99999999999999999999,"),
            good_with(&good, "\"paid\"", "\"sold\""),
            good_with(&good, "\"order-42\"", "\"\""),
        ] {
            same_reading(text.as_bytes());
        }
    }

    fn good_with(good: &[u8], from: &str, to: &str) -> String {
        let s = String::from_utf8(good.to_vec()).unwrap();
        assert!(s.contains(from), "{s} lacks {from}");
        s.replacen(from, to, 1)
    }
}
