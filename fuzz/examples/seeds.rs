//! Writes the seed corpora of the fuzz targets to `fuzz/corpus/<target>/`: real keys,
//! real request bodies and queries, and runs made by the history encoder, with edge
//! cases beside them. Deterministic, so a rerun rewrites the same files.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`

use std::borrow::Cow;
use std::path::Path;

use keyward_core::{AccountId, KeyId, KeyPrefix, KeySecret, RandomSource, RequestId};
use keyward_store::RequestRecord;
use keyward_store::runs::{rows_since, runs_of};
use time::OffsetDateTime;

/// A fixed byte stream (an LCG), so that the seeds are the same on every run.
struct Fixed(u64);

impl RandomSource for Fixed {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            *b = (self.0 >> 56) as u8;
        }
    }
}

fn write(target: &str, seeds: &[(String, Vec<u8>)]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("the corpus folder");
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).expect("a seed file");
    }
    println!("{target}: {} seeds", seeds.len());
}

fn text(name: &str, body: impl Into<String>) -> (String, Vec<u8>) {
    (name.to_owned(), body.into().into_bytes())
}

fn keys() -> Vec<(String, Vec<u8>)> {
    let mut random = Fixed(7);
    let kw = KeyPrefix::default();
    let key = KeySecret::generate(&kw, &mut random);
    let k = key.expose().to_owned();
    let mut seeds = vec![
        text("valid", k.clone()),
        text("valid-2", KeySecret::generate(&kw, &mut random).expose()),
        text("empty", ""),
        text("prefix-only", "kw_"),
        text("no-separator", "kw"),
        text("short", "kw_short"),
        text("double-underscore", format!("kw__{}", &k[3..])),
        text("upper-prefix", format!("KW_{}", &k[3..])),
        text("one-too-long", format!("{k}0")),
        text("one-too-short", &k[..k.len() - 1]),
        text("non-ascii", format!("{}é", &k[..k.len() - 2])),
        text("space-inside", format!("{} {}", &k[..10], &k[11..])),
        text("digest-hex", key.digest().to_hex()),
        text(
            "digest-hex-upper",
            key.digest().to_hex().to_ascii_uppercase(),
        ),
        text("not-hex", "g".repeat(64)),
    ];
    let mut bad_checksum = k.clone();
    let last = if k.ends_with('0') { "1" } else { "0" };
    bad_checksum.replace_range(k.len() - 1.., last);
    seeds.push(text("bad-checksum", bad_checksum));
    let mut swapped = k.into_bytes();
    swapped.swap(5, 6);
    seeds.push(("swapped-chars".to_owned(), swapped));
    for prefix in ["sk", "a", "live2", "abcdefghijklmnop"] {
        let p = KeyPrefix::parse(prefix).expect("a valid prefix");
        let key = KeySecret::generate(&p, &mut random);
        seeds.push(text(
            &format!("prefix-{prefix}"),
            format!("{prefix}\n{}", key.expose()),
        ));
    }
    seeds.push(text("prefix-mismatch", format!("sk\n{}", key.expose())));
    for bad in ["", "Kw", "2kw", "k_w", "abcdefghijklmnopq"] {
        seeds.push(text(
            &format!("bad-prefix-{}", bad.len()),
            format!("{bad}\n{}", key.expose()),
        ));
    }
    seeds
}

