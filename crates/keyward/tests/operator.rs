//! The operator's side, black box: custom scopes an admin key grants, operator keys and
//! the operator API (accounts, plans), suspension, and the CLI that shares its code. On
//! SQLite, or PostgreSQL with `KEYWARD_TEST_BACKEND=postgres`; the cross-node test always
//! on PostgreSQL.

#![expect(
    clippy::unwrap_used,
    reason = "tests: a failed unwrap is a failed test"
)]

mod common;

use std::time::Duration;

use common::{Server, client, create_key, eventually, get, patch, post, send};
use serde_json::{Value, json};

/// Makes an operator through the CLI; returns its key.
fn operator_key(server: &Server) -> String {
    let (operator_id, key) = common::create_operator(server, "billing");
    assert!(operator_id.starts_with("op_"), "{operator_id}");
    key
}

/// PUT JSON with a key.
async fn put(server: &Server, key: &str, path: &str, body: &Value) -> common::Reply {
    send(
        client()
            .put(server.url(path))
            .header("x-api-key", key)
            .json(body),
    )
    .await
}

/// DELETE with a key.
async fn delete(server: &Server, key: &str, path: &str) -> common::Reply {
    common::delete(server, key, path).await
}

/// `POST /v1/api-keys/validate` with `key`.
async fn validate(server: &Server, key: &str) -> common::Reply {
    send(
        client()
            .post(server.url("/v1/api-keys/validate"))
            .header("x-api-key", key),
    )
    .await
}

/// The accounts the CLI lists, as JSON lines.
fn accounts(server: &Server) -> Vec<Value> {
    let out = server.cli(&["accounts", "list", "--json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn an_admin_key_grants_a_custom_scope_and_validate_returns_it_but_read_write_cannot() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("enterprise");
    let (_, rw) = create_key(
        &server,
        &acct.api_key,
        &json!({"scopes": ["read", "write"]}),
    )
    .await;

    // Act
    let granted = post(
        &server,
        &acct.api_key,
        "/v1/api-keys",
        &json!({"scopes": ["videos:create"]}),
    )
    .await;
    let refused = post(
        &server,
        &rw,
        "/v1/api-keys",
        &json!({"scopes": ["read", "videos:create"]}),
    )
    .await;
    let admin_refused = post(&server, &rw, "/v1/api-keys", &json!({"scopes": ["admin"]})).await;

    // Assert
    assert_eq!(granted.status, 201, "{granted:?}");
    let secret = granted.body["api_key"].as_str().unwrap();
    let v = validate(&server, secret).await;
    assert_eq!(v.body["valid"], true, "{v:?}");
    assert_eq!(v.body["scopes"], json!(["videos:create"]));
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(refused.error_code(), "INSUFFICIENT_PERMISSIONS");
    assert_eq!(
        refused.body["error"]["details"]["required"],
        json!(["videos:create"])
    );
    assert_eq!(
        admin_refused.status, 403,
        "built-in scopes stay subset-only"
    );
}

#[tokio::test]
async fn account_keys_are_refused_by_the_operator_api_and_operator_keys_by_v1() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("pro");
    let op = operator_key(&server);
    assert!(op.starts_with("kwop_"), "operator keys are <prefix>op_…");

    // Act
    let account_on_operator = get(&server, &acct.api_key, "/operator/v1/plans").await;
    let operator_on_v1 = get(&server, &op, "/v1/api-keys").await;
    let operator_validates = validate(&server, &op).await;
    let missing = send(client().get(server.url("/operator/v1/plans"))).await;
    let ok = get(&server, &op, "/operator/v1/plans").await;

    // Assert
    assert_eq!(account_on_operator.status, 401, "{account_on_operator:?}");
    assert_eq!(account_on_operator.error_code(), "INVALID_API_KEY");
    assert_eq!(operator_on_v1.status, 401, "{operator_on_v1:?}");
    assert_eq!(operator_on_v1.error_code(), "INVALID_API_KEY");
    assert_eq!(operator_validates.body["valid"], false);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.body["error"]["details"]["reason"], "missing");
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.header("cache-control"), Some("no-store"));
    assert!(ok.header("x-ratelimit-limit").is_none(), "not rate limited");

    // A revoked operator key stops working.
    let list = server.cli(&["operators", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&op),
        "no secret in the listing"
    );
    let id = listed["operator_id"].as_str().unwrap();
    assert!(server.cli(&["operators", "revoke", id]).status.success());
    assert_eq!(get(&server, &op, "/operator/v1/plans").await.status, 401);
}

#[tokio::test]
async fn a_sign_up_retried_with_the_same_external_id_makes_one_account() {
    // Arrange
    let server = Server::start_with(&["--no-bootstrap"]);
    let op = operator_key(&server);
    let body =
        json!({"name": "Acme", "plan": "pro", "external_id": "cus_42", "metadata": {"crm": 7}});

    // Act
    let first = post(&server, &op, "/operator/v1/accounts", &body).await;
    let retry = post(&server, &op, "/operator/v1/accounts", &body).await;

    // Assert
    assert_eq!(first.status, 201, "{first:?}");
    let account = &first.body["account"];
    let account_id = account["account_id"].as_str().unwrap();
    assert_eq!(account["external_id"], "cus_42");
    assert_eq!(account["plan"], "pro");
    assert_eq!(
        account["limits"],
        json!({"per_minute": 60, "per_day": 1000, "per_month": null})
    );
    assert_eq!(account["status"], "active");
    assert_eq!(account["metadata"], json!({"crm": 7}));
    assert_eq!(account["key_count"], 1);
    let key = &first.body["api_key"];
    assert_eq!(key["scopes"], json!(["read", "write", "admin"]));
    let secret = key["api_key"].as_str().unwrap();
    assert_eq!(get(&server, secret, "/v1/api-keys").await.status, 200);
    assert_eq!(retry.status, 409, "{retry:?}");
    assert_eq!(retry.error_code(), "CONFLICT");
    assert_eq!(retry.body["error"]["details"]["account_id"], account_id);
    assert_eq!(accounts(&server).len(), 1, "one account");
    let read = get(&server, &op, &format!("/operator/v1/accounts/{account_id}")).await;
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.body["account_id"], account_id);
}

