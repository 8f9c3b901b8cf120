//! Leaked keys, black box (API.md §Operator API): `POST /operator/v1/leaked-keys` revokes
//! (or, with `--on-leak disable`, disables) each reported string that is a working key,
//! answers for every string in order, writes `key.leaked` to the account's audit log and
//! delivers it to webhook subscribers; `POST /secret-scanning/github` does the same for
//! GitHub's signed requests, verified against a keys file the test writes with a P-256
//! key pair of its own. On SQLite, or PostgreSQL with `KEYWARD_TEST_BACKEND=postgres`;
//! the cross-node test always on PostgreSQL.

#![expect(
    clippy::unwrap_used,
    reason = "tests: a failed unwrap is a failed test"
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Account, Reply, Server, client, create_key, eventually, get, post, send};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use serde_json::{Value, json};

const LEAKED: &str = "/operator/v1/leaked-keys";
const GITHUB: &str = "/secret-scanning/github";

/// Makes an operator through the CLI; returns its key.
fn operator_key(server: &Server) -> String {
    let out = server.cli(&["operators", "create", "--name", "security", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["api_key"].as_str().unwrap().to_owned()
}

/// `POST /v1/api-keys/validate` with `key`: whether it is valid.
async fn works(server: &Server, key: &str) -> bool {
    let r = send(
        client()
            .post(server.url("/v1/api-keys/validate"))
            .header("x-api-key", key),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body["valid"] == true
}

/// The account's audit events, newest first, of one action.
async fn audit_events(server: &Server, account: &Account, action: &str) -> Vec<Value> {
    let r = get(
        server,
        &account.api_key,
        &format!("/v1/audit-log?action={action}"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body["events"].as_array().unwrap().clone()
}

/// Every change the database shows for an account: its keys as listed, and its audit log.
async fn state_of(server: &Server, account: &Account) -> (Value, Value) {
    let keys = get(server, &account.api_key, "/v1/api-keys").await;
    let audit = get(server, &account.api_key, "/v1/audit-log").await;
    (keys.body["data"].clone(), audit.body["events"].clone())
}

/// A string of the key format whose checksum is wrong: its last character changed.
fn with_bad_checksum(key: &str) -> String {
    let mut s = key.to_owned();
    let last = s.pop().unwrap();
    s.push(if last == 'A' { 'B' } else { 'A' });
    s
}

/// A string of the key format whose checksum holds but which no key has.
const UNKNOWN_KEY: &str = "kw_00000000000000000000000000000000";

/// A well-formed key no server issued: 32 random characters and their checksum.
fn unknown_key() -> String {
    // The checksum is CRC32 in base62 (API.md §Key format); written out so the test does
    // not borrow keyward's code for it.
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let random = UNKNOWN_KEY.strip_prefix("kw_").unwrap();
    let mut crc: u32 = !0;
    for byte in random.bytes() {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    let mut n = u64::from(!crc);
    let mut checksum = [b'0'; 6];
    for slot in checksum.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    format!("{UNKNOWN_KEY}{}", String::from_utf8_lossy(&checksum))
}

#[tokio::test]
async fn a_report_revokes_live_keys_and_answers_for_every_string_in_order() {
    // Arrange
    let server = Server::start();
    let op = operator_key(&server);
    let acct = server.create_account("pro");
    let other = server.create_account("free");
    let (leaked_id, leaked) = create_key(
        &server,
        &acct.api_key,
        &json!({"scopes": ["read"], "name": "ci"}),
    )
    .await;
    let (gone_id, gone) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;
    assert_eq!(
        common::delete(&server, &acct.api_key, &format!("/v1/api-keys/{gone_id}"))
            .await
            .status,
        204
    );
    let (_, bystander) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;
    // Cached on this node before the report: only the report's own invalidation refuses
    // it at once.
    assert!(works(&server, &leaked).await);
    let unknown = unknown_key();
    let bad_checksum = with_bad_checksum(&leaked);

    // Act
    let r = post(
        &server,
        &op,
        LEAKED,
        &json!({
            "keys": [&leaked, &unknown, &bad_checksum, &gone, "not a key", &other.api_key],
            "source": "pastebin",
            "url": "https://pastebin.example/raw/abc",
        }),
    )
    .await;

    // Assert
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.text.contains(&leaked), "the answer never holds a secret");
    let results = r.body["results"].as_array().unwrap();
    let hint = |key: &str| format!("kw_{}…{}", &key[3..7], &key[key.len() - 4..]);
    let expected = [
        (hint(&leaked), json!(leaked_id), "revoked"),
        (hint(&unknown), Value::Null, "none"),
        (hint(&bad_checksum), Value::Null, "none"),
        (hint(&gone), Value::Null, "none"),
        ("…".to_owned(), Value::Null, "none"),
        (hint(&other.api_key), json!(other.key_id), "revoked"),
    ];
    assert_eq!(results.len(), expected.len(), "{r:?}");
    for (result, (hint, key_id, action)) in results.iter().zip(expected) {
        assert_eq!(result["hint"], hint.as_str(), "{result}");
        assert_eq!(result["key_id"], key_id, "{result}");
        assert_eq!(result["action"], action, "{result}");
    }
    assert!(!works(&server, &leaked).await, "refused at once");
    assert!(!works(&server, &other.api_key).await);
    assert!(works(&server, &bystander).await, "other keys are untouched");
    let listed = get(&server, &acct.api_key, &format!("/v1/api-keys/{leaked_id}")).await;
    assert_eq!(listed.status, 404, "revoked: gone from the account");

    let events = audit_events(&server, &acct, "key.leaked").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["key_id"], leaked_id.as_str());
    assert_eq!(event["actor_key_id"], Value::Null, "an operator's change");
    assert_eq!(event["request_id"], r.header("x-request-id").unwrap());
    assert_eq!(
        event["changes"],
        json!({
            "action": "revoked",
            "hint": hint(&leaked),
            "name": "ci",
            "scopes": ["read"],
            "source": "pastebin",
            "url": "https://pastebin.example/raw/abc",
        })
    );
    let all = get(&server, &acct.api_key, "/v1/audit-log").await;
    assert!(
        !all.text.contains(&leaked),
        "the audit log never holds a secret"
    );
    // The operator log has both revocations, with the operator as their actor.
    let operator_log = get(&server, &op, "/operator/v1/audit-log?action=key.leaked").await;
    assert_eq!(operator_log.status, 200, "{operator_log:?}");
    let mut in_operator_log: Vec<&str> = operator_log.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(
                e["actor_key_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("op_")),
                "{e}"
            );
            assert_eq!(e["request_id"], r.header("x-request-id").unwrap());
            e["key_id"].as_str().unwrap()
        })
        .collect();
    in_operator_log.sort_unstable();
    let mut revoked = [leaked_id.as_str(), other.key_id.as_str()];
    revoked.sort_unstable();
    assert_eq!(in_operator_log, revoked);
    assert!(!operator_log.text.contains(&leaked));
    let logs = server.logs();
    assert!(!logs.contains(&leaked[3..]), "the logs never hold a secret");

    // A second report of the same key finds nothing to do.
    let again = post(&server, &op, LEAKED, &json!({"keys": [&leaked]})).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["results"][0]["action"], "none");
    assert_eq!(again.body["results"][0]["key_id"], Value::Null);
}

#[tokio::test]
async fn a_key_issued_under_another_prefix_and_a_secret_in_its_grace_period_count() {
    // Arrange: keys issued under `kw`, reported to a server whose prefix is now `acme`.
    let mut server = Server::start();
    let acct = server.create_account("pro");
    let (old_id, old) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;
    let (rotated_id, before) =
        create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;
    let rotated = post(
        &server,
        &acct.api_key,
        &format!("/v1/api-keys/{rotated_id}/rotate"),
        &json!({"grace_period_seconds": 3600}),
    )
    .await;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    let after = rotated.body["api_key"].as_str().unwrap().to_owned();
    assert!(server.sigterm().success());
    let server = server.another_node(&["--no-bootstrap", "--key-prefix", "acme"]);
    let op = operator_key(&server);

    // Act: the old secret of the rotated key, still in its grace period.
    let r = post(&server, &op, LEAKED, &json!({"keys": [&old, &before]})).await;

    // Assert
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["results"][0]["key_id"], old_id.as_str());
    assert_eq!(r.body["results"][0]["action"], "revoked");
    assert_eq!(r.body["results"][1]["key_id"], rotated_id.as_str());
    assert_eq!(r.body["results"][1]["action"], "revoked");
    assert!(!works(&server, &old).await);
    assert!(!works(&server, &after).await, "the whole key is revoked");
}

#[tokio::test]
async fn with_on_leak_disable_a_leaked_key_is_disabled_and_a_second_report_does_nothing() {
    // Arrange
    let server = Server::start_with(&["--no-bootstrap", "--on-leak", "disable"]);
    let op = operator_key(&server);
    let acct = server.create_account("pro");
    let (key_id, key) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;

    // Act
    let first = post(&server, &op, LEAKED, &json!({"keys": [&key]})).await;
    let second = post(&server, &op, LEAKED, &json!({"keys": [&key]})).await;

    // Assert
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body["results"][0]["action"], "disabled");
    assert_eq!(first.body["results"][0]["key_id"], key_id.as_str());
    assert_eq!(second.body["results"][0]["action"], "none");
    assert_eq!(second.body["results"][0]["key_id"], key_id.as_str());
    assert!(!works(&server, &key).await);
    let shown = get(&server, &acct.api_key, &format!("/v1/api-keys/{key_id}")).await;
    assert_eq!(shown.status, 200, "disabled, not revoked: {shown:?}");
    assert_eq!(shown.body["status"], "inactive");
    let events = audit_events(&server, &acct, "key.leaked").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["changes"]["action"], "disabled");
}

