//! Black-box tests of the key lifecycle: create, read, update, rotate, revoke, expire,
//! validate and the audit trail they leave, with the scope and tenancy rules around
//! them. Real binary, real socket, one fresh server per test.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Reply, Server, client, create_key, delete, get, patch, post, send};
use keyward_core::{AccountId, KeyId, KeyName, KeyPrefix, KeySecret, Metadata, OsRandom, ScopeSet};
use keyward_store::{AuditContext, NewKey, NewSecret};
use reqwest::Method;
use serde_json::{Value, json};
use time::OffsetDateTime;

/// A refused body: (operation, case, content type, raw body, error code, field).
type BodyCase<'a> = (&'a str, &'a str, Option<&'a str>, String, &'a str, &'a str);

/// A refused request: (case, key, method, path, content type, raw body, status, code).
type OrderCase<'a> = (
    &'a str,
    &'a str,
    Method,
    String,
    Option<&'a str>,
    String,
    u16,
    &'a str,
);

/// A well-formed `key_id` that no account has.
const MISSING_ID: &str = "key_01JD00000000000000000000ZZ";

fn key_path(id: &str) -> String {
    format!("/v1/api-keys/{id}")
}

fn rotate_path(id: &str) -> String {
    format!("/v1/api-keys/{id}/rotate")
}

fn text(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
        .to_owned()
}

fn parse_time(v: &Value) -> OffsetDateTime {
    keyward_core::timefmt::parse(&text(v)).expect("RFC 3339 timestamp")
}

fn is_second_precision_utc(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 20 && s.ends_with('Z') && keyward_core::timefmt::parse(s).is_ok()
    })
}

/// Every key object of the account, oldest first.
async fn list_keys(server: &Server, key: &str) -> Vec<Value> {
    let r = get(server, key, "/v1/api-keys").await;
    assert_eq!(r.status, 200, "listing keys: {r:?}");
    r.body["api_keys"]
        .as_array()
        .expect("api_keys is an array")
        .clone()
}

async fn listed_ids(server: &Server, key: &str) -> Vec<String> {
    list_keys(server, key)
        .await
        .iter()
        .map(|k| text(&k["key_id"]))
        .collect()
}

/// One key object, read with `key` (which must hold `read`).
async fn key_object(server: &Server, key: &str, id: &str) -> Value {
    let r = get(server, key, &key_path(id)).await;
    assert_eq!(r.status, 200, "reading {id}: {r:?}");
    r.body
}

/// The object without `last_used`, which moves whenever the key itself is used.
fn without_last_used(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().expect("key object").remove("last_used");
    v
}

/// A request with a raw body and an optional content type.
async fn raw(
    server: &Server,
    key: &str,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: String,
) -> Reply {
    let mut req = client()
        .request(method, server.url(path))
        .header("x-api-key", key);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    send(req.body(body)).await
}

/// `POST /v1/api-keys/validate` with `key` (or without the header).
async fn validate(server: &Server, key: Option<&str>) -> Reply {
    let mut req = client().post(server.url("/v1/api-keys/validate"));
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    send(req).await
}

/// One page of the audit log.
async fn audit_page(server: &Server, key: &str, query: &str) -> Reply {
    let r = get(server, key, &format!("/v1/audit-log{query}")).await;
    assert_eq!(r.status, 200, "audit log {query}: {r:?}");
    r
}

async fn audit_events(server: &Server, key: &str, query: &str) -> Vec<Value> {
    audit_page(server, key, query).await.body["events"]
        .as_array()
        .expect("events is an array")
        .clone()
}

fn actions(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| text(&e["action"])).collect()
}

/// Sends requests with `secret` until one is refused, and returns that refusal: the
/// secret must work until a moment between `earliest` and `latest` (`what`), and be
/// refused from then on. The server reads the same clock as this test, so a success
/// proves the request was sent before `latest`, and a refusal that it was answered after
/// `earliest`.
async fn refused_between(
    server: &Server,
    secret: &str,
    earliest: OffsetDateTime,
    latest: OffsetDateTime,
    what: &str,
) -> Reply {
    let within = latest - OffsetDateTime::now_utc() + time::Duration::seconds(1);
    common::eventually(
        Duration::try_from(within).unwrap_or_default(),
        format_args!("{what} (by {latest}) to pass and the secret to be refused"),
        async || {
            let sent = OffsetDateTime::now_utc();
            let r = get(server, secret, "/v1/api-keys").await;
            let answered = OffsetDateTime::now_utc();
            if r.status == 200 {
                assert!(
                    sent <= latest,
                    "accepted when sent at {sent}, after {what} (by {latest})"
                );
                Err(r.status)
            } else {
                assert!(
                    answered >= earliest,
                    "refused when answered at {answered}, before {what} (from {earliest}): {r:?}"
                );
                Ok(r)
            }
        },
    )
    .await
}

fn reason(r: &Reply) -> &Value {
    &r.body["error"]["details"]["reason"]
}

/// Puts a key with any scopes straight into the server's database, without going
/// through a caller whose scopes would limit what it may grant.
async fn insert_key_directly(
    server: &Server,
    account_id: &str,
    scopes: &[&str],
) -> (String, String) {
    let store = server.store().await;
    let secret = KeySecret::generate(&KeyPrefix::default(), &mut OsRandom);
    let now = keyward_core::timefmt::truncate(OffsetDateTime::now_utc());
    let key_id = KeyId::from_ulid(ulid::Ulid::generate());
    let key = NewKey {
        key_id: key_id.clone(),
        account_id: AccountId::parse(account_id).expect("account id"),
        name: Some(KeyName::parse("custom holder").expect("name")),
        scopes: ScopeSet::parse(scopes).expect("scopes"),
        metadata: Metadata::default(),
        expires_at: None,
        created_at: now,
        secret: NewSecret {
            digest: secret.digest(),
            hint: secret.hint(),
        },
        policies: keyward_core::KeyPolicies::default(),
        expire_after_inactive_days: None,
    };
    let audit = AuditContext {
        actor_key_id: None,
        operator: None,
        request_id: "test-setup".to_owned(),
        time: now,
        changes: json!({}),
    };
    store.insert_key(&key, &audit).await.expect("insert key");
    store.close().await;
    (key_id.as_str().to_owned(), secret.expose().to_owned())
}

