//! `ticketrush journal verify|salvage|compact --data-dir DIR`: the operator's tools for an
//! embedded data dir, above all one whose node refused to open it (see
//! `ticketrush_orders::verify`). None needs the node running; run `salvage --install` and
//! `compact` with no node on the data dir.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};
use ticketrush_orders::verify::{self, Verify};
use ticketrush_store::journal::{Format, Tail};

#[derive(Args)]
pub struct JournalArgs {
    #[command(subcommand)]
    pub command: JournalCommand,
}

#[derive(Subcommand)]
pub enum JournalCommand {
    /// Read the journal and the orders table, change nothing, and report damage and every
    /// reservation the two disagree on; exit 1 unless the data dir is sound.
    Verify(DirArgs),
    /// Rewrite the journal as the state it holds, one record per sale and reservation (a node
    /// also does this when it opens a journal whose history outgrew its records). No node may
    /// be running on the data dir.
    Compact(DirArgs),
    /// Write a repaired journal (journal.salvaged.log) from the readable journal and the
    /// orders table, and report what it kept, re-created and dropped. With --install, also put
    /// it in place (the damaged one is kept as journal.damaged.log).
    Salvage(SalvageArgs),
}

#[derive(Args)]
pub struct DirArgs {
    /// The node's data directory.
    #[arg(long, env = "TICKETRUSH_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

#[derive(Args)]
pub struct SalvageArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    /// Put the salvaged journal in place of the damaged one (no node may be running).
    #[arg(long)]
    pub install: bool,
}

pub fn run(args: JournalArgs) -> anyhow::Result<()> {
    match args.command {
        JournalCommand::Verify(a) => {
            let v = verify::verify(&a.data_dir)?;
            print_verify(&v);
            if !v.healthy() {
                bail!(
                    "the data dir is not sound; `ticketrush journal salvage --data-dir {}` writes \
                     a repaired journal beside it",
                    a.data_dir.display()
                );
            }
            println!("sound: a node can open this data dir");
            Ok(())
        }
        JournalCommand::Compact(a) => {
            let before = std::fs::metadata(a.data_dir.join("journal.log"))?.len();
            let (store, rec) = ticketrush_store::EmbeddedStore::open(
                &a.data_dir,
                ticketrush_store::embedded::Options {
                    compaction: ticketrush_store::embedded::Compaction::Always,
                    ..ticketrush_orders::embedded_options()
                },
            )?;
            drop(store);
            let after = std::fs::metadata(a.data_dir.join("journal.log"))?.len();
            println!(
                "compacted: {} events of history into records; journal {before} bytes before, \
                 {after} after (of which {} MiB reserved ahead)",
                rec.events,
                ticketrush_store::embedded::JOURNAL_RESERVE_BYTES / (1024 * 1024)
            );
            Ok(())
        }
        JournalCommand::Salvage(a) => {
            let dir = &a.dir.data_dir;
            let s = verify::salvage(dir, a.install).map_err(|e| anyhow::anyhow!(e))?;
            println!("salvaged journal: {}", s.path.display());
            println!("  kept {} events from before the damage", s.kept_before);
            println!(
                "  re-created {} reservations from the orders table (their idempotency keys are \
                 lost: the table does not hold them){}",
                s.recreated.len(),
                list(s.recreated.iter().map(|id| id.to_string()))
            );
            println!("  kept {} events from after the damage", s.kept_after);
            println!(
                "  took {} later states (paid, cancelled, expired) from the orders table{}",
                s.settled_from_table.len(),
                list(s.settled_from_table.iter().map(|id| id.to_string()))
            );
            println!(
                "  dropped {} events that no longer apply{}",
                s.dropped.len(),
                list(s.dropped.iter().cloned())
            );
            println!(
                "  could not re-create {}{}",
                s.unrecoverable.len(),
                list(s.unrecoverable.iter().cloned())
            );
            if a.install {
                println!(
                    "installed; the damaged journal is kept as {}; the orders table follows the \
                     new journal from its start",
                    dir.join(verify::DAMAGED_FILE).display()
                );
            } else {
                println!(
                    "nothing else changed; check the above, then run again with --install (no \
                     node running)"
                );
            }
            Ok(())
        }
    }
}

/// Up to 20 items, one per line.
fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    let mut out = String::new();
    for it in items.iter().take(20) {
        out.push_str("\n    ");
        out.push_str(it);
    }
    if items.len() > 20 {
        out.push_str(&format!("\n    … and {} more", items.len() - 20));
    }
    out
}

fn print_verify(v: &Verify) {
    let format = match v.format {
        Format::V1 => "1 (first version; a node converts it when it opens)",
        Format::V2 => "2",
    };
    println!(
        "journal: format {format}, {} bytes, {} readable events up to byte {}",
        v.file_len, v.events, v.data_end
    );
    match &v.tail {
        Tail::Clean => println!("  ends cleanly"),
        Tail::Torn { bytes } => println!(
            "  ends in an unfinished write of {bytes} bytes (a crash mid-write; never \
             acknowledged; a node zeroes it when it opens)"
        ),
        Tail::Damaged {
            resumes_at,
            events_after,
        } => println!(
            "  DAMAGED at byte {}: valid data resumes at byte {resumes_at} ({})",
            v.data_end,
            ticketrush_store::embedded::describe(events_after)
        ),
    }
    if let Some((i, why)) = &v.replay_error {
        println!("  event {i} does not apply to the history before it: {why}");
    }
    match v.table {
        None => println!("orders table: none"),
        Some((rows, offset)) => {
            println!("orders table: {rows} rows, written from the journal up to byte {offset}");
            if v.table_ahead() {
                println!(
                    "  AHEAD of the journal (which ends at byte {}): the journal lost history \
                     the table was built from",
                    v.data_end
                );
            }
        }
    }
    if v.in_doubt.is_empty() {
        println!("reservations in doubt: none");
    } else {
        println!(
            "reservations in doubt: {} (the orders table has them; the readable journal has \
             not, or has an older state):",
            v.in_doubt.len()
        );
        for d in v.in_doubt.iter().take(50) {
            println!(
                "  {} sale {} user {}: table {}, journal {}",
                d.row.id,
                d.row.sale_id,
                d.row.user_id,
                d.row.state.as_str(),
                d.journal_state.map_or("missing", |s| s.as_str())
            );
        }
        if v.in_doubt.len() > 50 {
            println!("  … and {} more", v.in_doubt.len() - 50);
        }
    }
}
