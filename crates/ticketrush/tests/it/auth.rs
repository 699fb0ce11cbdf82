//! Proven users (`--user-auth jwt`): the user a reservation, payment or cancellation acts for
//! is the bearer token's `sub`; other users' tokens, forged or expired tokens, a body naming
//! someone else and no token are refused with the documented 401/403. Also the real binary with
//! an Ed25519 public key made by `openssl` and the generator minting HS256 tokens.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use ticketrush_server::auth::{KeySource, UserAuth};

use ticketrush_testkit::{config, Answer, Client, TempDir, TestNode};

const SECRET: &[u8] = b"a-test-secret-of-at-least-thirty-two-bytes!";

fn token(key: &EncodingKey, alg: Algorithm, claims: Value) -> String {
    encode(&Header::new(alg), &claims, key).unwrap()
}

fn hs256(sub: &str) -> String {
    token(
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
        json!({"sub": sub, "exp": get_current_timestamp() + 600}),
    )
}

async fn send(c: &Client, path: &str, bearer: Option<&str>, body: Value) -> Answer {
    let mut req = c.http.post(format!("{}{path}", c.base)).json(&body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    c.send(req).await
}

async fn jwt_node() -> TestNode {
    let auth = UserAuth::new(KeySource::Secret(SECRET), None, None).unwrap();
    let mut cfg = config("jwt-node");
    cfg.user_auth = Some(Arc::new(auth));
    TestNode::start_with(cfg).await
}

#[tokio::test]
async fn a_token_proves_the_user_and_nothing_else_passes() {
    let node = jwt_node().await;
    let c = node.client.clone();
    assert_eq!(
        c.create_sale("proven", 10, json!({"per_user_limit": 3}))
            .await
            .status,
        201
    );
    let path = "/api/v1/sales/proven/reservations";
    let alice = hs256("alice");

    // A valid token reserves as its sub, with or without the same user_id in the body.
    let a = send(&c, path, Some(&alice), json!({})).await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["user_id"], "alice");
    let id = a.body["reservation_id"].as_str().unwrap().to_string();
    let a = send(&c, path, Some(&alice), json!({"user_id": "alice"})).await;
    assert_eq!(a.status, 201, "{:?}", a.body);

    // Refusals: no token, a forged one, an expired one, a body naming someone else.
    let forged = token(
        &EncodingKey::from_secret(b"another-secret-that-is-also-thirty-two-bytes"),
        Algorithm::HS256,
        json!({"sub": "alice", "exp": get_current_timestamp() + 600}),
    );
    let expired = token(
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
        json!({"sub": "alice", "exp": get_current_timestamp() - 300}),
    );
    for (bearer, body, status, code, says) in [
        (
            None,
            json!({"user_id": "alice"}),
            401,
            "unauthorized",
            "Bearer",
        ),
        (
            Some(forged.as_str()),
            json!({}),
            401,
            "unauthorized",
            "signature",
        ),
        (
            Some(expired.as_str()),
            json!({}),
            401,
            "unauthorized",
            "expired",
        ),
        (Some("not.a.jwt"), json!({}), 401, "unauthorized", "JWT"),
        (
            Some(alice.as_str()),
            json!({"user_id": "mallory"}),
            403,
            "forbidden",
            "token",
        ),
    ] {
        let mut r = c.http.post(format!("{}{path}", c.base)).json(&body);
        if let Some(t) = bearer {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{bearer:?} {body}");
        if status == 401 {
            assert_eq!(
                resp.headers()["www-authenticate"].to_str().unwrap(),
                "Bearer"
            );
        }
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["error"], code, "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(says),
            "{answer} should say {says:?}"
        );
    }
    assert_eq!(
        c.counts("proven").await.1,
        2,
        "only the two proven reservations"
    );

    // Another user's token can neither pay nor cancel alice's hold; hers can.
    let bob = hs256("bob");
    for action in ["pay", "cancel"] {
        let p = format!("/api/v1/reservations/{id}/{action}");
        let a = send(&c, &p, Some(&bob), json!({})).await;
        assert_eq!(a.status, 403, "{action}: {:?}", a.body);
        assert_eq!(a.error(), "forbidden");
        // Naming alice in the body does not help bob.
        let a = send(&c, &p, Some(&bob), json!({"user_id": "alice"})).await;
        assert_eq!(a.status, 403, "{action}: {:?}", a.body);
        let a = send(&c, &p, None, json!({"user_id": "alice"})).await;
        assert_eq!(a.status, 401, "{action}: {:?}", a.body);
    }
    let a = send(
        &c,
        &format!("/api/v1/reservations/{id}/pay"),
        Some(&alice),
        json!({}),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["state"], "paid");

    // The prototype's endpoint acts for the token's user too.
    let r = c
        .http
        .get(format!("{}/buy/ticket?sale_id=proven", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .http
        .get(format!("{}/buy/ticket?sale_id=proven", c.base))
        .bearer_auth(hs256("carol"))
        .send()
        .await
        .unwrap();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["code"], 1, "{answer}");
    assert_eq!(answer["data"]["user_id"], "carol");
    node.stop().await;
}

/// The real binary with an Ed25519 public key (EdDSA), issuer and audience checked, and the
/// generator minting HS256 tokens against a node with a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_verifies_eddsa_tokens_and_bench_mints_hs256_ones() {
    let dir = TempDir::new("jwt-keys");
    let private = dir.0.join("ed.pem");
    let public = dir.0.join("ed.pub.pem");
    let ok = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private)
        .status()
        .expect("openssl is installed")
        .success();
    assert!(ok, "openssl genpkey");
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl pkey -pubout");
    let data = TempDir::new("jwt-serve");
    let (_child, c) = crate::crash::spawn_serve(&[
        "--data-dir",
        data.0.to_str().unwrap(),
        "--user-auth",
        "jwt",
        "--jwt-public-key-file",
        public.to_str().unwrap(),
        "--jwt-issuer",
        "tickets.example",
        "--jwt-audience",
        "ticketrush",
    ])
    .await;
    assert_eq!(c.create_sale("ed", 5, json!({})).await.status, 201);
    let key = EncodingKey::from_ed_pem(&std::fs::read(&private).unwrap()).unwrap();
    let claims = |iss: &str| {
        json!({"sub": "dave", "exp": get_current_timestamp() + 600,
               "iss": iss, "aud": "ticketrush"})
    };
    let good = token(&key, Algorithm::EdDSA, claims("tickets.example"));
    let wrong_issuer = token(&key, Algorithm::EdDSA, claims("elsewhere"));
    let path = "/api/v1/sales/ed/reservations";
    let a = send(&c, path, Some(&wrong_issuer), json!({})).await;
    assert_eq!(a.status, 401, "{:?}", a.body);
    // An HS256 token "signed" with the public key's bytes is the classic confusion attack.
    let confused = token(
        &EncodingKey::from_secret(&std::fs::read(&public).unwrap()),
        Algorithm::HS256,
        claims("tickets.example"),
    );
    let a = send(&c, path, Some(&confused), json!({})).await;
    assert_eq!(a.status, 401, "{:?}", a.body);
    let a = send(&c, path, Some(&good), json!({})).await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["user_id"], "dave");

    // The generator against a node with an HS256 secret: every win is a proven user.
    let secret_file = dir.0.join("secret");
    std::fs::write(&secret_file, [SECRET, b"\n"].concat()).unwrap();
    let data = TempDir::new("jwt-bench");
    let (_child2, c2) = crate::crash::spawn_serve(&[
        "--data-dir",
        data.0.to_str().unwrap(),
        "--user-auth",
        "jwt",
        "--jwt-secret-file",
        secret_file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(c2.create_sale("minted", 50, json!({})).await.status, 201);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .args([
            "bench", "--target", &c2.base, "--sale", "minted", "--users", "400",
        ])
        .args(["--connections", "8", "--quiet", "--jwt-secret-file"])
        .arg(&secret_file)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("bench within 60 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("succeeded 50"), "{text}");
    assert!(text.contains("other 0"), "{text}");
}