#[tokio::test]
async fn a_created_key_round_trips_through_get_and_list_and_its_secret_is_shown_only_once() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let body = json!({
        "name": "CI deploy",
        "scopes": ["write", "read"],
        "expires_in": 3600,
        "metadata": {"team": "infra", "n": 3, "nested": {"ok": true}},
    });

    // Act
    let created = post(&server, &acct.api_key, "/v1/api-keys", &body).await;

    // Assert: the creation answer.
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.header("cache-control"), Some("no-store"));
    assert_eq!(created.header("content-type"), Some("application/json"));
    let mut fields: Vec<&str> = created
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "api_key",
            "created_at",
            "expires_at",
            "hint",
            "key_id",
            "last_used",
            "metadata",
            "name",
            "scopes",
            "status"
        ],
        "exactly the key object plus api_key"
    );
    let id = text(&created.body["key_id"]);
    let secret = text(&created.body["api_key"]);
    assert!(id.starts_with("key_"), "{id}");
    assert!(secret.starts_with("kw_") && secret.len() == 41, "{secret}");
    assert_eq!(created.body["name"], "CI deploy");
    assert_eq!(
        created.body["scopes"],
        json!(["write", "read"]),
        "scope order kept"
    );
    assert_eq!(created.body["metadata"], body["metadata"]);
    assert_eq!(created.body["status"], "active");
    assert!(created.body["last_used"].is_null());
    assert!(
        is_second_precision_utc(&created.body["created_at"]),
        "{created:?}"
    );
    assert!(
        is_second_precision_utc(&created.body["expires_at"]),
        "{created:?}"
    );
    let lifetime =
        parse_time(&created.body["expires_at"]) - parse_time(&created.body["created_at"]);
    assert_eq!(
        lifetime.whole_seconds(),
        3600,
        "expires_in counts from creation"
    );
    let expected_hint = format!("kw_{}…{}", &secret[3..7], &secret[secret.len() - 4..]);
    assert_eq!(created.body["hint"], expected_hint.as_str());
    let mut as_stored = created.body.clone();
    as_stored.as_object_mut().unwrap().remove("api_key");

    // Assert: GET shows the same object, without the secret.
    let one = get(&server, &acct.api_key, &key_path(&id)).await;
    assert_eq!(one.status, 200, "{one:?}");
    assert_eq!(one.header("cache-control"), Some("no-store"));
    assert_eq!(
        one.body, as_stored,
        "GET returns what creation returned, minus the secret"
    );
    assert!(
        !one.text.contains(&secret[3..]),
        "no secret material in GET"
    );

    // Assert: the listing too.
    let listing = get(&server, &acct.api_key, "/v1/api-keys").await;
    assert_eq!(listing.status, 200);
    assert_eq!(listing.header("cache-control"), Some("no-store"));
    let keys = listing.body["api_keys"].as_array().unwrap();
    let ids: Vec<&str> = keys.iter().map(|k| k["key_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [acct.key_id.as_str(), id.as_str()], "oldest first");
    assert_eq!(
        keys[1], as_stored,
        "listing returns what creation returned, minus the secret"
    );
    assert!(
        keys.iter().all(|k| k.get("api_key").is_none()),
        "no api_key field in listings"
    );
    assert!(
        !listing.text.contains(&secret[3..]),
        "no secret material in the listing"
    );
    assert!(
        !listing.text.contains(&acct.api_key[3..]),
        "no secret material in the listing"
    );

    // And the new secret is a working credential of the same key.
    let v = validate(&server, Some(&secret)).await;
    assert_eq!(v.body["key_id"], id.as_str(), "{v:?}");
}

#[tokio::test]
async fn a_read_only_key_can_create_nothing_and_change_nothing() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let (_, reader) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;
    let (target, target_secret) = create_key(
        &server,
        &acct.api_key,
        &json!({"name": "target", "scopes": ["read"]}),
    )
    .await;
    let before = key_object(&server, &acct.api_key, &target).await;
    let ids_before = listed_ids(&server, &acct.api_key).await;
    assert_eq!(
        get(&server, &reader, "/v1/api-keys").await.status,
        200,
        "read works"
    );

    // Act
    let attempts = [
        (
            "create",
            post(
                &server,
                &reader,
                "/v1/api-keys",
                &json!({"scopes": ["read"]}),
            )
            .await,
        ),
        (
            "patch",
            patch(
                &server,
                &reader,
                &key_path(&target),
                &json!({"name": "changed"}),
            )
            .await,
        ),
        (
            "patch status",
            patch(
                &server,
                &reader,
                &key_path(&target),
                &json!({"status": "inactive"}),
            )
            .await,
        ),
        (
            "rotate",
            post(&server, &reader, &rotate_path(&target), &json!({})).await,
        ),
        ("revoke", delete(&server, &reader, &key_path(&target)).await),
    ];

    // Assert
    for (case, r) in &attempts {
        assert_eq!(r.status, 403, "{case}: {r:?}");
        assert_eq!(r.error_code(), "INSUFFICIENT_PERMISSIONS", "{case}");
        assert_eq!(
            r.body["error"]["details"]["required"],
            json!(["write"]),
            "{case}"
        );
    }
    assert_eq!(
        listed_ids(&server, &acct.api_key).await,
        ids_before,
        "nothing created or revoked"
    );
    let after = key_object(&server, &acct.api_key, &target).await;
    assert_eq!(
        after, before,
        "the target is untouched (name, status, hint)"
    );
    assert_eq!(
        validate(&server, Some(&target_secret)).await.body["valid"],
        true
    );
}

#[tokio::test]
async fn a_read_write_key_can_neither_create_nor_touch_admin_keys_but_can_create_read_keys() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let (_, rw) = create_key(
        &server,
        &acct.api_key,
        &json!({"scopes": ["read", "write"]}),
    )
    .await;
    let (admin_id, admin_secret) = create_key(
        &server,
        &acct.api_key,
        &json!({"name": "ops", "scopes": ["read", "admin"]}),
    )
    .await;
    let (reader_id, _) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;
    let admin_before = key_object(&server, &acct.api_key, &admin_id).await;
    let reader_before = key_object(&server, &acct.api_key, &reader_id).await;
    let ids_before = listed_ids(&server, &acct.api_key).await;

    // Act
    let attempts = [
        (
            "create read+admin",
            post(
                &server,
                &rw,
                "/v1/api-keys",
                &json!({"scopes": ["read", "admin"]}),
            )
            .await,
        ),
        (
            "create admin only",
            post(&server, &rw, "/v1/api-keys", &json!({"scopes": ["admin"]})).await,
        ),
        (
            "rename an admin key",
            patch(
                &server,
                &rw,
                &key_path(&admin_id),
                &json!({"name": "mine now"}),
            )
            .await,
        ),
        (
            "disable an admin key",
            patch(
                &server,
                &rw,
                &key_path(&admin_id),
                &json!({"status": "inactive"}),
            )
            .await,
        ),
        (
            "grant admin to a read key",
            patch(
                &server,
                &rw,
                &key_path(&reader_id),
                &json!({"scopes": ["read", "admin"]}),
            )
            .await,
        ),
        (
            "rotate an admin key",
            post(&server, &rw, &rotate_path(&admin_id), &json!({})).await,
        ),
        (
            "revoke an admin key",
            delete(&server, &rw, &key_path(&admin_id)).await,
        ),
    ];

    // Assert
    for (case, r) in &attempts {
        assert_eq!(r.status, 403, "{case}: {r:?}");
        assert_eq!(r.error_code(), "INSUFFICIENT_PERMISSIONS", "{case}");
        assert_eq!(
            r.body["error"]["details"]["required"],
            json!(["admin"]),
            "{case}"
        );
    }
    assert_eq!(
        listed_ids(&server, &acct.api_key).await,
        ids_before,
        "nothing created or revoked"
    );
    assert_eq!(
        key_object(&server, &acct.api_key, &admin_id).await,
        admin_before,
        "admin key untouched"
    );
    assert_eq!(
        key_object(&server, &acct.api_key, &reader_id).await,
        reader_before,
        "read key untouched"
    );
    assert_eq!(
        get(&server, &admin_secret, "/v1/api-keys").await.status,
        200,
        "admin key still works"
    );

    let allowed = post(&server, &rw, "/v1/api-keys", &json!({"scopes": ["read"]})).await;
    assert_eq!(
        allowed.status, 201,
        "a subset of the caller's scopes is fine: {allowed:?}"
    );
    assert_eq!(allowed.body["scopes"], json!(["read"]));
}

#[tokio::test]
async fn custom_scopes_are_carried_through_untouched() {
    // Arrange: a key that holds a custom scope (see insert_key_directly).
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let (_, holder) = insert_key_directly(
        &server,
        &acct.account_id,
        &["read", "write", "billing:export"],
    )
    .await;
    assert_eq!(
        get(&server, &holder, "/v1/api-keys").await.status,
        200,
        "holder authenticates"
    );

    // Act
    let created = post(
        &server,
        &holder,
        "/v1/api-keys",
        &json!({"scopes": ["billing:export", "read"], "metadata": {"customer": "c-42"}}),
    )
    .await;
    let escalation = post(
        &server,
        &holder,
        "/v1/api-keys",
        &json!({"scopes": ["billing:import"]}),
    )
    .await;

    // Assert
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(
        created.body["scopes"],
        json!(["billing:export", "read"]),
        "as given, in order"
    );
    let id = text(&created.body["key_id"]);
    let secret = text(&created.body["api_key"]);
    let stored = key_object(&server, &acct.api_key, &id).await;
    assert_eq!(stored["scopes"], json!(["billing:export", "read"]));
    let v = validate(&server, Some(&secret)).await;
    assert_eq!(v.status, 200, "{v:?}");
    assert_eq!(
        v.body,
        json!({
            "valid": true,
            "key_id": id,
            "account_id": acct.account_id,
            "scopes": ["billing:export", "read"],
            "metadata": {"customer": "c-42"},
            "expires_at": null,
        })
    );
    assert_eq!(escalation.status, 403, "{escalation:?}");
    assert_eq!(escalation.error_code(), "INSUFFICIENT_PERMISSIONS");
    assert_eq!(
        escalation.body["error"]["details"]["required"],
        json!(["billing:import"])
    );
}