#[tokio::test]
async fn bad_account_input_is_refused_with_its_field_and_stores_nothing() {
    // Arrange
    let server = Server::start_with(&["--no-bootstrap"]);
    let op = operator_key(&server);
    let created = post(
        &server,
        &op,
        "/operator/v1/accounts",
        &json!({"name": "Kept", "external_id": "cus_1"}),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.body["account"]["account_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/operator/v1/accounts/{id}");
    let before = get(&server, &op, &path).await.body;

    // Act + Assert: creations.
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(201)}), "name"),
        (json!({}), "name"),
        (json!({"name": "a", "plan": "Gold"}), "plan"),
        (json!({"name": "a", "plan": "platinum"}), "plan"),
        (json!({"name": "a", "external_id": ""}), "external_id"),
        (
            json!({"name": "a", "external_id": "x".repeat(129)}),
            "external_id",
        ),
        (json!({"name": "a", "metadata": [1]}), "metadata"),
        (json!({"name": "a", "colour": "blue"}), "colour"),
    ] {
        let r = post(&server, &op, "/operator/v1/accounts", &body).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR", "{body}");
        assert_eq!(r.field(), field, "{body}");
    }
    assert_eq!(accounts(&server).len(), 1, "no account was stored");

    // Act + Assert: changes.
    let other = post(
        &server,
        &op,
        "/operator/v1/accounts",
        &json!({"name": "Other", "external_id": "cus_2"}),
    )
    .await;
    let other_id = other.body["account"]["account_id"].as_str().unwrap();
    for (body, field) in [
        (json!({"status": "deleted"}), "status"),
        (json!({"plan": "platinum"}), "plan"),
        (
            json!({"overrides": {"per_month": 0}}),
            "overrides.per_month",
        ),
        (json!({"overrides": {"per_hour": 5}}), "per_hour"),
        (json!({"name": " "}), "name"),
        (json!({"external_id": "x".repeat(129)}), "external_id"),
    ] {
        let r = patch(&server, &op, &path, &body).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR", "{body}");
        assert_eq!(r.field(), field, "{body}");
    }
    let taken = patch(&server, &op, &path, &json!({"external_id": "cus_2"})).await;
    assert_eq!(taken.status, 409, "{taken:?}");
    assert_eq!(taken.body["error"]["details"]["account_id"], other_id);
    let missing = get(
        &server,
        &op,
        "/operator/v1/accounts/acct_01JD0000000000000000000000",
    )
    .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "RESOURCE_NOT_FOUND");
    assert_eq!(
        get(&server, &op, "/operator/v1/accounts/..").await.status,
        404
    );
    assert_eq!(
        get(&server, &op, &path).await.body,
        before,
        "nothing changed"
    );
}

#[tokio::test]
async fn a_suspended_accounts_keys_get_401_account_suspended_and_work_after_resume() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("pro");
    let op = operator_key(&server);
    let path = format!("/operator/v1/accounts/{}", acct.account_id);
    assert_eq!(
        get(&server, &acct.api_key, "/v1/api-keys").await.status,
        200
    );

    // Act
    let suspended = patch(&server, &op, &path, &json!({"status": "suspended"})).await;
    let refused = get(&server, &acct.api_key, "/v1/api-keys").await;
    let v = validate(&server, &acct.api_key).await;
    let resumed = patch(&server, &op, &path, &json!({"status": "active"})).await;
    let back = get(&server, &acct.api_key, "/v1/api-keys").await;

    // Assert
    assert_eq!(suspended.status, 200, "{suspended:?}");
    assert_eq!(suspended.body["status"], "suspended");
    assert_eq!(refused.status, 401, "on the very next request: {refused:?}");
    assert_eq!(refused.error_code(), "INVALID_API_KEY");
    assert_eq!(
        refused.body["error"]["details"]["reason"],
        "account_suspended"
    );
    assert_eq!(
        v.body,
        json!({"valid": false, "reason": "account_suspended"})
    );
    assert_eq!(resumed.status, 200, "{resumed:?}");
    assert_eq!(back.status, 200, "{back:?}");

    // The CLI does the same.
    let id = acct.account_id.as_str();
    assert!(server.cli(&["accounts", "suspend", id]).status.success());
    let row = &accounts(&server)[0];
    assert_eq!(row["status"], "suspended");
    assert!(server.cli(&["accounts", "resume", id]).status.success());
    assert_eq!(accounts(&server)[0]["status"], "active");
}

