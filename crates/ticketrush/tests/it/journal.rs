//! The embedded store on bad days, with the real binary: a journal damaged in the middle stops
//! the node (and `journal verify` / `journal salvage` bring every acknowledged sale back), and a
//! full disk (a real tmpfs the test mounts) is a 503 and not-ready, never a crash, and selling
//! resumes by itself when space returns.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::json;
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use crate::crash::spawn_node;
use ticketrush_testkit::{wait_until, TempDir};

async fn sigterm(child: &mut Child) {
    let pid = child.id().expect("running").to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the node stopped within 20 s after SIGTERM");
}

/// `ticketrush ARGS`, bounded to 30 s.
async fn run(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .args(args)
        .env("TICKETRUSH_LOG", "warn")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("finished within 30 s")
        .expect("run ticketrush")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_stops_the_node_and_salvage_brings_every_sale_back() {
    let dir = TempDir::new("damaged");
    let (mut child, c) = spawn_node(&dir.0).await;
    assert_eq!(c.create_sale("dmg", 1_000, json!({})).await.status, 201);
    let mut acked = Vec::new();
    for i in 0..300 {
        let a = c.reserve("dmg", &format!("u{i}")).await;
        assert_eq!(a.status, 201);
        let id = a.body["reservation_id"].as_str().unwrap().to_string();
        if i % 4 == 0 {
            assert_eq!(c.pay(&id, &format!("u{i}")).await.status, 200);
        }
        acked.push(id);
    }
    sigterm(&mut child).await;

    // One bit flipped in the middle of the history.
    let path = dir.0.join("journal.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let end = ticketrush_store::journal::scan(&bytes).data_end as usize;
    bytes[end / 2] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();

    // The node refuses to start, says where and what to run, and changes nothing.
    let dir_arg = dir.0.to_str().unwrap();
    let out = run(&["serve", "--listen", "127.0.0.1:0", "--data-dir", dir_arg]).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("is damaged at byte"), "{err}");
    assert!(err.contains("journal verify"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // verify names the reservations in doubt (the orders table has them, the journal lost).
    let out = run(&["journal", "verify", "--data-dir", dir_arg]).await;
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    assert!(report.contains("DAMAGED at byte"), "{report}");
    assert!(report.contains("reservations in doubt:"), "{report}");
    assert!(!report.contains("reservations in doubt: none"), "{report}");

    // salvage --install: the node starts, and every acknowledged reservation and payment is
    // there; no seat is sold twice.
    let out = run(&["journal", "salvage", "--data-dir", dir_arg, "--install"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("re-created"));
    let (mut child, c) = spawn_node(&dir.0).await;
    for (i, id) in acked.iter().enumerate() {
        let a = c.get(&format!("/api/v1/reservations/{id}")).await;
        assert_eq!(a.status, 200, "{id} lost");
        let want = if i % 4 == 0 { "paid" } else { "reserved" };
        assert_eq!(a.body["state"], want, "{id}");
    }
    assert_eq!(c.counts("dmg").await, (700, 225, 75, 1_000));
    assert_eq!(c.reserve("dmg", "u0").await.error(), "limit_reached");
    sigterm(&mut child).await;
    let out = run(&["journal", "verify", "--data-dir", dir_arg]).await;
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// Salvage of a journal whose sale had a waitlist: offers made from the damaged stretch are
/// re-created as offers (their waiting entries not offered twice), tickets the orders table says
/// were freed go to the waitlist as the ledger's own would, and the salvaged history adds up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salvage_keeps_the_waitlist_whole() {
    let dir = TempDir::new("damaged-wl");
    let (mut child, c) = spawn_node(&dir.0).await;
    assert_eq!(c.create_sale("wld", 40, json!({})).await.status, 201);
    let mut held = Vec::new();
    for i in 0..40 {
        let a = c.reserve("wld", &format!("u{i}")).await;
        assert_eq!(a.status, 201);
        held.push(a.body["reservation_id"].as_str().unwrap().to_string());
    }
    let mut waiting = Vec::new();
    for i in 0..12 {
        let w = c.join_waitlist("wld", &format!("w{i}")).await;
        assert_eq!(w.status, 201, "{w:?}");
        waiting.push(w.body["waitlist_id"].as_str().unwrap().to_string());
    }
    // Eight cancels: eight offers, the first four paid.
    let mut acked: Vec<(String, &str)> = Vec::new();
    for (i, id) in held.iter().enumerate().take(8) {
        assert_eq!(c.cancel(id, &format!("u{i}")).await.status, 200);
        acked.push((id.clone(), "cancelled"));
        let w = c.waitlist_entry("wld", &waiting[i]).await;
        assert_eq!(w.body["state"], "offered", "{w:?}");
        let rid = w.body["reservation_id"].as_str().unwrap().to_string();
        if i < 4 {
            assert_eq!(c.pay(&rid, &format!("w{i}")).await.status, 200);
            acked.push((rid, "paid"));
        } else {
            acked.push((rid, "reserved"));
        }
    }
    sigterm(&mut child).await;

    // One bit flipped at several places of the history, each on its own copy of the data dir:
    // among the reservations, the waitlist's joins, and the cancels with their offers.
    let end = ticketrush_store::journal::scan(&std::fs::read(dir.0.join("journal.log")).unwrap())
        .data_end as usize;
    for tenth in [3, 5, 6, 7, 8, 9] {
        let copy = TempDir::new("damaged-wl-copy");
        for entry in std::fs::read_dir(&dir.0).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.0.join(entry.file_name())).unwrap();
        }
        let path = copy.0.join("journal.log");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[end * tenth / 10] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let dir_arg = copy.0.to_str().unwrap();
        let out = run(&["journal", "salvage", "--data-dir", dir_arg, "--install"]).await;
        assert!(
            out.status.success(),
            "flip at {tenth}/10: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        eprintln!("flip at {tenth}/10: {}", text(&out.stdout));
        let (mut child, c) = spawn_node(&copy.0).await;
        for (id, state) in &acked {
            let a = c.get(&format!("/api/v1/reservations/{id}")).await;
            assert_eq!(
                (a.status, a.body["state"].as_str()),
                (200, Some(*state)),
                "flip at {tenth}/10: {id}"
            );
        }
        let (available, reserved, paid, total) = c.counts("wld").await;
        assert_eq!((available + reserved + paid, total), (40, 40));
        assert_eq!(
            available, 0,
            "flip at {tenth}/10: a ticket in the pool while people wait"
        );
        // The line still works: a cancel goes to the first entry still waiting.
        let mut next = None;
        for (i, w) in waiting.iter().enumerate() {
            let e = c.waitlist_entry("wld", w).await;
            if e.status == 200 && e.body["state"] == "waiting" && next.is_none() {
                next = Some(i);
            }
        }
        let next = next.expect("someone still waits");
        assert_eq!(c.cancel(&held[20], "u20").await.status, 200);
        let e = c.waitlist_entry("wld", &waiting[next]).await;
        assert_eq!(e.body["state"], "offered", "flip at {tenth}/10: {e:?}");
        sigterm(&mut child).await;
        let out = run(&["journal", "verify", "--data-dir", dir_arg]).await;
        assert!(out.status.success(), "{}", text(&out.stdout));
    }
}

/// A tmpfs of `mib` MiB mounted at a fresh dir, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(mib: u32) -> Option<Tmpfs> {
        let dir = std::env::temp_dir().join(format!("ticketrush-tmpfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fills the file system of `path` with a file of zeros until it is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

pub(crate) fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_changes_and_selling_resumes_when_space_returns() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root (scripts/test runs as root in CI)");
        return;
    }
    let fs = Tmpfs::mount(32).expect("mount a tmpfs (needs root and CAP_SYS_ADMIN)");
    let data = fs.0.join("data");
    let filler = fs.0.join("filler");
    let (mut child, c) = spawn_node(&data).await;
    assert_eq!(
        c.create_sale("full", 1_000_000, json!({})).await.status,
        201
    );
    assert_eq!(c.reserve("full", "before").await.status, 201);

    // The disk fills up under the node; it sells from its reserved journal space, then
    // refuses with 503 and Retry-After, never an abort.
    fill(&filler);
    let mut buyers = JoinSet::new();
    for w in 0..16 {
        let c = c.clone();
        buyers.spawn(async move {
            let (mut won, mut refused) = (Vec::new(), 0);
            for i in 0..5_000 {
                let a = c.reserve("full", &format!("w{w}-{i}")).await;
                match a.status {
                    201 => won.push(a.body["reservation_id"].as_str().unwrap().to_string()),
                    503 => {
                        assert_eq!(a.error(), "unavailable");
                        assert!(a.headers.contains_key("retry-after"));
                        refused += 1;
                        if refused >= 20 {
                            break;
                        }
                    }
                    s => panic!("unexpected {s}: {:?}", a.body),
                }
            }
            (won, refused)
        });
    }
    let mut won = Vec::new();
    let mut refused = 0;
    while let Some(r) = buyers.join_next().await {
        let (w, n) = r.unwrap();
        won.extend(w);
        refused += n;
    }
    assert!(
        refused > 0,
        "the disk never ran out after {} wins",
        won.len()
    );
    assert!(child.try_wait().unwrap().is_none(), "the node died");
    assert_eq!(c.get("/readyz").await.status, 503);
    assert_eq!(
        c.get("/api/v1/sales/full").await.status,
        200,
        "reads keep working"
    );

    // Space comes back: the node is ready again and sells, by itself.
    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            c.get("/readyz").await.status == 200
        })
        .await,
        "ready again after space was freed"
    );
    let a = c.reserve("full", "after").await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    won.push(a.body["reservation_id"].as_str().unwrap().to_string());

    // Restarted on a full disk (with its --sale, which exists): not ready, never
    // ready-then-abort, and every 201 is there.
    sigterm(&mut child).await;
    fill(&filler);
    let data_arg = data.to_str().unwrap();
    let (mut child, c) =
        crate::crash::spawn_serve(&["--data-dir", data_arg, "--sale", "full:1000000"]).await;
    for id in &won {
        let a = c.get(&format!("/api/v1/reservations/{id}")).await;
        assert_eq!(a.status, 200, "acknowledged {id} lost");
    }
    assert_eq!(
        c.get("/readyz").await.status,
        503,
        "a full disk is not ready"
    );
    assert_eq!(c.reserve("full", "while-full").await.status, 503);
    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            c.reserve("full", "freed").await.status == 201
        })
        .await
    );
    sigterm(&mut child).await;
    drop(c);
    drop(fs);
}