#[tokio::test]
async fn a_key_cannot_lock_itself_out() {
    // Arrange: a read+write key acting on itself.
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let (own_id, own) = create_key(
        &server,
        &acct.api_key,
        &json!({"name": "self", "scopes": ["read", "write"]}),
    )
    .await;
    let path = key_path(&own_id);

    // Act
    let attempts = [
        (
            "disable itself",
            patch(&server, &own, &path, &json!({"status": "inactive"})).await,
        ),
        (
            "narrow its own scopes",
            patch(&server, &own, &path, &json!({"scopes": ["read"]})).await,
        ),
        (
            "disable itself while renaming",
            patch(
                &server,
                &own,
                &path,
                &json!({"name": "x", "status": "inactive"}),
            )
            .await,
        ),
        ("revoke itself", delete(&server, &own, &path).await),
    ];

    // Assert
    for (case, r) in &attempts {
        assert_eq!(r.status, 409, "{case}: {r:?}");
        assert_eq!(r.error_code(), "CONFLICT", "{case}");
    }
    let after = key_object(&server, &acct.api_key, &own_id).await;
    assert_eq!(
        after["name"], "self",
        "no part of a refused PATCH is applied"
    );
    assert_eq!(after["scopes"], json!(["read", "write"]));
    assert_eq!(after["status"], "active");
    assert_eq!(
        listed_ids(&server, &acct.api_key).await.len(),
        2,
        "not revoked"
    );

    let same = patch(&server, &own, &path, &json!({"scopes": ["read", "write"]})).await;
    assert_eq!(
        same.status, 200,
        "its own identical scopes are allowed: {same:?}"
    );
    assert_eq!(same.body["scopes"], json!(["read", "write"]));
    let rename = patch(&server, &own, &path, &json!({"name": "still me"})).await;
    assert_eq!(rename.status, 200, "renaming itself is allowed: {rename:?}");
    assert_eq!(rename.body["name"], "still me");
    assert_eq!(
        get(&server, &own, "/v1/api-keys").await.status,
        200,
        "the key still works"
    );
}

#[tokio::test]
async fn a_key_expires_across_a_real_clock_boundary() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let created = post(
        &server,
        &acct.api_key,
        "/v1/api-keys",
        &json!({"scopes": ["read"], "expires_in": 2}),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = text(&created.body["key_id"]);
    let secret = text(&created.body["api_key"]);
    let expires_at = parse_time(&created.body["expires_at"]);
    let lifetime = expires_at - parse_time(&created.body["created_at"]);
    assert_eq!(lifetime.whole_seconds(), 2);

    // Act + Assert: before the boundary.
    let before = get(&server, &secret, "/v1/api-keys").await;
    assert_eq!(before.status, 200, "works before it expires: {before:?}");
    assert_eq!(validate(&server, Some(&secret)).await.body["valid"], true);
    assert_eq!(
        key_object(&server, &acct.api_key, &id).await["status"],
        "active"
    );

    // Across the boundary on the real clock: the key works for every request that
    // arrives before expires_at and is refused from then on, at once.
    let after = refused_between(&server, &secret, expires_at, expires_at, "expires_at").await;
    assert_eq!(after.status, 401, "refused after it expired: {after:?}");
    assert_eq!(after.error_code(), "INVALID_API_KEY");
    assert_eq!(reason(&after), "expired");
    let listed = list_keys(&server, &acct.api_key).await;
    let entry = listed
        .iter()
        .find(|k| k["key_id"] == id.as_str())
        .expect("still listed");
    assert_eq!(entry["status"], "expired", "status is derived at read time");
    assert_eq!(
        key_object(&server, &acct.api_key, &id).await["status"],
        "expired"
    );
    let expired_only = get(&server, &acct.api_key, "/v1/api-keys?status=expired").await;
    let ids: Vec<&str> = expired_only.body["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()], "status=expired filter");
    let v = validate(&server, Some(&secret)).await;
    assert_eq!(v.status, 200, "{v:?}");
    assert_eq!(v.body, json!({"valid": false, "reason": "expired"}));
}

#[tokio::test]
async fn rotation_without_grace_retires_the_old_secret_at_once_and_keeps_everything_else() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let (id, first) = create_key(
        &server,
        &acct.api_key,
        &json!({"name": "rotating", "scopes": ["read"], "metadata": {"env": "prod"}, "expires_in": 86400}),
    )
    .await;
    assert_eq!(
        get(&server, &first, "/v1/api-keys").await.status,
        200,
        "warm the key cache"
    );
    let before = key_object(&server, &acct.api_key, &id).await;

    // Act: rotate with no body at all (grace defaults to 0).
    let rotated = send(
        client()
            .post(server.url(&rotate_path(&id)))
            .header("x-api-key", &acct.api_key),
    )
    .await;

    // Assert
    assert_eq!(rotated.status, 200, "{rotated:?}");
    assert_eq!(rotated.header("cache-control"), Some("no-store"));
    let second = text(&rotated.body["api_key"]);
    assert_ne!(second, first, "a new secret");
    for field in [
        "key_id",
        "name",
        "scopes",
        "metadata",
        "created_at",
        "expires_at",
        "status",
    ] {
        assert_eq!(
            rotated.body[field], before[field],
            "{field} unchanged by rotation"
        );
    }
    assert_ne!(
        rotated.body["hint"], before["hint"],
        "the hint follows the new secret"
    );
    assert_eq!(
        rotated.body["hint"],
        format!("kw_{}…{}", &second[3..7], &second[second.len() - 4..]).as_str()
    );
    let old = get(&server, &first, "/v1/api-keys").await;
    assert_eq!(
        old.status, 401,
        "old secret refused on the very next request: {old:?}"
    );
    assert_eq!(old.error_code(), "INVALID_API_KEY");
    assert_eq!(reason(&old), "not_found");
    assert_eq!(
        get(&server, &second, "/v1/api-keys").await.status,
        200,
        "new secret works"
    );
    assert_eq!(
        validate(&server, Some(&first)).await.body,
        json!({"valid": false, "reason": "not_found"})
    );

    // Act again with an explicit zero grace period.
    let again = post(
        &server,
        &acct.api_key,
        &rotate_path(&id),
        &json!({"grace_period_seconds": 0}),
    )
    .await;
    assert_eq!(again.status, 200, "{again:?}");
    let third = text(&again.body["api_key"]);
    let r = get(&server, &second, "/v1/api-keys").await;
    assert_eq!(
        (r.status, reason(&r).clone()),
        (401, json!("not_found")),
        "{r:?}"
    );
    assert_eq!(get(&server, &third, "/v1/api-keys").await.status, 200);
    let after = key_object(&server, &acct.api_key, &id).await;
    assert_eq!(after["key_id"], id.as_str());
    assert_eq!(
        listed_ids(&server, &acct.api_key).await.len(),
        2,
        "rotation creates no key"
    );
}

#[tokio::test]
async fn rotation_with_grace_keeps_the_old_secret_working_until_the_grace_ends() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let (id, old) = create_key(&server, &acct.api_key, &json!({"scopes": ["read"]})).await;
    assert_eq!(
        get(&server, &old, "/v1/api-keys").await.status,
        200,
        "warm the key cache"
    );

    // Act
    let rotated_sent = OffsetDateTime::now_utc();
    let rotated = post(
        &server,
        &acct.api_key,
        &rotate_path(&id),
        &json!({"grace_period_seconds": 1}),
    )
    .await;
    let rotated_answered = OffsetDateTime::now_utc();

    // Assert: during the grace period both secrets work.
    assert_eq!(rotated.status, 200, "{rotated:?}");
    assert_eq!(rotated.body["key_id"], id.as_str());
    let new = text(&rotated.body["api_key"]);
    assert_eq!(
        get(&server, &old, "/v1/api-keys").await.status,
        200,
        "old secret in grace"
    );
    assert_eq!(
        get(&server, &new, "/v1/api-keys").await.status,
        200,
        "new secret"
    );
    let in_grace = validate(&server, Some(&old)).await;
    assert_eq!(in_grace.body["valid"], true, "{in_grace:?}");
    assert_eq!(
        in_grace.body["key_id"],
        id.as_str(),
        "the old secret is still the same key"
    );

    // The old secret works until the grace period ends, then never again. Storage keeps
    // whole seconds and rounds the end up, so it ends between 1 s after the rotation was
    // sent and 2 s after its answer.
    let expired = refused_between(
        &server,
        &old,
        rotated_sent + time::Duration::seconds(1),
        rotated_answered + time::Duration::seconds(2),
        "the end of the grace period",
    )
    .await;
    assert_eq!(
        expired.status, 401,
        "old secret after the grace: {expired:?}"
    );
    assert_eq!(expired.error_code(), "INVALID_API_KEY");
    assert_eq!(reason(&expired), "not_found");
    assert_eq!(
        get(&server, &new, "/v1/api-keys").await.status,
        200,
        "new secret still works"
    );
}