#[tokio::test]
async fn a_suspension_through_one_node_reaches_the_other_nodes_cache() {
    let Some(a) = Server::start_on_postgres("suspension across nodes", &["--no-bootstrap"]) else {
        return;
    };
    let b = a.another_node(&["--no-bootstrap"]);
    let acct = a.create_account("pro");
    let op = operator_key(&a);
    let path = format!("/operator/v1/accounts/{}", acct.account_id);
    // B has the key cached (10 s): only the change's announcement can refuse it sooner.
    assert_eq!(get(&b, &acct.api_key, "/v1/api-keys").await.status, 200);

    let suspended = patch(&a, &op, &path, &json!({"status": "suspended"})).await;
    assert_eq!(suspended.status, 200, "{suspended:?}");
    eventually(
        Duration::from_secs(5),
        "node B refuses the suspended account",
        async || {
            let r = get(&b, &acct.api_key, "/v1/api-keys").await;
            r.body["error"]["details"]["reason"] == "account_suspended"
        },
    )
    .await;

    let resumed = patch(&a, &op, &path, &json!({"status": "active"})).await;
    assert_eq!(resumed.status, 200, "{resumed:?}");
    eventually(
        Duration::from_secs(5),
        "node B takes the key again",
        async || get(&b, &acct.api_key, "/v1/api-keys").await.status == 200,
    )
    .await;
}

#[tokio::test]
async fn plans_are_put_listed_and_deleted_but_not_while_in_use() {
    // Arrange
    let server = Server::start_with(&["--no-bootstrap"]);
    let op = operator_key(&server);

    // Act
    let put_gold = put(
        &server,
        &op,
        "/operator/v1/plans/gold",
        &json!({"per_minute": 100, "per_month": 5}),
    )
    .await;
    let created = post(
        &server,
        &op,
        "/operator/v1/accounts",
        &json!({"name": "Acme", "plan": "gold"}),
    )
    .await;
    let in_use = delete(&server, &op, "/operator/v1/plans/gold").await;
    let listed = get(&server, &op, "/operator/v1/plans").await;

    // Assert
    assert_eq!(put_gold.status, 200, "{put_gold:?}");
    assert_eq!(
        put_gold.body,
        json!({"name": "gold", "per_minute": 100, "per_day": null, "per_month": 5})
    );
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(
        created.body["account"]["limits"],
        json!({"per_minute": 100, "per_day": null, "per_month": 5})
    );
    assert_eq!(in_use.status, 409, "{in_use:?}");
    assert_eq!(in_use.error_code(), "CONFLICT");
    let names: Vec<&str> = listed.body["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["enterprise", "free", "gold", "pro", "scale"]);

    // Overrides apply on any plan; a plan change shows at once.
    let id = created.body["account"]["account_id"].as_str().unwrap();
    let path = format!("/operator/v1/accounts/{id}");
    let overridden = patch(&server, &op, &path, &json!({"overrides": {"per_day": 20}})).await;
    assert_eq!(
        overridden.body["limits"],
        json!({"per_minute": 100, "per_day": 20, "per_month": 5}),
        "{overridden:?}"
    );
    assert_eq!(
        overridden.body["overrides"],
        json!({"per_minute": null, "per_day": 20, "per_month": null})
    );
    let raised = put(
        &server,
        &op,
        "/operator/v1/plans/gold",
        &json!({"per_minute": 200, "per_month": 50}),
    )
    .await;
    assert_eq!(raised.status, 200);
    assert_eq!(
        get(&server, &op, &path).await.body["limits"],
        json!({"per_minute": 200, "per_day": 20, "per_month": 50})
    );

    // Bad input changes nothing.
    for (path, body, field) in [
        ("/operator/v1/plans/Gold", json!({}), "name"),
        (
            "/operator/v1/plans/silver",
            json!({"per_day": 0}),
            "per_day",
        ),
        (
            "/operator/v1/plans/silver",
            json!({"per_day": -1}),
            "per_day",
        ),
        (
            "/operator/v1/plans/silver",
            json!({"per_day": "10"}),
            "per_day",
        ),
        (
            "/operator/v1/plans/silver",
            json!({"per_hour": 1}),
            "per_hour",
        ),
    ] {
        let r = put(&server, &op, path, &body).await;
        assert_eq!(r.status, 400, "{path} {body}: {r:?}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR");
        assert_eq!(r.field(), field, "{path} {body}");
    }
    let unchanged = get(&server, &op, "/operator/v1/plans").await;
    assert_eq!(unchanged.body["plans"].as_array().unwrap().len(), 5);
    let unknown = delete(&server, &op, "/operator/v1/plans/silver").await;
    assert_eq!(unknown.status, 404, "{unknown:?}");

    // Moved off the plan, it can go.
    assert_eq!(
        patch(&server, &op, &path, &json!({"plan": "free"}))
            .await
            .status,
        200
    );
    assert_eq!(
        delete(&server, &op, "/operator/v1/plans/gold").await.status,
        204
    );
}

#[tokio::test]
async fn an_operator_issues_a_key_with_any_scopes_and_the_cli_does_the_same() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("pro");
    let op = operator_key(&server);
    let path = format!("/operator/v1/accounts/{}/api-keys", acct.account_id);

    // Act
    let issued = post(
        &server,
        &op,
        &path,
        &json!({"name": "recovery", "scopes": ["read", "billing:export"]}),
    )
    .await;
    let cli = server.cli(&[
        "accounts",
        "issue-key",
        &acct.account_id,
        "--scopes",
        "admin,videos:create",
        "--json",
    ]);

    // Assert
    assert_eq!(issued.status, 201, "{issued:?}");
    assert_eq!(issued.body["scopes"], json!(["read", "billing:export"]));
    let secret = issued.body["api_key"].as_str().unwrap();
    let v = validate(&server, secret).await;
    assert_eq!(v.body["scopes"], json!(["read", "billing:export"]), "{v:?}");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let out: Value = serde_json::from_slice(&cli.stdout).unwrap();
    let from_cli = out["api_key"].as_str().unwrap();
    let v = validate(&server, from_cli).await;
    assert_eq!(v.body["scopes"], json!(["admin", "videos:create"]), "{v:?}");

    // Bad input and a missing account store nothing.
    for (body, field) in [
        (json!({"scopes": []}), "scopes"),
        (json!({"scopes": ["Read"]}), "scopes"),
        (json!({"scopes": ["read"], "expires_in": 0}), "expires_in"),
        (json!({"scopes": ["read"], "colour": 1}), "colour"),
    ] {
        let r = post(&server, &op, &path, &body).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert_eq!(r.field(), field, "{body}");
    }
    let missing = post(
        &server,
        &op,
        "/operator/v1/accounts/acct_01JD0000000000000000000000/api-keys",
        &json!({"scopes": ["read"]}),
    )
    .await;
    assert_eq!(missing.status, 404, "{missing:?}");
    let bad_cli = server.cli(&[
        "accounts",
        "issue-key",
        &acct.account_id,
        "--scopes",
        "Read",
    ]);
    assert!(!bad_cli.status.success());
    assert_eq!(
        accounts(&server)[0]["keys"],
        3,
        "the first key and the two issued"
    );
}

