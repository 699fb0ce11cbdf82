//! Stream entries as the scripts write them, read back into order rows.
//!
//! A reservation event has the fields `t` (the state after the change), `r` (reservation ids)
//! and `u` (their users), `c`, `e`, `p`, `m` (created, expires, paid, updated: Unix ms, `p` 0
//! when not paid). One `reserved` entry carries a whole batch: `r` and `u` list the ids and
//! users in the same order, separated by spaces (neither can contain one); every other entry
//! names one reservation. Lease and sale events have other `t`s and are acknowledged without
//! a row.

use std::collections::HashMap;

use redis::Value;
use ticketrush_core::{Reservation, ReservationId, ReservationState, SaleId, UnixMs, UserId};

use crate::{OrdersError, OrdersResult};

/// One stream entry: its id and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub fields: Vec<(String, String)>,
}

impl Entry {
    fn get(&self, k: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(f, _)| f == k)
            .map(|(_, v)| v.as_str())
    }

    /// The rows this entry writes: none for a lease or sale event.
    pub fn rows(&self, sale: &SaleId) -> OrdersResult<Vec<Reservation>> {
        let state = match self.get("t") {
            Some("reserved") => ReservationState::Reserved,
            Some("paid") => ReservationState::Paid,
            Some("cancelled") => ReservationState::Cancelled,
            Some("expired") => ReservationState::Expired,
            _ => return Ok(Vec::new()),
        };
        let bad = |what: &str| OrdersError::Bad(format!("entry {} has a bad {what}", self.id));
        let num = |k: &str| -> OrdersResult<i64> {
            self.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(k))
        };
        let paid = num("p")?;
        let (created, expires, updated) = (num("c")?, num("e")?, num("m")?);
        let ids = self.get("r").unwrap_or("").split(' ');
        let users = self.get("u").unwrap_or("").split(' ');
        let (n_ids, n_users) = (ids.clone().count(), users.clone().count());
        if n_ids != n_users {
            return Err(bad("r/u pairing"));
        }
        ids.zip(users)
            .map(|(id, user)| {
                Ok(Reservation {
                    id: ReservationId::parse(id).map_err(|_| bad("r"))?,
                    sale_id: sale.clone(),
                    user_id: UserId::parse(user).map_err(|_| bad("u"))?,
                    state,
                    created_at: UnixMs(created),
                    expires_at: UnixMs(expires),
                    paid_at: (paid > 0).then_some(UnixMs(paid)),
                    updated_at: UnixMs(updated),
                })
            })
            .collect()
    }
}

/// The milliseconds part of a stream id (`ms-seq`).
pub fn id_ms(id: &str) -> Option<i64> {
    id.split('-').next()?.parse().ok()
}

/// Keeps one row per reservation: a final state over `reserved` (the same rule as the upsert),
/// so one statement never names a row twice.
pub fn latest_per_reservation(rows: Vec<Reservation>) -> Vec<Reservation> {
    let mut by_id: HashMap<ReservationId, Reservation> = HashMap::with_capacity(rows.len());
    for r in rows {
        match by_id.get(&r.id) {
            Some(old) if old.state != ReservationState::Reserved => {}
            _ => {
                by_id.insert(r.id.clone(), r);
            }
        }
    }
    by_id.into_values().collect()
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses `[[id, [field, value, ...]], ...]`, the entries of XRANGE, XREADGROUP and XAUTOCLAIM.
/// An entry deleted from the stream while pending comes back as `[id, nil]`: skipped.
pub fn parse_entries(v: &Value) -> Vec<Entry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else { continue };
        let (Some(id), Some(Value::Array(kv))) = (pair.first().and_then(text), pair.get(1)) else {
            continue;
        };
        let fields = kv
            .chunks(2)
            .filter_map(|c| Some((text(c.first()?)?, text(c.get(1)?)?)))
            .collect();
        out.push(Entry { id, fields });
    }
    out
}

/// Parses an XREADGROUP reply: `[[stream key, entries], ...]` (nil when nothing is new).
pub fn parse_read(v: &Value) -> Vec<(String, Vec<Entry>)> {
    let Value::Array(streams) = v else {
        return Vec::new();
    };
    streams
        .iter()
        .filter_map(|s| {
            let Value::Array(pair) = s else { return None };
            Some((text(pair.first()?)?, parse_entries(pair.get(1)?)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: &str, id: &str, m: i64) -> Entry {
        let f = |k: &str, v: &str| (k.to_string(), v.to_string());
        Entry {
            id: "1-0".into(),
            fields: vec![
                f("t", t),
                f("r", id),
                f("u", "u1"),
                f("c", "10"),
                f("e", "20"),
                f("p", if t == "paid" { "15" } else { "0" }),
                f("m", &m.to_string()),
            ],
        }
    }

    #[test]
    fn reservation_events_become_rows_and_others_do_not() {
        let sale = SaleId::parse("S").unwrap();
        let r = entry("paid", "a.S", 15).rows(&sale).unwrap().remove(0);
        assert_eq!(r.state, ReservationState::Paid);
        assert_eq!(r.paid_at, Some(UnixMs(15)));
        let lease = Entry {
            id: "1-1".into(),
            fields: vec![("t".into(), "lease_granted".into())],
        };
        assert_eq!(lease.rows(&sale).unwrap(), vec![]);
        let mut broken = entry("reserved", "a.S", 10);
        broken.fields.retain(|(k, _)| k != "c");
        assert!(broken.rows(&sale).is_err());
        // A batch entry: ids and users paired in order; a count mismatch is refused.
        let mut batch = entry("reserved", "a.S b.S", 10);
        batch.fields.retain(|(k, _)| k != "u");
        batch.fields.push(("u".into(), "u1 u2".into()));
        let rows = batch.rows(&sale).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[1].id.as_str(), rows[1].user_id.as_str()),
            ("b.S", "u2")
        );
        batch.fields.retain(|(k, _)| k != "u");
        batch.fields.push(("u".into(), "u1".into()));
        assert!(batch.rows(&sale).is_err());
    }

    #[test]
    fn a_final_state_wins_over_reserved_in_any_order() {
        let sale = SaleId::parse("S").unwrap();
        let reserved = entry("reserved", "a.S", 10).rows(&sale).unwrap().remove(0);
        let expired = entry("expired", "a.S", 30).rows(&sale).unwrap().remove(0);
        for rows in [
            vec![reserved.clone(), expired.clone()],
            vec![expired.clone(), reserved.clone()],
        ] {
            let out = latest_per_reservation(rows);
            assert_eq!(out, vec![expired.clone()]);
        }
    }

    #[test]
    fn stream_ids_give_their_milliseconds() {
        assert_eq!(id_ms("1764054000123-7"), Some(1_764_054_000_123));
        assert_eq!(id_ms("x"), None);
    }
}