#[tokio::test]
async fn a_revoked_key_is_gone_at_once_but_its_history_stays_in_the_audit_log() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let (id, secret) = create_key(
        &server,
        &acct.api_key,
        &json!({"name": "doomed", "scopes": ["read"]}),
    )
    .await;
    assert_eq!(
        get(&server, &secret, "/v1/api-keys").await.status,
        200,
        "warm the key cache"
    );

    // Act
    let revoked = delete(&server, &acct.api_key, &key_path(&id)).await;

    // Assert
    assert_eq!(revoked.status, 204, "{revoked:?}");
    assert!(revoked.text.is_empty(), "204 has no body: {revoked:?}");
    let next = get(&server, &secret, "/v1/api-keys").await;
    assert_eq!(
        next.status, 401,
        "the very next request with the secret: {next:?}"
    );
    assert_eq!(next.error_code(), "INVALID_API_KEY");
    assert_eq!(reason(&next), "not_found");
    assert_eq!(
        validate(&server, Some(&secret)).await.body,
        json!({"valid": false, "reason": "not_found"})
    );
    assert_eq!(
        listed_ids(&server, &acct.api_key).await,
        [acct.key_id.as_str()],
        "gone from the listing"
    );
    let one = get(&server, &acct.api_key, &key_path(&id)).await;
    assert_eq!(one.status, 404, "{one:?}");
    assert_eq!(one.error_code(), "RESOURCE_NOT_FOUND");
    let twice = delete(&server, &acct.api_key, &key_path(&id)).await;
    assert_eq!(twice.status, 404, "revoking again: {twice:?}");
    assert_eq!(twice.error_code(), "RESOURCE_NOT_FOUND");
    let rotate = post(&server, &acct.api_key, &rotate_path(&id), &json!({})).await;
    assert_eq!(
        rotate.status, 404,
        "a revoked key can't be rotated back to life: {rotate:?}"
    );
    let events = audit_events(&server, &acct.api_key, &format!("?key_id={id}")).await;
    assert_eq!(
        actions(&events),
        ["key.revoked", "key.created"],
        "history stays: {events:?}"
    );
    assert!(events.iter().all(|e| e["key_id"] == id.as_str()));
}

#[tokio::test]
async fn another_accounts_key_reads_as_missing_and_stays_untouched() {
    // Arrange
    let server = Server::start();
    let a = server.create_account("enterprise");
    let b = server.create_account("enterprise");
    let (b_id, b_secret) = create_key(
        &server,
        &b.api_key,
        &json!({"name": "b-key", "scopes": ["read"], "metadata": {"owner": "b"}}),
    )
    .await;
    let b_before = key_object(&server, &b.api_key, &b_id).await;

    // Act + Assert: every operation, on B's key and on a missing id, through A.
    let evil = json!({"name": "pwned", "status": "inactive", "metadata": {}});
    for op in ["GET", "PATCH", "rotate", "DELETE"] {
        let mut replies = Vec::new();
        for id in [b_id.as_str(), MISSING_ID] {
            let r = match op {
                "GET" => get(&server, &a.api_key, &key_path(id)).await,
                "PATCH" => patch(&server, &a.api_key, &key_path(id), &evil).await,
                "rotate" => {
                    post(
                        &server,
                        &a.api_key,
                        &rotate_path(id),
                        &json!({"grace_period_seconds": 60}),
                    )
                    .await
                }
                _ => delete(&server, &a.api_key, &key_path(id)).await,
            };
            assert_eq!(r.status, 404, "{op} {id}: {r:?}");
            assert_eq!(r.error_code(), "RESOURCE_NOT_FOUND", "{op} {id}");
            replies.push(r);
        }
        assert_eq!(
            replies[0].body["error"], replies[1].body["error"],
            "{op}: another account's key reads exactly like a missing one"
        );
    }

    // B's key is unchanged, and still authenticates with its own secret.
    assert_eq!(key_object(&server, &b.api_key, &b_id).await, b_before);
    assert_eq!(get(&server, &b_secret, "/v1/api-keys").await.status, 200);
    let b_events = audit_events(&server, &b.api_key, &format!("?key_id={b_id}")).await;
    assert_eq!(
        actions(&b_events),
        ["key.created"],
        "no change recorded on B's key"
    );
    assert!(!listed_ids(&server, &a.api_key).await.contains(&b_id));
    let a_events = audit_events(&server, &a.api_key, "").await;
    assert!(
        a_events.iter().all(|e| e["key_id"] != b_id.as_str()),
        "nothing about B in A's log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_concurrent_creates_give_sixty_distinct_keys() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let n = 60;

    // Act
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = server.url("/v1/api-keys");
        let key = acct.api_key.clone();
        tasks.push(tokio::spawn(async move {
            send(
                client()
                    .post(url)
                    .header("x-api-key", key)
                    .json(&json!({"name": format!("c{i}"), "scopes": ["read"]})),
            )
            .await
        }));
    }
    let mut created = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 201, "{r:?}");
        created.push((
            text(&r.body["key_id"]),
            text(&r.body["api_key"]),
            text(&r.body["name"]),
        ));
    }

    // Assert
    let ids: HashSet<&str> = created.iter().map(|(id, _, _)| id.as_str()).collect();
    let secrets: HashSet<&str> = created.iter().map(|(_, s, _)| s.as_str()).collect();
    assert_eq!(ids.len(), n, "distinct key_ids");
    assert_eq!(secrets.len(), n, "distinct secrets");
    let listed = listed_ids(&server, &acct.api_key).await;
    assert_eq!(listed.len(), n + 1, "all listed, plus the first key");
    let listed: HashSet<&str> = listed.iter().map(String::as_str).collect();
    assert!(ids.is_subset(&listed), "every created key is listed");
    let page = audit_page(&server, &acct.api_key, "?action=key.created").await;
    let events = page.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 50, "default audit page size");
    let cursor = text(&page.body["next_before"]);
    let rest = audit_events(
        &server,
        &acct.api_key,
        &format!("?action=key.created&before={cursor}"),
    )
    .await;
    assert_eq!(events.len() + rest.len(), n + 1, "one key.created per key");
    let audited: HashSet<String> = events
        .iter()
        .chain(&rest)
        .map(|e| text(&e["key_id"]))
        .collect();
    assert!(
        ids.iter().all(|id| audited.contains(*id)),
        "every create is audited once"
    );
    for (id, secret, name) in &created {
        let v = validate(&server, Some(secret)).await;
        assert_eq!(
            v.body["key_id"],
            id.as_str(),
            "{name}: each secret belongs to its own key_id"
        );
    }
}