#[tokio::test]
async fn an_operator_looks_up_and_revokes_any_accounts_key_by_id() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("pro");
    let op = operator_key(&server);
    let path = format!("/operator/v1/api-keys/{}", acct.key_id);
    assert_eq!(
        get(&server, &acct.api_key, "/v1/api-keys").await.status,
        200
    );

    // Act
    let read = get(&server, &op, &path).await;
    let revoked = delete(&server, &op, &path).await;
    let after = get(&server, &acct.api_key, "/v1/api-keys").await;
    let again = delete(&server, &op, &path).await;

    // Assert
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.body["account_id"], acct.account_id.as_str());
    assert_eq!(read.body["key_id"], acct.key_id.as_str());
    assert!(read.body.get("api_key").is_none(), "no secret");
    assert!(!read.text.contains(&acct.api_key));
    assert_eq!(revoked.status, 204, "{revoked:?}");
    assert_eq!(after.status, 401, "on the very next request: {after:?}");
    assert_eq!(again.status, 404, "{again:?}");
    for bad in ["key_01JD0000000000000000000000", "..", "key_x"] {
        let r = get(&server, &op, &format!("/operator/v1/api-keys/{bad}")).await;
        assert_eq!(r.status, 404, "{bad}: {r:?}");
        assert_eq!(r.error_code(), "RESOURCE_NOT_FOUND");
    }
}

#[tokio::test]
async fn accounts_are_listed_by_page_with_filters_and_bad_parameters_are_refused() {
    // Arrange: three accounts, one suspended, one with an external id.
    let server = Server::start_with(&["--no-bootstrap"]);
    let op = operator_key(&server);
    let mut ids = Vec::new();
    for (name, external) in [("a", None), ("b", Some("cus_b")), ("c", None)] {
        let mut body = json!({"name": name});
        if let Some(external) = external {
            body["external_id"] = json!(external);
        }
        let r = post(&server, &op, "/operator/v1/accounts", &body).await;
        assert_eq!(r.status, 201, "{r:?}");
        ids.push(r.body["account"]["account_id"].as_str().unwrap().to_owned());
    }
    let suspend = patch(
        &server,
        &op,
        &format!("/operator/v1/accounts/{}", ids[2]),
        &json!({"status": "suspended"}),
    )
    .await;
    assert_eq!(suspend.status, 200);
    let listed_ids = |r: &common::Reply| -> Vec<String> {
        r.body["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["account_id"].as_str().unwrap().to_owned())
            .collect()
    };

    // Act
    let first = get(&server, &op, "/operator/v1/accounts?limit=2").await;
    let next = get(
        &server,
        &op,
        &format!("/operator/v1/accounts?limit=2&after={}", ids[1]),
    )
    .await;
    let by_external = get(&server, &op, "/operator/v1/accounts?external_id=cus_b").await;
    let suspended = get(&server, &op, "/operator/v1/accounts?status=suspended").await;

    // Assert
    assert_eq!(listed_ids(&first), ids[..2], "{first:?}");
    assert_eq!(first.body["has_more"], true);
    assert_eq!(listed_ids(&next), ids[2..]);
    assert_eq!(next.body["has_more"], false);
    assert_eq!(listed_ids(&by_external), [ids[1].clone()]);
    assert_eq!(listed_ids(&suspended), [ids[2].clone()]);
    assert_eq!(first.body["accounts"][0]["key_count"], 1);
    assert_eq!(first.body["accounts"][0]["requests_this_month"], 0);
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("after=acct_x", "after"),
        ("status=deleted", "status"),
        ("external_id=", "external_id"),
        ("colour=blue", "colour"),
    ] {
        let r = get(&server, &op, &format!("/operator/v1/accounts?{query}")).await;
        assert_eq!(r.status, 400, "{query}: {r:?}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR");
        assert_eq!(r.field(), field, "{query}");
    }
}

/// Seconds from now until the next calendar month starts in UTC.
fn secs_to_next_utc_month() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    let (year, month) = match now.month() {
        time::Month::December => (now.year() + 1, time::Month::January),
        m => (now.year(), m.next()),
    };
    let start = time::Date::from_calendar_date(year, month, 1)
        .unwrap()
        .midnight()
        .assume_utc();
    (start - now).whole_seconds()
}