fn json_bodies() -> Vec<(String, Vec<u8>)> {
    let json = "application/json";
    let body = |kind: &str, ct: &str, body: &str| format!("{kind} {ct}\n{body}");
    let big_metadata = format!(
        r#"{{"scopes":["read"],"metadata":{{"blob":"{}"}}}}"#,
        "x".repeat(4084)
    );
    let deep = format!(
        r#"{{"scopes":["read"],"metadata":{}{}}}"#,
        r#"{"a":"#.repeat(130),
        "}".repeat(130)
    );
    vec![
        text(
            "create-minimal",
            body("create", json, r#"{"scopes":["read"]}"#),
        ),
        text(
            "create-full",
            body(
                "create",
                json,
                r#"{"name":"Production backend","scopes":["read","write"],"expires_at":"2027-01-01T00:00:00Z","metadata":{"team":"billing","tier":3}}"#,
            ),
        ),
        text(
            "create-expires-in",
            body("create", json, r#"{"scopes":["read"],"expires_in":86400}"#),
        ),
        text(
            "create-both-expiries",
            body(
                "create",
                json,
                r#"{"scopes":["read"],"expires_at":"2027-01-01T00:00:00+02:00","expires_in":1}"#,
            ),
        ),
        text(
            "create-charset",
            body(
                "create",
                "Application/JSON; charset=utf-8",
                r#"{"scopes":["read"]}"#,
            ),
        ),
        text(
            "create-merge-patch",
            body(
                "create",
                "application/merge-patch+json",
                r#"{"scopes":["a:b.c-d_e"]}"#,
            ),
        ),
        text(
            "create-no-content-type",
            body("create", "", r#"{"scopes":["read"]}"#),
        ),
        text(
            "create-text-plain",
            body("create", "text/plain", r#"{"scopes":["read"]}"#),
        ),
        text(
            "create-unknown-field",
            body("create", json, r#"{"scopes":["read"],"nam":"x"}"#),
        ),
        text(
            "create-missing-scopes",
            body("create", json, r#"{"name":"x"}"#),
        ),
        text(
            "create-wrong-types",
            body(
                "create",
                json,
                r#"{"scopes":"read","name":5,"expires_in":1.5}"#,
            ),
        ),
        text(
            "create-duplicate-field",
            body("create", json, r#"{"scopes":["read"],"scopes":["write"]}"#),
        ),
        text(
            "create-duplicate-scopes",
            body("create", json, r#"{"scopes":["read","read"]}"#),
        ),
        text(
            "create-bad-scope",
            body("create", json, r#"{"scopes":["Read"," write"]}"#),
        ),
        text(
            "create-control-name",
            body("create", json, r#"{"name":"a\u0007b","scopes":["read"]}"#),
        ),
        text(
            "create-escapes",
            body(
                "create",
                json,
                r#"{"name":"\ud83d\ude00 \"quoted\" \\","scopes":["read"]}"#,
            ),
        ),
        text(
            "create-lone-surrogate",
            body("create", json, r#"{"name":"\ud800","scopes":["read"]}"#),
        ),
        text(
            "create-huge-number",
            body("create", json, r#"{"scopes":["read"],"expires_in":1e400}"#),
        ),
        text("create-metadata-4k", body("create", json, &big_metadata)),
        text("create-metadata-deep", body("create", json, &deep)),
        text(
            "create-metadata-array",
            body("create", json, r#"{"scopes":["read"],"metadata":[1,2]}"#),
        ),
        text(
            "create-trailing",
            body("create", json, r#"{"scopes":["read"]} trailing"#),
        ),
        text(
            "create-truncated",
            body("create", json, r#"{"scopes":["re"#),
        ),
        text("create-not-json", body("create", json, "not json")),
        text("create-array", body("create", json, "[]")),
        text("create-empty", body("create", json, "")),
        text("update-name", body("update", json, r#"{"name":"renamed"}"#)),
        text(
            "update-nulls",
            body(
                "update",
                json,
                r#"{"name":null,"expires_at":null,"metadata":null}"#,
            ),
        ),
        text(
            "update-null-scopes",
            body("update", json, r#"{"scopes":null,"status":null}"#),
        ),
        text(
            "update-all",
            body(
                "update",
                json,
                r#"{"name":"n","scopes":["read"],"status":"inactive","expires_at":"2030-06-01T12:00:00.5-03:00","metadata":{}}"#,
            ),
        ),
        text("update-empty-object", body("update", json, "{}")),
        text("rotate-empty", body("rotate", json, "")),
        text("rotate-whitespace", body("rotate", "", " \r\n\t")),
        text("rotate-null", body("rotate", json, "null")),
        text("rotate-object", body("rotate", json, "{}")),
        text(
            "rotate-grace",
            body("rotate", json, r#"{"grace_period_seconds":3600}"#),
        ),
        text(
            "rotate-negative",
            body("rotate", json, r#"{"grace_period_seconds":-1}"#),
        ),
        text(
            "rotate-no-content-type",
            body("rotate", "", r#"{"grace_period_seconds":60}"#),
        ),
    ]
}

fn queries() -> Vec<(String, Vec<u8>)> {
    let id = KeyId::from_ulid(ulid::Ulid::from_parts(1_800_000_000_000, 42));
    let id = id.as_str();
    let mut seeds = vec![
        text("list-empty", "list?"),
        text(
            "list-all",
            format!("list?status=active&limit=10&after={id}"),
        ),
        text("list-expired", "list?status=expired"),
        text("list-bad-status", "list?status=revoked"),
        text("list-limit-zero", "list?limit=0"),
        text("list-limit-huge", "list?limit=18446744073709551616"),
        text("list-repeated", "list?limit=1&limit=2"),
        text("list-empty-value", "list?after="),
        text("list-unknown", "list?offset=5"),
        text(
            "list-lowercase-id",
            format!("list?after={}", id.to_ascii_lowercase()),
        ),
        text(
            "history-all",
            format!(
                "history?limit=1000&before=cur_12345&key_id={id}&since=2026-11-01T00:00:00Z&until=2026-12-01T00:00:00%2B01:00&endpoint=GET+%2Fv1%2Fapi-keys&status=200"
            ),
        ),
        text("history-cursor-bad", "history?before=cur_-1"),
        text(
            "history-cursor-long",
            "history?before=cur_9999999999999999999",
        ),
        text(
            "history-until-before-since",
            "history?since=2026-12-01T00:00:00Z&until=2026-11-01T00:00:00Z",
        ),
        text("history-status-range", "history?status=600"),
        text(
            "history-long-endpoint",
            format!("history?endpoint={}", "a".repeat(201)),
        ),
        text("history-percent", "history?%6Cimit=5&endpoint=%FF%FE"),
        text("history-broken-percent", "history?endpoint=%zz%4"),
        text(
            "history-long-unknown",
            format!("history?{}=1", "\u{e9}".repeat(70)),
        ),
        text("history-ampersands", "history?&&limit=3&&"),
        text("audit-action", "audit?action=key.rotated&limit=1"),
        text("audit-bad-action", "audit?action=key.deleted"),
        text("audit-status", "audit?status=200"),
        text(
            "audit-fraction-time",
            "audit?since=2026-11-01T00:00:00.123456789Z",
        ),
        text("usage-month", "usage?month=2026-11"),
        text("usage-default", "usage?"),
        text("usage-month-13", "usage?month=2026-13"),
        text("usage-month-short", "usage?month=26-1"),
        text("usage-month-sign", "usage?month=+026-01"),
        text("key-id", format!("key_id {id}")),
        text(
            "key-id-lowercase",
            format!("key_id {}", id.to_ascii_lowercase()),
        ),
        text("key-id-overflow", "key_id key_8ZZZZZZZZZZZZZZZZZZZZZZZZZ"),
        text("key-id-short", "key_id key_01"),
        text("key-id-other-prefix", format!("key_id acct_{}", &id[4..])),
        text("key-id-empty", "key_id "),
        text("key-id-traversal", "key_id ../../etc/passwd"),
    ];
    seeds.push(text(
        "key-id-multibyte",
        format!("key_id key_{}", "é".repeat(13)),
    ));
    seeds
}

fn record(
    n: i64,
    key: &str,
    agent: Option<&str>,
    endpoint: (&'static str, &'static str),
    status: u16,
) -> RequestRecord {
    RequestRecord {
        account_id: AccountId::from_trusted("acct_01KB2D3E4F5G6H7J8K9M0N1P2Q".to_owned()),
        time: OffsetDateTime::from_unix_timestamp(1_800_000_000 + n / 3).expect("a time"),
        method: Cow::Borrowed(endpoint.0),
        endpoint: Cow::Borrowed(endpoint.1),
        status,
        user_agent: agent.map(str::to_owned),
        key_id: KeyId::from_trusted(key.to_owned()),
        request_id: RequestId::parse(format!("req_01KB2D3E4F5G6H7J8K9M{n:06}").as_bytes())
            .expect("an id"),
        latency_ms: u32::try_from(n % 97).expect("small"),
    }
}

fn history_runs() -> Vec<(String, Vec<u8>)> {
    let key_a = "key_01KB2D3E4F5G6H7J8K9M0N1P2Q";
    let key_b = "key_01KB2D3E4F5G6H7J8K9M0N1P2R";
    let list = ("GET", "GET /v1/api-keys");
    let validate = ("POST", "POST /v1/api-keys/validate");
    let rows: Vec<RequestRecord> = (0..300)
        .map(|n| {
            let agent = match n % 4 {
                0 => None,
                1 => Some("curl/8.5"),
                2 => Some("quote \" backslash \\ \u{e9}\u{1}"),
                _ => Some("python-requests/2.32"),
            };
            let key = if n % 5 == 0 { key_b } else { key_a };
            let (endpoint, status) = if n % 2 == 0 {
                (validate, 200)
            } else {
                (list, 429)
            };
            record(n, key, agent, endpoint, status)
        })
        .collect();
    let runs = runs_of(&rows, 1).expect("the encoder encodes");
    let few = runs_of(&rows[..5], 1).expect("the encoder encodes");
    let one = few[0].rows.as_str();
    let gap = runs[1].last_id - runs[0].last_id;
    let (pruned, _, _) = rows_since(&runs[1].rows, 1_800_000_090).expect("a cut");
    let params = |p: &str, runs: &[&str]| format!("{p}\n{}", runs.join("\n"));
    let newest_first = [runs[1].rows.as_str(), runs[0].rows.as_str()];
    vec![
        text(
            "page-two-runs",
            params(
                &format!("last_id={}&gap={gap}&limit=51", runs[1].last_id),
                &newest_first,
            ),
        ),
        text(
            "page-filters",
            params(
                &format!(
                    "last_id={}&gap={gap}&key_id={key_b}&endpoint=POST /v1/api-keys/validate&status=200&since=1800000010&until=1800000080",
                    runs[1].last_id
                ),
                &newest_first,
            ),
        ),
        text(
            "page-cursor",
            params(
                &format!("last_id={}&gap={gap}&before=200&limit=20", runs[1].last_id),
                &newest_first,
            ),
        ),
        text("page-limit-one", params("last_id=5&limit=1", &[one])),
        text("page-limit-zero", params("last_id=5&limit=0", &[one])),
        text(
            "cutoff-middle",
            params("last_id=5&cutoff=1800000001", &[one]),
        ),
        text(
            "cutoff-after-all",
            params("last_id=5&cutoff=9223372036854775807", &[one]),
        ),
        text(
            "pruned-run",
            params(
                &format!("last_id={}&cutoff=1800000090", runs[1].last_id),
                &[&pruned],
            ),
        ),
        text("many-small-runs", params("last_id=100&gap=5", &[one; 20])),
        text(
            "extreme-ids",
            params("last_id=-9223372036854775800&gap=1", &[one, one]),
        ),
        text(
            "smallest-last-id",
            params("last_id=-9223372036854775808", &[one]),
        ),
        text(
            "empty-run",
            params(
                "",
                &[r#"{"first_id":1,"first_time":10,"routes":[],"keys":[],"agents":[],"rows":[]}"#],
            ),
        ),
        text(
            "row-past-lists",
            params(
                "",
                &[
                    r#"{"first_id":1,"first_time":10,"routes":[["GET","GET /v1/api-keys"]],"keys":["key_a"],"agents":["curl"],"rows":[[0,0,1,200,0,0,"req_1",3]]}"#,
                ],
            ),
        ),
        text(
            "offset-overflow",
            params(
                "",
                &[
                    r#"{"first_id":1,"first_time":10,"routes":[["GET","GET /v1/api-keys"]],"keys":["key_a"],"agents":[],"rows":[[9223372036854775807,0,0,200,null,0,"req_1",3]]}"#,
                ],
            ),
        ),
        text(
            "time-out-of-range",
            params(
                "",
                &[
                    r#"{"first_id":1,"first_time":9223372036854775000,"routes":[["GET","GET /v1/api-keys"]],"keys":["key_a"],"agents":[],"rows":[[0,0,0,200,null,0,"req_1",3]]}"#,
                ],
            ),
        ),
        text(
            "bad-request-id",
            params(
                "",
                &[
                    r#"{"first_id":1,"first_time":10,"routes":[["GET","GET /v1/api-keys"]],"keys":["key_a"],"agents":[],"rows":[[0,0,0,200,null,0,"req 1",3]]}"#,
                ],
            ),
        ),
        text("not-json", params("", &["[1,2", "null", ""])),
    ]
}

fn main() {
    write("key", &keys());
    write("json_body", &json_bodies());
    write("query_path", &queries());
    write("history_run", &history_runs());
}