#[tokio::test]
async fn invalid_create_bodies_are_refused_with_the_field_named_and_store_nothing() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let key = acct.api_key.as_str();
    let many: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
    let long_scope = "a".repeat(65);
    let r = |extra: Value| {
        let mut body = json!({"scopes": ["read"]});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        body
    };
    // (case, body, field) for VALIDATION_ERROR.
    let invalid: Vec<(&str, Value, &str)> = vec![
        ("empty scope list", json!({"scopes": []}), "scopes"),
        ("empty scope string", json!({"scopes": [""]}), "scopes"),
        ("upper-case scope", json!({"scopes": ["Read"]}), "scopes"),
        (
            "scope starting with a digit",
            json!({"scopes": ["1abc"]}),
            "scopes",
        ),
        ("scope with a space", json!({"scopes": ["a b"]}), "scopes"),
        ("65-char scope", json!({"scopes": [long_scope]}), "scopes"),
        (
            "duplicate scopes",
            json!({"scopes": ["read", "read"]}),
            "scopes",
        ),
        ("33 scopes", json!({"scopes": many}), "scopes"),
        ("non-string scope", json!({"scopes": ["read", 1]}), "scopes"),
        ("scopes as a string", json!({"scopes": "read"}), "scopes"),
        ("scopes null", json!({"scopes": null}), "scopes"),
        ("scopes missing", json!({"name": "x"}), "scopes"),
        ("empty name", r(json!({"name": ""})), "name"),
        ("101-char name", r(json!({"name": "n".repeat(101)})), "name"),
        (
            "control char in name",
            r(json!({"name": "a\u{7}b"})),
            "name",
        ),
        ("newline in name", r(json!({"name": "a\nb"})), "name"),
        ("numeric name", r(json!({"name": 5})), "name"),
        ("metadata array", r(json!({"metadata": [1, 2]})), "metadata"),
        ("metadata string", r(json!({"metadata": "x"})), "metadata"),
        (
            "metadata over 4 KiB",
            r(json!({"metadata": {"blob": "x".repeat(5000)}})),
            "metadata",
        ),
        // {"blob":"…"} is 11 bytes plus the string: 4097 bytes.
        (
            "metadata 4097 bytes",
            r(json!({"metadata": {"blob": "x".repeat(4086)}})),
            "metadata",
        ),
        (
            "both expiry fields",
            r(json!({"expires_in": 60, "expires_at": "2099-01-01T00:00:00Z"})),
            "expires_in",
        ),
        (
            "negative expires_in",
            r(json!({"expires_in": -5})),
            "expires_in",
        ),
        ("zero expires_in", r(json!({"expires_in": 0})), "expires_in"),
        (
            "expires_in over 100 years",
            r(json!({"expires_in": 3_153_600_001_i64})),
            "expires_in",
        ),
        (
            "string expires_in",
            r(json!({"expires_in": "60"})),
            "expires_in",
        ),
        (
            "fractional expires_in",
            r(json!({"expires_in": 1.5})),
            "expires_in",
        ),
        (
            "past expires_at",
            r(json!({"expires_at": "2000-01-01T00:00:00Z"})),
            "expires_at",
        ),
        (
            "non-RFC 3339 expires_at",
            r(json!({"expires_at": "tomorrow"})),
            "expires_at",
        ),
        (
            "expires_at without offset",
            r(json!({"expires_at": "2099-01-01T00:00:00"})),
            "expires_at",
        ),
        (
            "expires_at month 13",
            r(json!({"expires_at": "2099-13-01T00:00:00Z"})),
            "expires_at",
        ),
        (
            "expires_at beyond 100 years",
            r(json!({"expires_at": "2999-01-01T00:00:00Z"})),
            "expires_at",
        ),
        (
            "numeric expires_at",
            r(json!({"expires_at": 4_102_444_800_i64})),
            "expires_at",
        ),
        ("unknown field", r(json!({"colour": "blue"})), "colour"),
        ("JSON array body", json!([{"scopes": ["read"]}]), "body"),
    ];
    // (case, content type, raw body) for INVALID_REQUEST.
    let not_json: Vec<(&str, Option<&str>, &str)> = vec![
        (
            "malformed JSON",
            Some("application/json"),
            r#"{"scopes": ["read"]"#,
        ),
        (
            "trailing garbage",
            Some("application/json"),
            r#"{"scopes": ["read"]} x"#,
        ),
        ("empty body", Some("application/json"), ""),
        (
            "text/plain content type",
            Some("text/plain"),
            r#"{"scopes": ["read"]}"#,
        ),
        (
            "form content type",
            Some("application/x-www-form-urlencoded"),
            "scopes=read",
        ),
        ("no content type", None, r#"{"scopes": ["read"]}"#),
    ];
    let before = listed_ids(&server, key).await;

    for (case, body, field) in &invalid {
        // Act
        let r = post(&server, key, "/v1/api-keys", body).await;

        // Assert
        assert_eq!(r.status, 400, "{case}: {r:?}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR", "{case}: {r:?}");
        assert_eq!(r.field(), *field, "{case}: {r:?}");
        assert_eq!(
            listed_ids(&server, key).await,
            before,
            "{case}: nothing was stored"
        );
    }
    for (case, content_type, body) in not_json {
        let r = raw(
            &server,
            key,
            Method::POST,
            "/v1/api-keys",
            content_type,
            body.to_owned(),
        )
        .await;
        assert_eq!(r.status, 400, "{case}: {r:?}");
        assert_eq!(r.error_code(), "INVALID_REQUEST", "{case}: {r:?}");
        assert_eq!(
            listed_ids(&server, key).await,
            before,
            "{case}: nothing was stored"
        );
    }
    let events = audit_events(&server, key, "").await;
    assert_eq!(
        events.len(),
        1,
        "only the first key's creation is audited: {events:?}"
    );
}

#[tokio::test]
async fn inputs_at_the_documented_limits_are_accepted() {
    // Arrange: the admin key holds read, write, admin, so it may grant any custom
    // scope, and scopes at the format's limits are accepted.
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let key = acct.api_key.as_str();
    let thirty_two: Vec<String> = (0..32).map(|i| format!("s{i}")).collect();
    let accepted = [
        (
            "100-char multibyte name",
            json!({"scopes": ["read"], "name": "é".repeat(100)}),
        ),
        (
            "null name and metadata",
            json!({"scopes": ["read"], "name": null, "metadata": null}),
        ),
        (
            "metadata exactly 4096 bytes",
            json!({"scopes": ["read"], "metadata": {"blob": "x".repeat(4085)}}),
        ),
        ("expires_in 1", json!({"scopes": ["read"], "expires_in": 1})),
        (
            "expires_in 100 years",
            json!({"scopes": ["read"], "expires_in": 3_153_600_000_i64}),
        ),
        (
            "expires_at with an offset",
            json!({"scopes": ["read"], "expires_at": "2099-06-01T12:00:00.5+02:00"}),
        ),
        ("64-char scope", json!({"scopes": ["a".repeat(64)]})),
        ("32 scopes", json!({"scopes": thirty_two})),
        ("every allowed character", json!({"scopes": ["a0_.:-z"]})),
    ];

    // Act + Assert
    for (case, body) in &accepted {
        let r = post(&server, key, "/v1/api-keys", body).await;
        assert_eq!(r.status, 201, "{case}: {r:?}");
    }
    let keys = list_keys(&server, key).await;
    assert_eq!(keys.len(), 1 + accepted.len());
    assert!(keys[2]["name"].is_null(), "null name is stored as no name");
    assert_eq!(
        keys[2]["metadata"],
        json!({}),
        "null metadata defaults to {{}}"
    );
    assert_eq!(
        keys[3]["metadata"]["blob"].as_str().map(str::len),
        Some(4085)
    );
    assert_eq!(
        keys[6]["expires_at"], "2099-06-01T10:00:00Z",
        "UTC, second precision"
    );
}

#[tokio::test]
async fn invalid_patch_and_rotate_bodies_are_refused_and_leave_the_key_unchanged() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let key = acct.api_key.as_str();
    let (id, secret) = create_key(
        &server,
        key,
        &json!({"name": "target", "scopes": ["read"], "metadata": {"k": "v"}, "expires_in": 86400}),
    )
    .await;
    let before = key_object(&server, key, &id).await;
    let json_ct = Some("application/json");
    // (operation, case, content type, raw body, code, field)
    let cases: Vec<BodyCase<'_>> = [
        ("unknown field", json!({"colour": "blue"}), "colour"),
        ("status deleted", json!({"status": "deleted"}), "status"),
        ("status expired", json!({"status": "expired"}), "status"),
        ("status null", json!({"status": null}), "status"),
        ("scopes null", json!({"scopes": null}), "scopes"),
        ("scopes empty", json!({"scopes": []}), "scopes"),
        ("scopes malformed", json!({"scopes": ["Read"]}), "scopes"),
        (
            "past expires_at",
            json!({"expires_at": "2000-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            "non-RFC 3339 expires_at",
            json!({"expires_at": "soon"}),
            "expires_at",
        ),
        ("empty name", json!({"name": ""}), "name"),
        ("metadata array", json!({"metadata": [1]}), "metadata"),
        (
            "good name with a bad status",
            json!({"name": "half", "status": "deleted"}),
            "status",
        ),
    ]
    .into_iter()
    .map(|(case, body, field)| {
        (
            "PATCH",
            case,
            json_ct,
            body.to_string(),
            "VALIDATION_ERROR",
            field,
        )
    })
    .chain([
        (
            "PATCH",
            "malformed JSON",
            json_ct,
            r#"{"name": "x""#.to_owned(),
            "INVALID_REQUEST",
            "",
        ),
        (
            "PATCH",
            "text/plain",
            Some("text/plain"),
            r#"{"name": "x"}"#.to_owned(),
            "INVALID_REQUEST",
            "",
        ),
    ])
    .chain(
        [
            (
                "grace -1",
                json!({"grace_period_seconds": -1}),
                "grace_period_seconds",
            ),
            (
                "grace 604801",
                json!({"grace_period_seconds": 604_801}),
                "grace_period_seconds",
            ),
            (
                "grace \"ten\"",
                json!({"grace_period_seconds": "ten"}),
                "grace_period_seconds",
            ),
            (
                "grace 1.5",
                json!({"grace_period_seconds": 1.5}),
                "grace_period_seconds",
            ),
            ("unknown field", json!({"grace": 5}), "grace"),
        ]
        .into_iter()
        .map(|(case, body, field)| {
            (
                "rotate",
                case,
                json_ct,
                body.to_string(),
                "VALIDATION_ERROR",
                field,
            )
        }),
    )
    .chain([(
        "rotate",
        "malformed JSON",
        json_ct,
        r#"{"grace_period_seconds": "#.to_owned(),
        "INVALID_REQUEST",
        "",
    )])
    .collect();

    for (op, case, content_type, body, code, field) in cases {
        // Act
        let (method, path) = match op {
            "PATCH" => (Method::PATCH, key_path(&id)),
            _ => (Method::POST, rotate_path(&id)),
        };
        let r = raw(&server, key, method, &path, content_type, body).await;

        // Assert
        assert_eq!(r.status, 400, "{op} {case}: {r:?}");
        assert_eq!(r.error_code(), code, "{op} {case}: {r:?}");
        if code == "VALIDATION_ERROR" {
            assert_eq!(r.field(), field, "{op} {case}: {r:?}");
        }
        let now = key_object(&server, key, &id).await;
        assert_eq!(now, before, "{op} {case}: the key is unchanged");
    }
    let v = validate(&server, Some(&secret)).await;
    assert_eq!(
        v.body["valid"], true,
        "the original secret still works: {v:?}"
    );
    let events = audit_events(&server, key, &format!("?key_id={id}")).await;
    assert_eq!(
        actions(&events),
        ["key.created"],
        "no refused change was audited"
    );
}