/// A webhook receiver on a free local port: answers `200` and keeps every body.
async fn receiver() -> (Arc<Mutex<Vec<Value>>>, String) {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let kept = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| async move {
            kept.lock()
                .unwrap()
                .push(serde_json::from_str(&body).unwrap());
            axum::http::StatusCode::OK
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (got, url)
}

#[tokio::test]
async fn a_leaked_key_is_delivered_to_the_accounts_webhook_as_key_leaked() {
    // Arrange
    let server = Server::start_with(&[
        "--no-bootstrap",
        "--webhooks-allow-private",
        "--webhooks-fast-retries",
    ]);
    let op = operator_key(&server);
    let acct = server.create_account("pro");
    let (got, url) = receiver().await;
    let subscribed = post(
        &server,
        &acct.api_key,
        "/v1/webhooks",
        &json!({"url": url, "events": ["key.leaked"]}),
    )
    .await;
    assert_eq!(subscribed.status, 201, "{subscribed:?}");
    let (key_id, key) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;

    // Act
    let r = post(
        &server,
        &op,
        LEAKED,
        &json!({"keys": [&key], "source": "a customer's email"}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");

    // Assert
    let event = eventually(
        Duration::from_secs(30),
        "the key.leaked delivery",
        async || got.lock().unwrap().first().cloned().ok_or("none yet"),
    )
    .await;
    assert_eq!(event["type"], "key.leaked");
    assert_eq!(event["data"]["key_id"], key_id.as_str());
    assert_eq!(event["data"]["account_id"], acct.account_id.as_str());
    assert_eq!(event["data"]["changes"]["action"], "revoked");
    assert_eq!(event["data"]["changes"]["source"], "a customer's email");
    assert!(!event.to_string().contains(&key), "never a secret");
}

#[tokio::test]
async fn bad_reports_get_the_documented_errors_and_change_nothing() {
    // Arrange
    let server = Server::start();
    let op = operator_key(&server);
    let acct = server.create_account("pro");
    let (_, key) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;
    let before = state_of(&server, &acct).await;
    let many: Vec<&str> = std::iter::repeat_n(key.as_str(), 1001).collect();

    // Act / Assert
    for (body, field) in [
        (json!({"keys": []}), "keys"),
        (json!({"keys": many}), "keys"),
        (json!({"keys": [&key, 7]}), "keys"),
        (json!({"keys": [&key], "url": "not a url"}), "url"),
        (json!({"keys": [&key], "url": "ftp://example.com/x"}), "url"),
        (
            json!({"keys": [&key], "url": format!("https://e.com/{}", "a".repeat(2048))}),
            "url",
        ),
        (json!({"keys": [&key], "source": ""}), "source"),
        (json!({"keys": [&key], "source": "x".repeat(201)}), "source"),
        (json!({"keys": [&key], "extra": 1}), "extra"),
        (json!({"source": "x"}), "keys"),
    ] {
        let r = post(&server, &op, LEAKED, &body).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR", "{body}");
        assert_eq!(r.field(), field, "{body}: {r:?}");
    }
    let not_json = send(
        client()
            .post(server.url(LEAKED))
            .header("x-api-key", &op)
            .header("content-type", "application/json")
            .body("{"),
    )
    .await;
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.error_code(), "INVALID_REQUEST");
    let account_key = post(&server, &acct.api_key, LEAKED, &json!({"keys": [&key]})).await;
    assert_eq!(
        account_key.status, 401,
        "an account key is not an operator's"
    );
    assert_eq!(account_key.error_code(), "INVALID_API_KEY");

    assert!(works(&server, &key).await);
    assert_eq!(state_of(&server, &acct).await, before);
}

#[tokio::test]
async fn a_report_through_one_node_reaches_the_other_nodes_cache() {
    let Some(a) = Server::start_on_postgres("leaked keys across nodes", &["--no-bootstrap"]) else {
        return;
    };
    let b = a.another_node(&["--no-bootstrap"]);
    let acct = a.create_account("pro");
    let op = operator_key(&a);
    // B has the key cached (10 s): only the change's announcement can refuse it sooner.
    assert_eq!(get(&b, &acct.api_key, "/v1/api-keys").await.status, 200);

    let r = post(&a, &op, LEAKED, &json!({"keys": [&acct.api_key]})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["results"][0]["action"], "revoked");

    eventually(
        Duration::from_secs(5),
        "node B refuses the leaked key",
        async || get(&b, &acct.api_key, "/v1/api-keys").await.status == 401,
    )
    .await;
}

/// GitHub's side: a key pair, the keys file keyward reads, and signed requests.
struct Github {
    signing: SigningKey,
    identifier: &'static str,
    file: tempfile::NamedTempFile,
}

impl Github {
    fn new() -> Self {
        // A fixed secret scalar: no random number generator to agree on versions with.
        let signing = SigningKey::from_slice(&[0x42; 32]).unwrap();
        let other = SigningKey::from_slice(&[0x17; 32]).unwrap();
        let pem = |k: &SigningKey| k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
        let document = json!({"public_keys": [
            {"key_identifier": "retired", "key": pem(&other), "is_current": false},
            {"key_identifier": "current", "key": pem(&signing), "is_current": true},
        ]});
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), document.to_string()).unwrap();
        Self {
            signing,
            identifier: "current",
            file,
        }
    }

    fn path(&self) -> &str {
        self.file.path().to_str().unwrap()
    }

    fn sign(&self, body: &[u8]) -> String {
        let signature: Signature = self.signing.sign(body);
        STANDARD.encode(signature.to_der().as_bytes())
    }

    /// Posts `body` with these headers (`None`: left out).
    async fn post(
        &self,
        server: &Server,
        body: &str,
        identifier: Option<&str>,
        signature: Option<&str>,
    ) -> Reply {
        let mut req = client()
            .post(server.url(GITHUB))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(identifier) = identifier {
            req = req.header("Github-Public-Key-Identifier", identifier);
        }
        if let Some(signature) = signature {
            req = req.header("Github-Public-Key-Signature", signature);
        }
        send(req).await
    }

    /// Posts `body` signed as GitHub signs it.
    async fn report(&self, server: &Server, body: &str) -> Reply {
        let signature = self.sign(body.as_bytes());
        self.post(server, body, Some(self.identifier), Some(&signature))
            .await
    }
}

