//! The `orders` table of docs/API.md, defined once for both of its homes: SQLite in an
//! embedded node's data dir, PostgreSQL in a cluster.
//!
//! The columns are the same in both; only the time type differs (PostgreSQL's `timestamptz`,
//! SQLite's RFC 3339 text in UTC, which sorts and compares as the times do).

use ticketrush_core::ReservationState;

/// Where the table lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    /// One of `ReservationState::ALL`, checked by the table.
    State,
    Time,
}

struct Column {
    name: &'static str,
    kind: Kind,
    nullable: bool,
}

const fn col(name: &'static str, kind: Kind, nullable: bool) -> Column {
    Column {
        name,
        kind,
        nullable,
    }
}

/// The columns, in order (`reservation_id` is the key).
const COLUMNS: [Column; 8] = [
    col("reservation_id", Kind::Text, false),
    col("sale_id", Kind::Text, false),
    col("user_id", Kind::Text, false),
    col("state", Kind::State, false),
    col("created_at", Kind::Time, false),
    col("expires_at", Kind::Time, false),
    col("paid_at", Kind::Time, true),
    col("updated_at", Kind::Time, false),
];

/// The column names in order, comma-separated (for `INSERT` and `SELECT` lists).
pub fn column_list() -> String {
    COLUMNS.map(|c| c.name).join(", ")
}

/// `CREATE TABLE IF NOT EXISTS orders (…)` and its index on `sale_id`, in `dialect`.
pub fn create_table(dialect: Dialect) -> String {
    // `state = 'a' OR state = 'b' …`, not `state IN ('a', 'b', …)`: SQLite builds an
    // ephemeral index for an IN list of more than two values on every row it checks, which
    // cost about 12,000 instructions per order row (BENCHMARKS.md, issue 17). The same
    // meaning in both homes; tables made with the IN form keep it.
    let time = match dialect {
        Dialect::Sqlite => "text",
        Dialect::Postgres => "timestamptz",
    };
    let columns: Vec<String> = COLUMNS
        .iter()
        .map(|c| {
            let ty = match c.kind {
                Kind::Text | Kind::State => "text",
                Kind::Time => time,
            };
            let mut def = format!("    {} {ty}", c.name);
            if c.name == "reservation_id" {
                def.push_str(" PRIMARY KEY");
            } else if !c.nullable {
                def.push_str(" NOT NULL");
            }
            if c.kind == Kind::State {
                let states: Vec<String> = ReservationState::ALL
                    .iter()
                    .map(|s| format!("{} = '{}'", c.name, s.as_str()))
                    .collect();
                def.push_str(&format!(" CHECK ({})", states.join(" OR ")));
            }
            def
        })
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS orders (\n{}\n);\n\
         CREATE INDEX IF NOT EXISTS orders_sale_id ON orders (sale_id);\n",
        columns.join(",\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_homes_have_the_same_columns_and_state_check() {
        let pg = create_table(Dialect::Postgres);
        let lite = create_table(Dialect::Sqlite);
        assert_eq!(pg.replace("timestamptz", "text"), lite);
        assert!(pg.contains("reservation_id text PRIMARY KEY"), "{pg}");
        assert!(pg.contains("paid_at timestamptz,"), "{pg}");
        assert!(pg.contains("created_at timestamptz NOT NULL"), "{pg}");
        assert!(
            pg.contains(
                "CHECK (state = 'reserved' OR state = 'paid' OR state = 'cancelled' OR \
                 state = 'expired')"
            ),
            "{pg}"
        );
        assert_eq!(
            column_list(),
            "reservation_id, sale_id, user_id, state, created_at, expires_at, paid_at, updated_at"
        );
    }
}