#[tokio::test]
async fn patch_changes_exactly_the_given_fields_and_takes_effect_on_the_next_request() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let admin = acct.api_key.as_str();
    let (id, secret) = create_key(
        &server,
        admin,
        &json!({"name": "k", "scopes": ["read", "write"], "metadata": {"a": 1, "b": 2}, "expires_in": 3600}),
    )
    .await;
    let original = key_object(&server, admin, &id).await;
    let path = key_path(&id);
    assert_eq!(
        post(
            &server,
            &secret,
            "/v1/api-keys",
            &json!({"scopes": ["read"]})
        )
        .await
        .status,
        201,
        "write works before the change"
    );

    // Act + Assert: narrowing scopes applies to the key's very next request.
    let narrowed = patch(&server, admin, &path, &json!({"scopes": ["read"]})).await;
    assert_eq!(narrowed.status, 200, "{narrowed:?}");
    assert_eq!(narrowed.header("cache-control"), Some("no-store"));
    assert_eq!(narrowed.body["scopes"], json!(["read"]));
    let denied = post(
        &server,
        &secret,
        "/v1/api-keys",
        &json!({"scopes": ["read"]}),
    )
    .await;
    assert_eq!(
        denied.status, 403,
        "the old scopes are not cached: {denied:?}"
    );
    assert_eq!(
        denied.body["error"]["details"]["required"],
        json!(["write"])
    );

    // Disabling and re-enabling.
    let disabled = patch(&server, admin, &path, &json!({"status": "inactive"})).await;
    assert_eq!(disabled.body["status"], "inactive", "{disabled:?}");
    let refused = get(&server, &secret, "/v1/api-keys").await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(reason(&refused), "inactive");
    let inactive = get(&server, admin, "/v1/api-keys?status=inactive").await;
    assert_eq!(
        inactive.body["api_keys"][0]["key_id"],
        id.as_str(),
        "{inactive:?}"
    );
    let enabled = patch(&server, admin, &path, &json!({"status": "active"})).await;
    assert_eq!(enabled.body["status"], "active", "{enabled:?}");
    assert_eq!(
        get(&server, &secret, "/v1/api-keys").await.status,
        200,
        "re-enabled at once"
    );

    // name null clears it; metadata replaces, it does not merge.
    let r = patch(
        &server,
        admin,
        &path,
        &json!({"name": null, "metadata": {"c": 3}}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body["name"].is_null(), "{r:?}");
    assert_eq!(r.body["metadata"], json!({"c": 3}));
    assert_eq!(r.body["scopes"], json!(["read"]), "untouched fields stay");
    assert_eq!(
        r.body["expires_at"], original["expires_at"],
        "untouched fields stay"
    );
    assert_eq!(r.body["hint"], original["hint"]);
    assert_eq!(r.body["created_at"], original["created_at"]);

    // metadata null sets {}; expires_at null removes the expiry; a new one is normalised.
    let r = patch(
        &server,
        admin,
        &path,
        &json!({"metadata": null, "expires_at": null}),
    )
    .await;
    assert_eq!(
        (r.body["metadata"].clone(), r.body["expires_at"].clone()),
        (json!({}), Value::Null),
        "{r:?}"
    );
    let r = patch(
        &server,
        admin,
        &path,
        &json!({"expires_at": "2099-01-01T00:30:00.9+01:00"}),
    )
    .await;
    assert_eq!(r.body["expires_at"], "2098-12-31T23:30:00Z", "{r:?}");

    // An empty PATCH changes nothing.
    let before_empty = key_object(&server, admin, &id).await;
    let r = patch(&server, admin, &path, &json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(without_last_used(&r.body), without_last_used(&before_empty));

    // Every read agrees with the last answer.
    let stored = key_object(&server, admin, &id).await;
    assert_eq!(without_last_used(&stored), without_last_used(&r.body));
    let events = audit_events(&server, admin, &format!("?key_id={id}&action=key.updated")).await;
    assert_eq!(events.len(), 6, "one event per effective PATCH: {events:?}");
}

#[tokio::test]
async fn handler_checks_run_in_the_documented_order() {
    // Arrange: auth → scope → rate limit → body → lookup → escalation → self-lockout.
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let admin = acct.api_key.as_str();
    let (_, reader) = create_key(&server, admin, &json!({"scopes": ["read"]})).await;
    let (rw_id, rw) = create_key(&server, admin, &json!({"scopes": ["read", "write"]})).await;
    let (admin2, _) = create_key(&server, admin, &json!({"scopes": ["read", "admin"]})).await;
    let bad_status = json!({"status": "deleted"}).to_string();
    let json_ct = Some("application/json");
    let cases: Vec<OrderCase<'_>> = vec![
        (
            "unknown key beats a malformed body",
            "kw_notakey",
            Method::POST,
            "/v1/api-keys".to_owned(),
            json_ct,
            "{".to_owned(),
            401,
            "INVALID_API_KEY",
        ),
        (
            "missing scope beats a malformed body",
            &reader,
            Method::POST,
            "/v1/api-keys".to_owned(),
            json_ct,
            "{".to_owned(),
            403,
            "INSUFFICIENT_PERMISSIONS",
        ),
        (
            "missing scope beats a bad body on a missing key",
            &reader,
            Method::PATCH,
            key_path(MISSING_ID),
            json_ct,
            bad_status.clone(),
            403,
            "INSUFFICIENT_PERMISSIONS",
        ),
        (
            "missing scope beats a hostile id",
            &reader,
            Method::POST,
            rotate_path("%00"),
            None,
            String::new(),
            403,
            "INSUFFICIENT_PERMISSIONS",
        ),
        (
            "missing scope beats a missing key on DELETE",
            &reader,
            Method::DELETE,
            key_path(MISSING_ID),
            None,
            String::new(),
            403,
            "INSUFFICIENT_PERMISSIONS",
        ),
        (
            "a bad body beats a missing key",
            &rw,
            Method::PATCH,
            key_path(MISSING_ID),
            json_ct,
            bad_status.clone(),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "a bad grace beats a missing key",
            &rw,
            Method::POST,
            rotate_path(MISSING_ID),
            json_ct,
            json!({"grace_period_seconds": 604_801}).to_string(),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "a bad body beats escalation",
            &rw,
            Method::PATCH,
            key_path(&admin2),
            json_ct,
            bad_status.clone(),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "a good body on a missing key",
            &rw,
            Method::PATCH,
            key_path(MISSING_ID),
            json_ct,
            json!({"name": "x"}).to_string(),
            404,
            "RESOURCE_NOT_FOUND",
        ),
        (
            "escalation beats self-lockout",
            &rw,
            Method::PATCH,
            key_path(&rw_id),
            json_ct,
            json!({"scopes": ["read", "write", "admin"]}).to_string(),
            403,
            "INSUFFICIENT_PERMISSIONS",
        ),
    ];

    for (case, key, method, path, content_type, body, status, code) in cases {
        // Act
        let r = raw(&server, key, method, &path, content_type, body).await;

        // Assert
        assert_eq!(r.status, status, "{case}: {r:?}");
        assert_eq!(r.error_code(), code, "{case}: {r:?}");
    }

    // The rate limit comes after the scope and before the body (free: 10 per minute).
    let free = server.create_account("free");
    let (_, free_reader) = create_key(&server, &free.api_key, &json!({"scopes": ["read"]})).await;
    let mut spent = 1;
    while spent < 10 {
        let r = get(&server, &free.api_key, "/v1/api-keys").await;
        assert_eq!(r.status, 200, "request #{spent}: {r:?}");
        spent += 1;
    }
    let limited = raw(
        &server,
        &free.api_key,
        Method::POST,
        "/v1/api-keys",
        json_ct,
        "{".to_owned(),
    )
    .await;
    assert_eq!(
        limited.status, 429,
        "rate limit beats a malformed body: {limited:?}"
    );
    assert_eq!(limited.error_code(), "RATE_LIMIT_EXCEEDED");
    let limited = patch(
        &server,
        &free.api_key,
        &key_path(MISSING_ID),
        &json!({"name": "x"}),
    )
    .await;
    assert_eq!(
        limited.status, 429,
        "rate limit beats a missing key: {limited:?}"
    );
    let scope_first = post(
        &server,
        &free_reader,
        "/v1/api-keys",
        &json!({"scopes": ["read"]}),
    )
    .await;
    assert_eq!(
        scope_first.status, 403,
        "a missing scope beats the rate limit: {scope_first:?}"
    );
    assert_eq!(scope_first.error_code(), "INSUFFICIENT_PERMISSIONS");
}