/// A `429` of the monthly quota: the code, `details.window: "month"`, and a
/// `retry-after` that waits for the next UTC month.
fn assert_month_refusal(r: &common::Reply, what: &str) {
    assert_eq!(r.status, 429, "{what}: {r:?}");
    assert_eq!(r.error_code(), "RATE_LIMIT_EXCEEDED", "{what}");
    assert_eq!(r.body["error"]["details"]["window"], "month", "{what}");
    let retry: i64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (retry - secs_to_next_utc_month()).abs() <= 5,
        "{what}: retry-after {retry}, the month ends in {} s",
        secs_to_next_utc_month()
    );
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"), "{what}");
}

/// An account on `plan` made through the operator API: its id and first key.
async fn account_on(server: &Server, op: &str, plan: &str) -> (String, String) {
    let created = post(
        server,
        op,
        "/operator/v1/accounts",
        &json!({"name": "Metered", "plan": plan}),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    (
        created.body["account"]["account_id"]
            .as_str()
            .unwrap()
            .to_owned(),
        created.body["api_key"]["api_key"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

#[tokio::test]
async fn the_monthly_quota_refuses_past_per_month_and_a_restarted_node_still_refuses() {
    // Arrange: a plan of five requests a month, an account on it.
    let mut server = Server::start_with(&["--no-bootstrap"]);
    let op = operator_key(&server);
    let plan = put(
        &server,
        &op,
        "/operator/v1/plans/metered",
        &json!({"per_month": 5}),
    )
    .await;
    assert_eq!(plan.status, 200, "{plan:?}");
    let (account_id, key) = account_on(&server, &op, "metered").await;

    // Act
    let mut allowed = Vec::new();
    for _ in 0..5 {
        allowed.push(get(&server, &key, "/v1/api-keys").await);
    }
    let refused = get(&server, &key, "/v1/api-keys").await;
    let refused_post = post(&server, &key, "/v1/api-keys", &json!({"scopes": ["read"]})).await;
    let answered = validate(&server, &key).await;

    // Assert: five successes, counted down in the headers, then the month's 429.
    for (i, r) in allowed.iter().enumerate() {
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"), "request {i}");
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some((4 - i).to_string().as_str()),
            "request {i}"
        );
    }
    assert_month_refusal(&refused, "GET over the quota");
    assert_eq!(refused.header("x-ratelimit-limit"), Some("5"));
    assert_month_refusal(&refused_post, "POST over the quota");
    // validate's own answer for a limited key: valid false, rate_limited, retry_after.
    assert_eq!(answered.status, 200, "{answered:?}");
    assert_eq!(answered.body["valid"], false);
    assert_eq!(answered.body["reason"], "rate_limited");
    let retry = answered.body["retry_after"].as_i64().unwrap();
    assert!((retry - secs_to_next_utc_month()).abs() <= 5, "{retry}");
    // The refusal created nothing.
    let listed = common::send(
        client()
            .get(server.url(&format!("/operator/v1/accounts/{account_id}")))
            .header("x-api-key", &op),
    )
    .await;
    assert_eq!(listed.body["key_count"], 1, "{listed:?}");

    // A restarted node (in-process counts gone) starts from the stored usage counters.
    assert!(server.sigterm().success());
    server.restart();
    assert_month_refusal(&get(&server, &key, "/v1/api-keys").await, "after a restart");

    // An override on the account wins over the plan's number.
    let path = format!("/operator/v1/accounts/{account_id}");
    let overridden = patch(
        &server,
        &op,
        &path,
        &json!({"overrides": {"per_month": 1000}}),
    )
    .await;
    assert_eq!(overridden.status, 200, "{overridden:?}");
    eventually(
        Duration::from_secs(2),
        "the account's own quota lets requests through",
        async || get(&server, &key, "/v1/api-keys").await.status == 200,
    )
    .await;
    let through = get(&server, &key, "/v1/api-keys").await;
    assert_eq!(through.header("x-ratelimit-limit"), Some("1000"));
}

#[tokio::test]
async fn a_lower_override_refuses_first_and_a_raised_plan_lets_requests_through_within_a_second() {
    // Arrange: a generous plan; one account overridden down to two, one left on it.
    let server = Server::start_with(&["--no-bootstrap"]);
    let op = operator_key(&server);
    assert_eq!(
        put(
            &server,
            &op,
            "/operator/v1/plans/metered",
            &json!({"per_minute": 100, "per_month": 3}),
        )
        .await
        .status,
        200
    );
    let (overridden_id, overridden) = account_on(&server, &op, "metered").await;
    let (_, on_plan) = account_on(&server, &op, "metered").await;
    // Set before the key's first use, so no node has the account cached yet.
    let path = format!("/operator/v1/accounts/{overridden_id}");
    let set = patch(&server, &op, &path, &json!({"overrides": {"per_month": 2}})).await;
    assert_eq!(set.status, 200, "{set:?}");

    // Act
    let first = get(&server, &overridden, "/v1/usage").await;
    let second = get(&server, &overridden, "/v1/api-keys").await;
    let third = get(&server, &overridden, "/v1/api-keys").await;
    let mut plan_replies = Vec::new();
    for _ in 0..4 {
        plan_replies.push(get(&server, &on_plan, "/v1/api-keys").await);
    }

    // Assert
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(
        first.body["quota"]["per_month"], 2,
        "the override is in force"
    );
    assert_eq!(second.status, 200, "{second:?}");
    assert_month_refusal(&third, "over the account's own quota");
    for (i, r) in plan_replies.iter().take(3).enumerate() {
        assert_eq!(r.status, 200, "plan request {i}: {r:?}");
    }
    assert_month_refusal(&plan_replies[3], "over the plan's quota");
    // The month's usage shows the quota with nothing left.
    let usage = get(&server, &on_plan, "/v1/usage").await;
    assert_month_refusal(&usage, "usage over the quota");

    // Raising the plan's quota lets the account on it through again within a second.
    let raised = put(
        &server,
        &op,
        "/operator/v1/plans/metered",
        &json!({"per_minute": 100, "per_month": 50}),
    )
    .await;
    assert_eq!(raised.status, 200, "{raised:?}");
    eventually(
        Duration::from_secs(2),
        "the raised quota takes effect",
        async || get(&server, &on_plan, "/v1/api-keys").await.status == 200,
    )
    .await;
    let report = get(&server, &on_plan, "/v1/usage").await;
    assert_eq!(report.status, 200, "{report:?}");
    assert_eq!(report.body["quota"]["per_month"], 50);
    // The override still holds the other account.
    assert_month_refusal(
        &get(&server, &overridden, "/v1/api-keys").await,
        "the override wins over the raised plan",
    );
}

/// A request with an operator key and an `x-request-id` of the test's choosing, so that
/// the audit event it makes can be named.
async fn as_operator(
    server: &Server,
    key: &str,
    method: reqwest::Method,
    path: &str,
    request_id: &str,
    body: Option<&Value>,
) -> common::Reply {
    let mut req = client()
        .request(method, server.url(path))
        .header("x-api-key", key)
        .header("x-request-id", request_id);
    if let Some(body) = body {
        req = req.json(body);
    }
    send(req).await
}

/// The operator log, oldest first, as served.
async fn operator_log(server: &Server, key: &str) -> Vec<Value> {
    let r = get(server, key, "/operator/v1/audit-log?limit=1000").await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut events = r.body["events"].as_array().unwrap().clone();
    events.reverse();
    events
}

#[tokio::test]
async fn the_operator_log_chains_what_operators_and_the_cli_did_with_their_actors() {
    // Arrange: an operator made by the CLI, then changes through the API and the CLI.
    let server = Server::start();
    let (op_id, op) = common::create_operator(&server, "support");
    let (m, p, d) = (
        reqwest::Method::POST,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    );
    let created = as_operator(
        &server,
        &op,
        m.clone(),
        "/operator/v1/accounts",
        "op-create",
        Some(&json!({"name": "acme", "external_id": "cus_acme"})),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let account_id = created.body["account"]["account_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first_secret = created.body["api_key"]["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/operator/v1/accounts/{account_id}");
    for (request_id, body) in [
        ("op-update", json!({"name": "acme inc", "plan": "pro"})),
        ("op-suspend", json!({"status": "suspended"})),
        ("op-resume", json!({"status": "active"})),
    ] {
        let r = as_operator(&server, &op, p.clone(), &path, request_id, Some(&body)).await;
        assert_eq!(r.status, 200, "{request_id}: {r:?}");
    }
    let issued = as_operator(
        &server,
        &op,
        m.clone(),
        &format!("{path}/api-keys"),
        "op-issue",
        Some(&json!({"scopes": ["read", "billing:read"]})),
    )
    .await;
    assert_eq!(issued.status, 201, "{issued:?}");
    let issued_id = issued.body["key_id"].as_str().unwrap().to_owned();
    let issued_secret = issued.body["api_key"].as_str().unwrap().to_owned();
    let revoked = as_operator(
        &server,
        &op,
        d.clone(),
        &format!("/operator/v1/api-keys/{issued_id}"),
        "op-revoke",
        None,
    )
    .await;
    assert_eq!(revoked.status, 204, "{revoked:?}");
    let limits = json!({"per_minute": 5, "per_day": null, "per_month": null});
    let plan = as_operator(
        &server,
        &op,
        reqwest::Method::PUT,
        "/operator/v1/plans/gold",
        "op-plan",
        Some(&limits),
    )
    .await;
    assert_eq!(plan.status, 200, "{plan:?}");
    let dropped = as_operator(
        &server,
        &op,
        d.clone(),
        "/operator/v1/plans/gold",
        "op-plan-delete",
        None,
    )
    .await;
    assert_eq!(dropped.status, 204, "{dropped:?}");
    assert!(
        server
            .cli(&["accounts", "suspend", &account_id])
            .status
            .success()
    );
    assert!(
        server
            .cli(&["accounts", "resume", &account_id])
            .status
            .success()
    );
    let (other_id, _) = common::create_operator(&server, "other");
    assert!(
        server
            .cli(&["operators", "revoke", &other_id])
            .status
            .success()
    );

    // Act
    let events = operator_log(&server, &op).await;
    let suspensions = get(
        &server,
        &op,
        "/operator/v1/audit-log?action=account.suspended",
    )
    .await;

    // Assert: each change once, with its actor and request, in order.
    let seen: Vec<(&str, &Value, &str)> = events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                &e["actor_key_id"],
                e["request_id"].as_str().unwrap(),
            )
        })
        .collect();
    let op_actor = json!(op_id);
    let cli = Value::Null;
    assert_eq!(
        seen,
        [
            ("operator.created", &cli, "cli"),
            ("account.created", &op_actor, "op-create"),
            ("account.updated", &op_actor, "op-update"),
            ("account.suspended", &op_actor, "op-suspend"),
            ("account.resumed", &op_actor, "op-resume"),
            ("key.created", &op_actor, "op-issue"),
            ("key.revoked", &op_actor, "op-revoke"),
            ("plan.updated", &op_actor, "op-plan"),
            ("plan.deleted", &op_actor, "op-plan-delete"),
            ("account.suspended", &cli, "cli"),
            ("account.resumed", &cli, "cli"),
            ("operator.created", &cli, "cli"),
            ("operator.revoked", &cli, "cli"),
        ]
    );
    let created_event = &events[1];
    assert_eq!(created_event["changes"]["account_id"], account_id.as_str());
    assert_eq!(created_event["changes"]["external_id"], "cus_acme");
    assert_eq!(events[2]["changes"]["name"], "acme inc");
    assert_eq!(events[2]["changes"]["plan"], "pro");
    assert_eq!(events[5]["key_id"], issued_id.as_str());
    assert_eq!(events[7]["changes"]["per_minute"], 5);
    // One chain, by the documented hash.
    let mut prev = common::GENESIS.to_owned();
    for event in &events {
        assert_eq!(event["prev_hash"], json!(prev), "{event}");
        assert_eq!(
            event["hash"],
            json!(common::expected_hash(event)),
            "{event}"
        );
        prev = event["hash"].as_str().unwrap().to_owned();
    }
    // Filters as on /v1/audit-log.
    assert_eq!(suspensions.status, 200, "{suspensions:?}");
    assert_eq!(suspensions.body["events"].as_array().unwrap().len(), 2);
    // Never a secret.
    let text = serde_json::to_string(&events).unwrap();
    for secret in [&op, &first_secret, &issued_secret] {
        assert!(!text.contains(secret.as_str()), "a secret in the log");
    }
    // The account's own log has the operator's changes of it, without the operator's id.
    let own = get(&server, &first_secret, "/v1/audit-log?limit=100").await;
    assert_eq!(own.status, 200, "{own:?}");
    let own_actions: Vec<(&str, &str)> = own.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| {
            assert!(e["actor_key_id"].is_null(), "{e}");
            (
                e["action"].as_str().unwrap(),
                e["request_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        own_actions,
        [
            ("key.created", "op-create"),
            ("account.updated", "op-update"),
            ("account.suspended", "op-suspend"),
            ("account.resumed", "op-resume"),
            ("key.created", "op-issue"),
            ("key.revoked", "op-revoke"),
            ("account.suspended", "cli"),
            ("account.resumed", "cli"),
        ]
    );
    assert!(
        !own.text.contains(&op_id),
        "the operator's id stays in the operator log"
    );
}

#[tokio::test]
async fn audit_verify_checks_the_operator_log_and_names_its_edited_event() {
    // Arrange
    let server = Server::start();
    let op = operator_key(&server);
    let r = as_operator(
        &server,
        &op,
        reqwest::Method::PUT,
        "/operator/v1/plans/gold",
        "plan-put",
        Some(&json!({"per_minute": 5})),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = as_operator(
        &server,
        &op,
        reqwest::Method::POST,
        "/operator/v1/accounts",
        "acct-create",
        Some(&json!({"name": "acme", "plan": "gold"})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let (intact, before) = common::verify(&server, &[]);

    // Act
    common::tamper(
        &server,
        "update audit_event set changes = '{\"name\":\"gold\",\"per_minute\":500}' \
         where request_id = 'plan-put'",
    )
    .await;
    let (ok, out) = common::verify(&server, &[]);

    // Assert
    assert!(intact, "{before}");
    // The account's log and the operator log (operator.created, plan.updated,
    // account.created).
    assert!(
        before.contains("2 chain(s), 4 chained event(s)"),
        "{before}"
    );
    assert!(!ok, "{out}");
    assert!(out.contains("operator log"), "{out}");
    assert!(out.contains("plan.updated"), "{out}");
    assert!(out.contains("request plan-put"), "{out}");
    assert!(out.contains("edited"), "{out}");
}

#[tokio::test]
async fn the_operator_log_is_for_operator_keys_and_takes_only_its_parameters() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("pro");
    let op = operator_key(&server);

    // Act
    let by_account_key = get(&server, &acct.api_key, "/operator/v1/audit-log").await;
    let unknown_action = get(&server, &op, "/operator/v1/audit-log?action=plan.eaten").await;
    let unknown_parameter = get(&server, &op, "/operator/v1/audit-log?account=x").await;
    let bad_limit = get(&server, &op, "/operator/v1/audit-log?limit=0").await;
    let paged = get(&server, &op, "/operator/v1/audit-log?limit=1").await;

    // Assert
    assert_eq!(by_account_key.status, 401, "{by_account_key:?}");
    assert_eq!(by_account_key.error_code(), "INVALID_API_KEY");
    for (r, field) in [
        (&unknown_action, "action"),
        (&unknown_parameter, "account"),
        (&bad_limit, "limit"),
    ] {
        assert_eq!(r.status, 400, "{r:?}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR");
        assert_eq!(r.field(), field);
    }
    // account.created, then operator.created: one per page, newest first, by cursor.
    assert_eq!(paged.status, 200, "{paged:?}");
    assert_eq!(paged.body["events"].as_array().unwrap().len(), 1);
    let cursor = paged.body["next_before"].as_str().unwrap();
    let next = get(
        &server,
        &op,
        &format!("/operator/v1/audit-log?limit=1&before={cursor}"),
    )
    .await;
    assert_eq!(paged.body["events"][0]["action"], "operator.created");
    assert_eq!(next.body["events"][0]["action"], "account.created");
    assert!(next.body["next_before"].is_null(), "{next:?}");
}

#[tokio::test]
async fn deleting_an_account_revokes_its_keys_and_deletes_its_history_and_usage_but_not_its_log() {
    // Arrange: an account with a second key, used, with an external id.
    let server = Server::start();
    let op = operator_key(&server);
    let created = post(
        &server,
        &op,
        "/operator/v1/accounts",
        &json!({"name": "leaving", "external_id": "cus_gone"}),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let account_id = created.body["account"]["account_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = created.body["api_key"]["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, second) = create_key(&server, &first, &json!({"scopes": ["read"]})).await;
    let used = get(&server, &second, "/v1/api-keys").await;
    assert_eq!(used.status, 200, "{used:?}");
    server
        .metered(
            &account_id,
            &[used.header("x-request-id").unwrap().to_owned()],
        )
        .await;
    let other = server.create_account("pro");
    let path = format!("/operator/v1/accounts/{account_id}");

    // Act
    let deleted = delete(&server, &op, &path).await;
    let first_after = get(&server, &first, "/v1/api-keys").await;
    let second_after = validate(&server, &second).await;
    let read = get(&server, &op, &path).await;
    let again = delete(&server, &op, &path).await;
    let patched = patch(&server, &op, &path, &json!({"name": "back"})).await;
    let issued = post(
        &server,
        &op,
        &format!("{path}/api-keys"),
        &json!({"scopes": ["read"]}),
    )
    .await;
    let listed = get(&server, &op, "/operator/v1/accounts").await;
    let reused = post(
        &server,
        &op,
        "/operator/v1/accounts",
        &json!({"name": "returning", "external_id": "cus_gone"}),
    )
    .await;

    // Assert
    assert_eq!(deleted.status, 204, "{deleted:?}");
    assert_eq!(
        first_after.status, 401,
        "on the very next request: {first_after:?}"
    );
    assert_eq!(
        second_after.body,
        json!({"valid": false, "reason": "not_found"})
    );
    for r in [&read, &again, &patched, &issued] {
        assert_eq!(r.status, 404, "{r:?}");
        assert_eq!(r.error_code(), "RESOURCE_NOT_FOUND");
    }
    let ids: Vec<&str> = listed.body["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [other.account_id.as_str()]);
    assert_eq!(
        reused.status, 201,
        "the external id is free again: {reused:?}"
    );
    // History and usage are gone; the log is kept and ends with the deletion.
    let store = server.store().await;
    let id = keyward_core::AccountId::parse(&account_id).unwrap();
    let query = keyward_store::PageQuery {
        limit: 100,
        ..keyward_store::PageQuery::default()
    };
    let history = store.request_history(&id, &query).await.unwrap();
    let month = keyward_workers::month_of(time::OffsetDateTime::now_utc());
    let usage = store.usage(&id, &month).await.unwrap();
    let days = store.usage_by_day(&id, &month).await.unwrap();
    let log = store
        .audit_log(&keyward_store::AuditChain::Account(id.clone()), &query)
        .await
        .unwrap();
    store.close().await;
    assert!(history.is_empty(), "{history:?}");
    assert!(usage.is_empty(), "{usage:?}");
    assert!(days.is_empty(), "{days:?}");
    let actions: Vec<&str> = log.iter().rev().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["key.created", "key.created", "account.deleted"]);
    let (ok, out) = common::verify(&server, &["--account", &account_id]);
    assert!(ok, "{out}");
    let (ok, out) = common::verify(&server, &[]);
    assert!(ok, "{out}");
    let events = operator_log(&server, &op).await;
    let gone = events
        .iter()
        .find(|e| e["action"] == "account.deleted")
        .unwrap();
    assert_eq!(gone["changes"]["account_id"], account_id.as_str());
    assert_eq!(gone["changes"]["external_id"], "cus_gone");
    assert_eq!(
        gone["changes"]["revoked_key_ids"].as_array().unwrap().len(),
        2
    );
    // Another account is untouched.
    assert_eq!(
        get(&server, &other.api_key, "/v1/api-keys").await.status,
        200
    );
}

#[tokio::test]
async fn the_cli_deletes_an_account_as_the_api_does() {
    // Arrange
    let server = Server::start();
    let acct = server.create_account("pro");
    let op = operator_key(&server);

    // Act
    let out = server.cli(&["accounts", "delete", &acct.account_id]);
    let again = server.cli(&["accounts", "delete", &acct.account_id]);

    // Assert
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no account"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let r = get(
        &server,
        &op,
        &format!("/operator/v1/accounts/{}", acct.account_id),
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");
    let events = operator_log(&server, &op).await;
    let last = events.last().unwrap();
    assert_eq!(last["action"], "account.deleted");
    assert!(last["actor_key_id"].is_null(), "{last}");
    assert_eq!(last["request_id"], "cli");
}

#[tokio::test]
async fn an_account_deleted_through_one_node_is_refused_by_the_others_within_a_second() {
    let Some(a) = Server::start_on_postgres("account deletion across nodes", &["--no-bootstrap"])
    else {
        return;
    };
    let b = a.another_node(&["--no-bootstrap"]);
    let acct = a.create_account("pro");
    let op = operator_key(&a);
    // B has the key cached (10 s): only the deletion's announcement can refuse it sooner.
    assert_eq!(get(&b, &acct.api_key, "/v1/api-keys").await.status, 200);
    assert_eq!(get(&b, &acct.api_key, "/v1/api-keys").await.status, 200);

    let deleted = delete(
        &a,
        &op,
        &format!("/operator/v1/accounts/{}", acct.account_id),
    )
    .await;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    eventually(
        Duration::from_secs(1),
        "node B refuses the deleted account's key",
        async || get(&b, &acct.api_key, "/v1/api-keys").await.status == 401,
    )
    .await;
}
