//! Builds a large benchmark dataset: `ACCOUNTS` enterprise accounts with
//! `KEYS_PER_ACCOUNT` keys each (created through the store, with audit events), and
//! writes up to `SAMPLE` (default 1,000) callers for wrk to cycle through to
//! `SAMPLE_FILE`, one line per account: `SECRET KEY_ID ACCOUNT_ID` of the account's first
//! key (scopes read, write, admin). The sampled accounts are spread evenly over the
//! dataset rather than taken from its start, so requests touch the whole key table.
//!
//! `--policies` gives every key a per-key rate limit and credits too high to reach and an
//! allowlist that holds loopback (`bench/run.sh`'s `policies` dataset).
//! `--limits N` gives every account custom limits of N requests per minute and per day,
//! stored with the account itself, so a "limited" dataset costs no extra commit.
//!
//! Usage: `seed-keys DATABASE_URL ACCOUNTS KEYS_PER_ACCOUNT SAMPLE_FILE [SAMPLE] [--limits N]`

use std::io::Write as _;

use keyward_core::{
    AllowedIps, Credits, KeyId, KeyName, KeyPolicies, KeyPrefix, KeySecret, Limits, Metadata,
    OsRandom, PlanName, Refill, RefillInterval, ScopeSet, timefmt,
};
use keyward_store::{AuditContext, NewKey, NewSecret};
use time::OffsetDateTime;

const USAGE: &str = "usage: seed-keys DATABASE_URL ACCOUNTS KEYS_PER_ACCOUNT SAMPLE_FILE [SAMPLE] [--limits N] [--policies]";

/// The policies `--policies` gives every key: its own limits and credits too high to
/// reach (a billion, refilled daily) and an allowlist that holds loopback, so that every
/// request goes through every policy check and still succeeds.
fn bench_policies() -> Result<KeyPolicies, Box<dyn std::error::Error>> {
    Ok(KeyPolicies {
        rate_limit: Some(Limits::new(Some(1_000_000_000), Some(1_000_000_000))),
        credits: Some(Credits {
            remaining: 1_000_000_000,
            refill: Some(Refill {
                amount: 1_000_000_000,
                interval: RefillInterval::Day,
            }),
            generation: 1,
            set_at: OffsetDateTime::now_utc().unix_timestamp(),
        }),
        allowed_ips: Some(AllowedIps::parse(&serde_json::json!([
            "192.0.2.0/24",
            "2001:db8::/32",
            "127.0.0.0/8",
            "::1"
        ]))?),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let limits = match args.iter().position(|a| a == "--limits") {
        Some(i) => {
            let n: u32 = args.get(i + 1).ok_or(USAGE)?.parse()?;
            args.drain(i..=i + 1);
            Limits::new(Some(n), Some(n))
        }
        None => Limits::default(),
    };
    let policies = match args.iter().position(|a| a == "--policies") {
        Some(i) => {
            args.remove(i);
            bench_policies()?
        }
        None => KeyPolicies::default(),
    };
    let (url, accounts, per_account, out) = match args.as_slice() {
        [url, accounts, per_account, out, ..] if args.len() <= 5 => (
            url,
            accounts.parse::<usize>()?,
            per_account.parse::<usize>()?,
            out,
        ),
        _ => return Err(USAGE.into()),
    };
    if per_account == 0 {
        return Err("KEYS_PER_ACCOUNT must be at least 1 (the account's first key)".into());
    }
    let sample: usize = args.get(4).map_or(Ok(1_000), |s| s.parse())?;
    let stride = (accounts / sample.max(1)).max(1);
    let url = keyward::cli::DatabaseUrl::parse(url)?;
    let backend = keyward::open_store(&url).await?;
    let store = backend.store();
    let prefix = KeyPrefix::default();
    let scopes = ScopeSet::parse(&["read", "write"])?;
    let started = std::time::Instant::now();
    let mut sampled = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut written = 0;
    let mut batch = Vec::new();
    let audit = AuditContext {
        actor_key_id: None,
        operator: None,
        request_id: "seed-keys".to_owned(),
        time: timefmt::truncate(OffsetDateTime::now_utc()),
        changes: serde_json::json!({ "seeded": true }),
    };
    let seeder = keyward::Actor {
        request_id: "seed-keys".to_owned(),
        ..keyward::Actor::cli()
    };
    let mut generator = ulid::Generator::new();
    let mut next_ulid = || generator.generate().map_err(|_| "ULID overflow");
    for a in 0..accounts {
        // The same account and first key as `keyward accounts create`, with the limits
        // stored in the same commit.
        let new = keyward::NewAccount {
            name: format!("bench-{a}"),
            plan: PlanName::enterprise(),
            external_id: None,
            metadata: Metadata::default(),
        };
        let (mut created, mut first, first_audit) =
            keyward::new_account(new, &prefix, &seeder, OffsetDateTime::now_utc())
                .map_err(|e| e.message)?;
        created.account.overrides = limits;
        first.policies = policies.clone();
        store
            .create_account(&created.account, &first, &first_audit)
            .await?;
        let account = &created.account;
        let secret = &created.secret;
        if a % stride == 0 && written < sample {
            writeln!(
                sampled,
                "{} {} {}",
                secret.expose(),
                first.key_id.as_str(),
                account.account_id.as_str()
            )?;
            written += 1;
        }
        for k in 1..per_account {
            let secret = KeySecret::generate(&prefix, &mut OsRandom);
            batch.push(NewKey {
                key_id: KeyId::from_ulid(next_ulid()?),
                account_id: account.account_id.clone(),
                name: Some(KeyName::parse(&format!("bench key {k}"))?),
                scopes: scopes.clone(),
                metadata: Metadata::parse(serde_json::json!({ "n": k }))?,
                expires_at: None,
                created_at: audit.time,
                secret: NewSecret {
                    digest: secret.digest(),
                    hint: secret.hint(),
                },
                policies: policies.clone(),
                expire_after_inactive_days: None,
            });
        }
        if batch.len() >= 10_000 || (a + 1 == accounts && !batch.is_empty()) {
            store.import_keys(&batch, &audit).await?;
            batch.clear();
        }
    }
    sampled.flush()?;
    backend.close().await;
    eprintln!(
        "seeded {accounts} accounts x {per_account} keys in {:.1} s; {written} sampled callers in the file",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
