//! The contract in the repository: the OpenAPI document every node serves is the committed
//! `docs/openapi.json`, it documents every route the router serves, schemathesis finds nothing
//! against a live node, and every relative link of the docs resolves inside the repository.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::crash::spawn_serve;
use ticketrush_testkit::{TempDir, TestNode, ADMIN_TOKEN};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test]
async fn every_node_serves_the_committed_document() {
    let node = TestNode::start().await;
    let a = node.client.get("/api/v1/openapi.json").await;
    assert_eq!(a.status, 200);
    let committed: Value =
        serde_json::from_slice(&std::fs::read(repo().join("docs/openapi.json")).unwrap()).unwrap();
    assert_eq!(
        a.body, committed,
        "docs/openapi.json is stale: run `cargo run -q -- openapi > docs/openapi.json`"
    );
    assert_eq!(a.body["openapi"], "3.1.0");
    node.stop().await;
}

/// Every operation of the document reaches its handler (not the router's 404 or 405), and
/// every response the document declares carries X-Node-Id.
#[tokio::test]
async fn the_document_lists_what_the_router_serves() {
    let node = TestNode::start().await;
    let c = &node.client;
    let doc = c.get("/api/v1/openapi.json").await.body;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 11, "{:?}", paths.keys());
    for (path, item) in paths {
        let concrete = path
            .replace("{sale_id}", "no-such-sale")
            .replace("{reservation_id}", "no-such-reservation");
        for (method, op) in item.as_object().unwrap() {
            let url = format!("{}{concrete}", c.base);
            let req = match method.as_str() {
                "get" => c.http.get(&url),
                "post" => c.http.post(&url).json(&serde_json::json!({})),
                other => panic!("{path}: method {other} the router does not use"),
            };
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let code = body["error"].as_str().unwrap_or("");
            assert!(
                code != "method_not_allowed" && !(code == "not_found" && status == 404),
                "{method} {path} is documented but not routed: {status} {body}"
            );
            assert!(
                op["responses"].get(status.to_string()).is_some(),
                "{method} {path} answered {status}, which the document does not list"
            );
            for r in op["responses"].as_object().unwrap().values() {
                assert!(r["headers"]["X-Node-Id"].is_object(), "{method} {path}");
            }
        }
    }
    // And the other way: an undocumented path is the router's 404.
    assert_eq!(c.get("/api/v1/nothing").await.error(), "not_found");
    node.stop().await;
}

/// schemathesis (installed by scripts/test) generates requests from the committed document
/// against a real node: no 5xx, every status and content type documented, every body matching
/// its schema, schema-valid requests accepted. Deterministic, so a failure reproduces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_against_a_live_node() {
    let found = std::process::Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "schemathesis is not installed: run scripts/test, which installs it (pip)"
    );
    let dir = TempDir::new("schemathesis");
    let data = dir.0.to_str().unwrap();
    let (_child, c) = spawn_serve(&["--data-dir", data, "--sale", "st:100000"]).await;
    let out = tokio::process::Command::new("schemathesis")
        .args(["--no-color", "run"])
        .arg(repo().join("docs/openapi.json"))
        .args(["--url", &c.base])
        .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args(["--checks", "all", "--max-examples", "30"])
        .arg("--generation-deterministic")
        // Every warning but two: missing test data (the queue's and the waitlist's places have
        // ids made from 128 random bits, which generated requests cannot hit; their 404s are
        // checked against the document like every answer) and a low valid-input rate (most
        // generated sales reuse a few ids, so they meet `sale_exists`, a documented 409).
        .args([
            "--warnings",
            "missing_auth,base_url_mismatch,validation_mismatch,missing_deserializer,\
             unused_openapi_auth,unsupported_regex,method_not_allowed,unmatched_filter,\
             unresolvable_reference,rate_limited,dictionary_mismatch",
        ])
        // Its working files (.hypothesis) go to the test's temp dir, not the repository.
        .current_dir(&dir.0)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), out)
        .await
        .expect("schemathesis finished within 300 s")
        .expect("run schemathesis");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("No issues found"), "{text}");
}

/// Every relative link in README, ARCHITECTURE, BENCHMARKS and docs/ resolves inside the
/// repository, and no relative path they mention leads outside it.
#[test]
fn every_relative_link_of_the_docs_resolves() {
    let root = repo().canonicalize().unwrap();
    let mut files = vec![
        root.join("README.md"),
        root.join("ARCHITECTURE.md"),
        root.join("BENCHMARKS.md"),
    ];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        // Any relative path mentioned in the text (a link or not) stays inside the repository.
        for (i, _) in text.match_indices("../") {
            if i > 0 && !text[..i].ends_with(['(', ' ', '`', '[', '\n']) {
                continue;
            }
            let path: String = text[i..]
                .chars()
                .take_while(|c| !matches!(c, ')' | ' ' | '`' | '\n' | '#' | ']'))
                .collect();
            let inside = file
                .parent()
                .unwrap()
                .join(&path)
                .canonicalize()
                .is_ok_and(|p| p.starts_with(&root));
            assert!(
                inside,
                "{} mentions {path}, outside the repository",
                file.display()
            );
        }
        let mut rest = text.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            rest = &rest[end..];
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with('#')
                || target.contains(' ')
            {
                continue;
            }
            let path = target.split('#').next().unwrap();
            let resolved = file.parent().unwrap().join(path);
            let resolved = resolved
                .canonicalize()
                .unwrap_or_else(|_| panic!("{}: link {target} does not resolve", file.display()));
            assert!(
                resolved.starts_with(&root),
                "{}: link {target} leaves the repository",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked > 5,
        "only {checked} links found: is the parser right?"
    );
}