#[tokio::test]
async fn github_reports_signed_with_its_key_revoke_live_keys_and_label_each_token() {
    // Arrange
    let github = Github::new();
    let server = Server::start_with(&["--no-bootstrap", "--github-scanning-keys", github.path()]);
    let acct = server.create_account("pro");
    let (key_id, key) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;
    let body = json!([
        {"token": &key, "type": "keyward_api_key", "url": "https://github.com/o/r/blob/abc/.env", "source": "content"},
        {"token": unknown_key(), "type": "keyward_api_key", "url": "https://github.com/o/r/blob/abc/x", "source": "content"},
        {"token": "kw_not-a-key", "type": "keyward_api_key", "url": "https://github.com/o/r", "source": "commit"},
    ])
    .to_string();

    // Act
    let r = github.report(&server, &body).await;

    // Assert
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body,
        json!([
            {"token_raw": &key, "token_type": "keyward_api_key", "label": "true_positive"},
            {"token_raw": unknown_key(), "token_type": "keyward_api_key", "label": "false_positive"},
            {"token_raw": "kw_not-a-key", "token_type": "keyward_api_key", "label": "false_positive"},
        ])
    );
    assert!(!works(&server, &key).await);
    let events = audit_events(&server, &acct, "key.leaked").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["key_id"], key_id.as_str());
    assert_eq!(
        events[0]["changes"]["url"],
        "https://github.com/o/r/blob/abc/.env"
    );
    // In the operator log too, with no operator as its actor.
    let op = operator_key(&server);
    let operator_log = get(&server, &op, "/operator/v1/audit-log?action=key.leaked").await;
    assert_eq!(operator_log.status, 200, "{operator_log:?}");
    let in_operator_log = operator_log.body["events"].as_array().unwrap();
    assert_eq!(in_operator_log.len(), 1, "{operator_log:?}");
    assert_eq!(in_operator_log[0]["key_id"], key_id.as_str());
    assert_eq!(in_operator_log[0]["actor_key_id"], Value::Null);
    assert_eq!(
        in_operator_log[0]["request_id"],
        r.header("x-request-id").unwrap()
    );
    assert!(
        !server.logs().contains(&key[3..]),
        "tokens are never logged"
    );

    // A retired key of the file still verifies: GitHub signs with it for a while.
    let retired = SigningKey::from_slice(&[0x17; 32]).unwrap();
    let empty = "[]";
    let signature: Signature = retired.sign(empty.as_bytes());
    let signature = STANDARD.encode(signature.to_der().as_bytes());
    let r = github
        .post(&server, empty, Some("retired"), Some(&signature))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, json!([]));
}