#[tokio::test]
async fn hostile_key_id_path_segments_are_a_json_404_never_a_server_error() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let key = acct.api_key.as_str();
    let (real, real_secret) =
        create_key(&server, key, &json!({"name": "real", "scopes": ["read"]})).await;
    let real_before = key_object(&server, key, &real).await;
    let long = format!("key_{}", "A".repeat(4996));
    let lower = format!("key_{}", real[4..].to_lowercase());
    let upper_prefix = format!("KEY_{}", &real[4..]);
    let padded = format!("{real}%20");
    let nul_after = format!("{real}%00");
    let segments = [
        ("SQL injection", "key_%27%20OR%201%3D1--"),
        ("SQL injection, quoted", "%27%20OR%20%271%27%3D%271"),
        (
            "SQL union",
            "key_01JD0000000000000000000000%27%20UNION%20SELECT%20*%20FROM%20key_secret--",
        ),
        ("encoded traversal", "..%2F..%2Fetc%2Fpasswd"),
        ("NUL byte", "%00"),
        ("NUL after a real id", nul_after.as_str()),
        ("invalid UTF-8", "%FF%FE"),
        ("5000-char id", long.as_str()),
        ("lower-case id", lower.as_str()),
        ("upper-case prefix", upper_prefix.as_str()),
        ("trailing space", padded.as_str()),
        ("the word validate's neighbour", "validate2"),
        ("missing id", MISSING_ID),
    ];

    for (case, segment) in segments {
        for (op, r) in [
            ("GET", get(&server, key, &key_path(segment)).await),
            (
                "PATCH",
                patch(&server, key, &key_path(segment), &json!({"name": "hacked"})).await,
            ),
            (
                "rotate",
                post(&server, key, &rotate_path(segment), &json!({})).await,
            ),
            ("DELETE", delete(&server, key, &key_path(segment)).await),
        ] {
            // Assert
            assert!(r.status < 500, "{case} {op}: server error {r:?}");
            assert_eq!(r.status, 404, "{case} {op}: {r:?}");
            assert_eq!(r.error_code(), "RESOURCE_NOT_FOUND", "{case} {op}");
        }
    }
    assert_eq!(
        key_object(&server, key, &real).await,
        real_before,
        "the real key is untouched"
    );
    assert_eq!(
        validate(&server, Some(&real_secret)).await.body["valid"],
        true
    );
    assert_eq!(listed_ids(&server, key).await.len(), 2);
}

#[tokio::test]
async fn validate_reports_each_kind_of_key_and_counts_as_a_request() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let admin = acct.api_key.as_str();
    let (valid_id, valid) = create_key(
        &server,
        admin,
        &json!({"scopes": ["read", "write"], "metadata": {"plan": "gold"}, "expires_in": 3600}),
    )
    .await;
    let (write_only_id, write_only) =
        create_key(&server, admin, &json!({"scopes": ["write"]})).await;
    let (inactive_id, inactive) = create_key(&server, admin, &json!({"scopes": ["read"]})).await;
    let r = patch(
        &server,
        admin,
        &key_path(&inactive_id),
        &json!({"status": "inactive"}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let (_, expiring) = create_key(
        &server,
        admin,
        &json!({"scopes": ["read"], "expires_in": 1}),
    )
    .await;
    let unknown = KeySecret::generate(&KeyPrefix::default(), &mut OsRandom);
    let mut tampered = valid.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let valid_object = key_object(&server, admin, &valid_id).await;

    // Act + Assert: a valid key.
    let ok = validate(&server, Some(&valid)).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.header("cache-control"), Some("no-store"));
    assert_eq!(
        ok.body,
        json!({
            "valid": true,
            "key_id": valid_id,
            "account_id": acct.account_id,
            "scopes": ["read", "write"],
            "metadata": {"plan": "gold"},
            "expires_at": valid_object["expires_at"],
        })
    );
    let request_id = ok.header("x-request-id").unwrap().to_owned();

    // No scope is needed, and no expiry shows as null.
    let wo = validate(&server, Some(&write_only)).await;
    assert_eq!(wo.status, 200, "{wo:?}");
    assert_eq!(wo.body["valid"], true);
    assert_eq!(wo.body["key_id"], write_only_id.as_str());
    assert!(
        wo.body
            .as_object()
            .unwrap()
            .get("expires_at")
            .is_some_and(Value::is_null),
        "expires_at: null for a key without expiry: {wo:?}"
    );

    // Well-formed keys that don't authenticate.
    for (case, secret, why) in [
        ("unknown", unknown.expose(), "not_found"),
        ("inactive", inactive.as_str(), "inactive"),
    ] {
        let r = validate(&server, Some(secret)).await;
        assert_eq!(r.status, 200, "{case}: {r:?}");
        assert_eq!(r.body, json!({"valid": false, "reason": why}), "{case}");
    }

    // Missing or malformed headers.
    let missing = validate(&server, None).await;
    assert_eq!(missing.status, 401, "{missing:?}");
    assert_eq!(missing.error_code(), "INVALID_API_KEY");
    assert_eq!(reason(&missing), "missing");
    for (case, secret) in [
        ("garbage", "garbage"),
        ("short", "kw_short"),
        ("bad checksum", tampered.as_str()),
    ] {
        let r = validate(&server, Some(secret)).await;
        assert_eq!(r.status, 401, "{case}: {r:?}");
        assert_eq!(r.error_code(), "INVALID_API_KEY", "{case}");
        assert_eq!(reason(&r), "malformed", "{case}");
    }

    // Expired (created with expires_in 1, so it expires within a second of its creation).
    let expired = common::eventually(
        Duration::from_secs(2),
        "validate to call the key made with expires_in 1 expired",
        async || {
            let r = validate(&server, Some(&expiring)).await;
            if r.body["valid"] == true {
                Err(r)
            } else {
                Ok(r)
            }
        },
    )
    .await;
    assert_eq!(expired.status, 200, "{expired:?}");
    assert_eq!(expired.body, json!({"valid": false, "reason": "expired"}));

    // The valid call is in the request history.
    let path = format!("/v1/request-history?key_id={valid_id}");
    common::eventually(
        Duration::from_secs(2),
        "validate by a valid key to show in the request history within 2 s",
        async || {
            let r = get(&server, admin, &path).await;
            r.body["requests"].as_array().is_some_and(|rows| {
                rows.iter().any(|row| {
                    row["endpoint"] == "POST /v1/api-keys/validate"
                        && row["method"] == "POST"
                        && row["status"] == 200
                        && row["request_id"] == request_id.as_str()
                })
            })
        },
    )
    .await;

    // It also counts against the plan's rate limit (free: 10 per minute).
    let free = server.create_account("free");
    let mut remaining = Vec::new();
    for i in 0..10 {
        let r = validate(&server, Some(&free.api_key)).await;
        assert_eq!(r.status, 200, "validate #{i} on a free plan: {r:?}");
        assert_eq!(
            r.header("x-ratelimit-limit"),
            Some("10"),
            "validate #{i}: {r:?}"
        );
        remaining.push(r.header("x-ratelimit-remaining").unwrap_or("").to_owned());
    }
    assert_eq!(
        remaining,
        ["9", "8", "7", "6", "5", "4", "3", "2", "1", "0"]
    );
    // The 11th in a minute is answered, as API.md's validate says, with the reason.
    let limited = validate(&server, Some(&free.api_key)).await;
    assert_eq!(
        limited.status, 200,
        "the 11th validate in a minute: {limited:?}"
    );
    assert_eq!(limited.body["valid"], false, "{limited:?}");
    assert_eq!(limited.body["reason"], "rate_limited", "{limited:?}");
    assert!(
        limited.body["retry_after"].as_u64().is_some(),
        "{limited:?}"
    );
}