/// Compaction killed with SIGKILL at many moments (before, during, after its rename): the data
/// dir always opens with every acknowledged reservation and payment, and `journal verify` finds
/// it sound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_killed_at_any_moment_loses_nothing() {
    let dir = TempDir::new("compact-kill");
    let (mut child, c) = spawn_node(&dir.0).await;
    assert_eq!(c.create_sale("ck", 10_000, json!({})).await.status, 201);
    let mut buyers = JoinSet::new();
    for w in 0..16 {
        let c = c.clone();
        buyers.spawn(async move {
            let mut acked = Vec::new();
            for i in 0..150 {
                let user = format!("w{w}-{i}");
                let a = c.reserve("ck", &user).await;
                assert_eq!(a.status, 201);
                let id = a.body["reservation_id"].as_str().unwrap().to_string();
                // A settled history: half paid, a quarter cancelled.
                let state = match i % 4 {
                    0 | 1 => {
                        assert_eq!(c.pay(&id, &user).await.status, 200);
                        "paid"
                    }
                    2 => {
                        assert_eq!(c.cancel(&id, &user).await.status, 200);
                        "cancelled"
                    }
                    _ => "reserved",
                };
                acked.push((id, state));
            }
            acked
        });
    }
    let mut acked = Vec::new();
    while let Some(r) = buyers.join_next().await {
        acked.extend(r.unwrap());
    }
    sigterm(&mut child).await;
    let dir_arg = dir.0.to_str().unwrap().to_string();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..12 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut p = Command::new(env!("CARGO_BIN_EXE_ticketrush"))
            .args(["journal", "compact", "--data-dir", &dir_arg])
            .env("TICKETRUSH_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // From at once to after it is done: every moment of the rewrite is a candidate.
        tokio::time::sleep(Duration::from_millis(x % (20 + 10 * round))).await;
        let _ = p.start_kill();
        let _ = p.wait().await;
    }
    let out = run(&["journal", "verify", "--data-dir", &dir_arg]).await;
    assert!(out.status.success(), "{}", text(&out.stdout));
    let (mut child, c) = spawn_node(&dir.0).await;
    for (id, state) in &acked {
        let a = c.get(&format!("/api/v1/reservations/{id}")).await;
        assert_eq!(a.status, 200, "{id} lost");
        assert_eq!(a.body["state"], *state, "{id}");
    }
    let paid = acked.iter().filter(|(_, s)| *s == "paid").count() as u64;
    let reserved = acked.iter().filter(|(_, s)| *s == "reserved").count() as u64;
    assert_eq!(
        c.counts("ck").await,
        (10_000 - paid - reserved, reserved, paid, 10_000)
    );
    sigterm(&mut child).await;
    // Once more, to the end: the journal is the records now.
    let out = run(&["journal", "compact", "--data-dir", &dir_arg]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bytes = std::fs::read(dir.0.join("journal.log")).unwrap();
    let scan = ticketrush_store::journal::scan(&bytes);
    assert_eq!(scan.events.len(), 1 + acked.len());
}