#[tokio::test]
async fn github_requests_without_a_good_signature_are_401_and_change_nothing() {
    // Arrange
    let github = Github::new();
    let server = Server::start_with(&["--no-bootstrap", "--github-scanning-keys", github.path()]);
    let acct = server.create_account("pro");
    let (_, key) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;
    let body = json!([{"token": &key, "type": "keyward_api_key", "url": "https://github.com/o/r", "source": "content"}]).to_string();
    let signature = github.sign(body.as_bytes());
    let over_another_body = github.sign(b"[]");
    let mut flipped = STANDARD.decode(&signature).unwrap();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let flipped = STANDARD.encode(flipped);
    let before = state_of(&server, &acct).await;

    // Act / Assert
    for (identifier, signature, reason) in [
        (None, None, "missing"),
        (Some("current"), None, "missing"),
        (None, Some(signature.as_str()), "missing"),
        (Some("unknown"), Some(signature.as_str()), "unknown_key"),
        (Some("retired"), Some(signature.as_str()), "bad_signature"),
        (
            Some("current"),
            Some(over_another_body.as_str()),
            "bad_signature",
        ),
        (Some("current"), Some(flipped.as_str()), "bad_signature"),
        (Some("current"), Some("not base64 at all"), "bad_signature"),
    ] {
        let r = github.post(&server, &body, identifier, signature).await;
        assert_eq!(r.status, 401, "{identifier:?} {signature:?}: {r:?}");
        assert_eq!(r.error_code(), "INVALID_SIGNATURE");
        assert_eq!(r.body["error"]["details"]["reason"], reason, "{r:?}");
    }

    assert!(works(&server, &key).await, "the key still works");
    assert_eq!(state_of(&server, &acct).await, before);
    assert!(
        !server.logs().contains(&key[3..]),
        "tokens are never logged"
    );
}

#[tokio::test]
async fn without_a_keys_file_the_github_endpoint_does_not_exist_and_a_bad_file_stops_serve() {
    let server = Server::start();
    let r = send(
        client()
            .post(server.url(GITHUB))
            .header("content-type", "application/json")
            .body("[]"),
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.error_code(), "RESOURCE_NOT_FOUND");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("keys.json");
    std::fs::write(
        &bad,
        r#"{"public_keys": [{"key_identifier": "k", "key": "nope"}]}"#,
    )
    .unwrap();
    let missing = dir.path().join("missing.json");
    for (path, needle) in [(&bad, "\"k\" is not a PEM"), (&missing, "cannot read")] {
        let out = std::process::Command::new(common::BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--no-bootstrap"])
            .arg("--database-url")
            .arg(format!("sqlite:{}", dir.path().join("k.db").display()))
            .arg("--github-scanning-keys")
            .arg(path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{stderr}");
        assert!(stderr.contains("--github-scanning-keys"), "{stderr}");
    }
}