#[tokio::test]
async fn validate_answers_with_the_key_as_it_is_after_each_change() {
    // Arrange: a key validated once, so its answer is rendered and kept.
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let admin = acct.api_key.as_str();
    let (key_id, key) = create_key(
        &server,
        admin,
        &json!({"scopes": ["read", "write"], "metadata": {"tier": "gold"}}),
    )
    .await;
    let first = validate(&server, Some(&key)).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.body["metadata"], json!({"tier": "gold"}));

    // Act: change what the answer carries.
    let r = patch(
        &server,
        admin,
        &key_path(&key_id),
        &json!({"scopes": ["read"], "metadata": {"tier": "silver"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");

    // Assert: the very next answer is the changed key's, in the same form.
    let second = validate(&server, Some(&key)).await;
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert_eq!(second.header("cache-control"), Some("no-store"));
    assert_eq!(
        second.body,
        json!({
            "valid": true,
            "key_id": key_id,
            "account_id": acct.account_id,
            "scopes": ["read"],
            "metadata": {"tier": "silver"},
            "expires_at": null,
        })
    );

    // And once disabled it is invalid, though its validate answer was cached just above.
    let r = patch(
        &server,
        admin,
        &key_path(&key_id),
        &json!({"status": "inactive"}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let third = validate(&server, Some(&key)).await;
    assert_eq!(third.status, 200, "{third:?}");
    assert_eq!(third.body, json!({"valid": false, "reason": "inactive"}));
}

#[tokio::test]
async fn the_audit_log_records_every_change_with_its_actor_and_request_and_no_secret() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let admin = acct.api_key.as_str();
    let mut secrets = vec![acct.api_key.clone()];
    // (action, key_id, actor, request_id) of each change, oldest first.
    let mut expected: Vec<(String, String, Value, String)> = Vec::new();

    // Act: admin creates a read+write key, which then works on a new key.
    let r = post(
        &server,
        admin,
        "/v1/api-keys",
        &json!({"name": "rw", "scopes": ["read", "write"]}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let rw_id = text(&r.body["key_id"]);
    let rw = text(&r.body["api_key"]);
    secrets.push(rw.clone());
    expected.push((
        "key.created".into(),
        rw_id.clone(),
        json!(acct.key_id),
        r.header("x-request-id").unwrap().into(),
    ));

    let r = send(
        client()
            .post(server.url("/v1/api-keys"))
            .header("x-api-key", &rw)
            .header("x-request-id", "client-chosen.id_1")
            .json(&json!({"name": "audited", "scopes": ["read"], "metadata": {"x": 1}})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("x-request-id"), Some("client-chosen.id_1"));
    let k_id = text(&r.body["key_id"]);
    secrets.push(text(&r.body["api_key"]));
    expected.push((
        "key.created".into(),
        k_id.clone(),
        json!(rw_id),
        "client-chosen.id_1".into(),
    ));

    let r = patch(&server, &rw, &key_path(&k_id), &json!({"name": "renamed"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    expected.push((
        "key.updated".into(),
        k_id.clone(),
        json!(rw_id),
        r.header("x-request-id").unwrap().into(),
    ));

    // A PATCH that changes nothing adds no event.
    let count_before_noop = audit_events(&server, admin, "").await.len();
    let noop = patch(
        &server,
        &rw,
        &key_path(&k_id),
        &json!({"name": "renamed", "scopes": ["read"], "status": "active", "metadata": {"x": 1}}),
    )
    .await;
    assert_eq!(noop.status, 200, "{noop:?}");
    assert_eq!(
        audit_events(&server, admin, "").await.len(),
        count_before_noop,
        "a PATCH without a real change writes no event"
    );

    let r = post(
        &server,
        admin,
        &rotate_path(&k_id),
        &json!({"grace_period_seconds": 60}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    secrets.push(text(&r.body["api_key"]));
    expected.push((
        "key.rotated".into(),
        k_id.clone(),
        json!(acct.key_id),
        r.header("x-request-id").unwrap().into(),
    ));

    let r = delete(&server, &rw, &key_path(&k_id)).await;
    assert_eq!(r.status, 204, "{r:?}");
    expected.push((
        "key.revoked".into(),
        k_id.clone(),
        json!(rw_id),
        r.header("x-request-id").unwrap().into(),
    ));

    // Assert: the whole log, newest first.
    let page = audit_page(&server, admin, "").await;
    assert_eq!(page.header("content-type"), Some("application/json"));
    assert!(
        page.body["next_before"].is_null(),
        "one page holds it all: {page:?}"
    );
    let events = page.body["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), expected.len() + 1, "{events:?}");
    for (event, (action, key_id, actor, request_id)) in events.iter().zip(expected.iter().rev()) {
        assert_eq!(event["action"], action.as_str(), "{event}");
        assert_eq!(event["key_id"], key_id.as_str(), "{action}: {event}");
        assert_eq!(&event["actor_key_id"], actor, "{action}: {event}");
        assert_eq!(
            event["request_id"],
            request_id.as_str(),
            "{action}: {event}"
        );
    }
    let first = events.last().unwrap();
    assert_eq!(
        first["action"], "key.created",
        "the CLI's first key: {first}"
    );
    assert_eq!(first["key_id"], acct.key_id.as_str());
    assert!(
        first["actor_key_id"].is_null(),
        "made by an operator command: {first}"
    );
    for event in &events {
        let mut fields: Vec<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "action",
                "actor_key_id",
                "changes",
                "hash",
                "key_id",
                "prev_hash",
                "request_id",
                "time"
            ],
            "{event}"
        );
        assert!(event["changes"].is_object(), "{event}");
        assert!(is_second_precision_utc(&event["time"]), "{event}");
    }
    let times: Vec<OffsetDateTime> = events.iter().map(|e| parse_time(&e["time"])).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    assert!(
        !events[2]["changes"]["name"].is_null(),
        "the update names what changed: {}",
        events[2]
    );
    for secret in &secrets {
        assert!(
            !page.text.contains(&secret[3..]),
            "a secret appeared in the audit log"
        );
    }

    // Filters.
    let rotated = audit_events(&server, admin, "?action=key.rotated").await;
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    assert_eq!(rotated[0]["key_id"], k_id.as_str());
    let of_k = audit_events(&server, admin, &format!("?key_id={k_id}")).await;
    assert_eq!(
        actions(&of_k),
        ["key.revoked", "key.rotated", "key.updated", "key.created"]
    );

    // Paging with limit=2 covers every event once, in order.
    let mut paged = Vec::new();
    let mut query = "?limit=2".to_owned();
    for _ in 0..10 {
        let p = audit_page(&server, admin, &query).await;
        let batch = p.body["events"].as_array().unwrap();
        assert!(!batch.is_empty() && batch.len() <= 2, "page size: {p:?}");
        paged.extend(batch.iter().cloned());
        match p.body["next_before"].as_str() {
            Some(cursor) => query = format!("?limit=2&before={cursor}"),
            None => break,
        }
    }
    assert_eq!(paged, events, "pages neither skip nor repeat");

    // Time windows and refused parameters.
    assert_eq!(
        audit_events(&server, admin, "?since=2000-01-01T00:00:00Z").await,
        events
    );
    assert!(
        audit_events(&server, admin, "?until=2000-01-01T00:00:00Z")
            .await
            .is_empty()
    );
    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?action=key.deleted", "action"),
        ("?before=garbage", "before"),
        ("?since=yesterday", "since"),
        ("?key_id=..%2Fetc", "key_id"),
        ("?colour=blue", "colour"),
    ] {
        let r = get(&server, admin, &format!("/v1/audit-log{query}")).await;
        assert_eq!(r.status, 400, "{query}: {r:?}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR", "{query}");
        assert_eq!(r.field(), field, "{query}");
    }

    // A read+write key may not read it.
    let denied = get(&server, &rw, "/v1/audit-log").await;
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.error_code(), "INSUFFICIENT_PERMISSIONS");
    assert_eq!(
        denied.body["error"]["details"]["required"],
        json!(["admin"])
    );
}
