//! Builds a large benchmark dataset: `ACCOUNTS` enterprise accounts with
//! `KEYS_PER_ACCOUNT` keys each (created through the store, with audit events), and
//! writes the secrets of up to `SAMPLE` keys, one per line and one per account, to
//! `SECRETS_FILE` for wrk to cycle through.
//!
//! Usage: `seed-keys DATABASE_URL ACCOUNTS KEYS_PER_ACCOUNT SECRETS_FILE [SAMPLE]`

use std::io::Write as _;

use keyward_core::{
    KeyId, KeyName, KeyPrefix, KeySecret, Metadata, OsRandom, Plan, ScopeSet, timefmt,
};
use keyward_store::{AuditContext, NewKey, NewSecret};
use time::OffsetDateTime;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, accounts, per_account, out) = match args.as_slice() {
        [url, accounts, per_account, out, ..] => (
            url,
            accounts.parse::<usize>()?,
            per_account.parse::<usize>()?,
            out,
        ),
        _ => {
            return Err(
                "usage: seed-keys DATABASE_URL ACCOUNTS KEYS_PER_ACCOUNT SECRETS_FILE [SAMPLE]"
                    .into(),
            );
        }
    };
    let sample: usize = args.get(4).map_or(Ok(10_000), |s| s.parse())?;
    let url = keyward::cli::DatabaseUrl::parse(url)?;
    let backend = keyward::open_store(&url).await?;
    let store = backend.store();
    let prefix = KeyPrefix::default();
    let scopes = ScopeSet::parse(&["read", "write"])?;
    let started = std::time::Instant::now();
    let mut secrets = std::fs::File::create(out)?;
    let mut written = 0;
    let mut batch = Vec::new();
    let audit = AuditContext {
        actor_key_id: None,
        request_id: "seed-keys".to_owned(),
        time: timefmt::truncate(OffsetDateTime::now_utc()),
        changes: serde_json::json!({ "seeded": true }),
    };
    let mut generator = ulid::Generator::new();
    for a in 0..accounts {
        let created = keyward::create_account(
            store.as_ref(),
            &format!("bench-{a}"),
            Plan::Enterprise,
            &prefix,
            "seed-keys",
        )
        .await?;
        if written < sample {
            writeln!(secrets, "{}", created.secret.expose())?;
            written += 1;
        }
        for k in 1..per_account {
            let secret = KeySecret::generate(&prefix, &mut OsRandom);
            batch.push(NewKey {
                key_id: KeyId::from_ulid(generator.generate().map_err(|_| "ULID overflow")?),
                account_id: created.account.account_id.clone(),
                name: Some(KeyName::parse(&format!("bench key {k}"))?),
                scopes: scopes.clone(),
                metadata: Metadata::parse(serde_json::json!({ "n": k }))?,
                expires_at: None,
                created_at: audit.time,
                secret: NewSecret {
                    digest: secret.digest(),
                    hint: secret.hint(),
                },
            });
        }
        if batch.len() >= 10_000 || a + 1 == accounts {
            store.import_keys(&batch, &audit).await?;
            batch.clear();
        }
    }
    backend.close().await;
    eprintln!(
        "seeded {accounts} accounts x {per_account} keys in {:.1} s; {written} secrets in the file",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
