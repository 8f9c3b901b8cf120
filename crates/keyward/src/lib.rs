//! The `keyward` binary's library: CLI, wiring, serve and operator commands. `main.rs`
//! only parses the command line and calls [`run`], so tests can drive everything here.

pub mod cli;
mod serve;

use std::sync::Arc;

use anyhow::{Context, bail};
use keyward_core::{
    AccountId, KeyId, KeyName, KeyPrefix, KeySecret, Limits, Metadata, OsRandom, Plan, ScopeSet,
    timefmt,
};
use keyward_store::{Account, AuditContext, NewKey, NewSecret, Store};
use keyward_store_postgres::PgStore;
use keyward_store_sqlite::SqliteStore;
use time::OffsetDateTime;

use crate::cli::{AccountsCommand, Cli, Command, DatabaseUrl};

/// Runs a parsed command line.
///
/// # Errors
/// Whatever stopped the command, with the context that names its cause.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::serve(args).await,
        Command::Accounts(command) => accounts(command).await,
    }
}

/// An open database, of either backend.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The embedded SQLite file.
    Sqlite(Arc<SqliteStore>),
    /// The shared PostgreSQL database.
    Postgres(Arc<PgStore>),
}

impl Backend {
    /// The store behind the common trait.
    #[must_use]
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite(s) => s.clone(),
            Self::Postgres(s) => s.clone(),
        }
    }

    /// Closes the pools, waiting for running statements.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(s) => s.close().await,
            Self::Postgres(s) => s.close().await,
        }
    }
}

/// Opens the database a URL names and runs its migrations.
///
/// # Errors
/// If the database can't be opened or migrated; the message names the flag and variable.
pub async fn open_store(url: &DatabaseUrl) -> anyhow::Result<Backend> {
    match url {
        DatabaseUrl::Sqlite(path) => {
            let store = SqliteStore::open(path).await.with_context(|| {
                format!(
                    "cannot open the SQLite database at {} (set by --database-url or KEYWARD_DATABASE_URL)",
                    path.display()
                )
            })?;
            Ok(Backend::Sqlite(Arc::new(store)))
        }
        DatabaseUrl::Postgres(raw) => {
            let store = PgStore::connect(raw).await.with_context(|| {
                format!(
                    "cannot open the PostgreSQL database at {} (set by --database-url or KEYWARD_DATABASE_URL)",
                    url.redacted()
                )
            })?;
            Ok(Backend::Postgres(Arc::new(store)))
        }
    }
}

/// An account created with its first key.
#[derive(Debug)]
pub struct CreatedAccount {
    /// The account.
    pub account: Account,
    /// Its first key's id.
    pub key_id: KeyId,
    /// Its first key's secret, to be shown once.
    pub secret: KeySecret,
}

/// Creates an account and its first key (scopes `read`, `write`, `admin`).
///
/// # Errors
/// The store's error.
pub async fn create_account(
    store: &dyn Store,
    name: &str,
    plan: Plan,
    prefix: &KeyPrefix,
    actor: &str,
) -> anyhow::Result<CreatedAccount> {
    let (created, key, audit) = new_account(name, plan, prefix, actor)?;
    store
        .create_account(&created.account, &key, &audit)
        .await
        .context("creating the account")?;
    Ok(created)
}

/// Creates the `default` account (enterprise) and its first key if, and only if, the
/// database has no account yet; `None` when it had one.
///
/// # Errors
/// The store's error.
pub async fn bootstrap(
    store: &dyn Store,
    prefix: &KeyPrefix,
) -> anyhow::Result<Option<CreatedAccount>> {
    let (created, key, audit) = new_account("default", Plan::Enterprise, prefix, "bootstrap")?;
    let made = store
        .bootstrap_account(&created.account, &key, &audit)
        .await
        .context("creating the bootstrap account")?;
    Ok(made.then_some(created))
}

/// A new account, its first key (scopes `read`, `write`, `admin`) and the key's
/// `key.created` event, not yet stored.
///
/// # Errors
/// None in practice: the built-in first key's scopes and name are valid.
pub fn new_account(
    name: &str,
    plan: Plan,
    prefix: &KeyPrefix,
    actor: &str,
) -> anyhow::Result<(CreatedAccount, NewKey, AuditContext)> {
    let now = timefmt::truncate(OffsetDateTime::now_utc());
    let account = Account {
        account_id: AccountId::from_ulid(ulid::Ulid::generate()),
        name: name.to_owned(),
        plan,
        custom_limits: Limits::default(),
        created_at: now,
    };
    let secret = KeySecret::generate(prefix, &mut OsRandom);
    let scopes = ScopeSet::parse(&["read", "write", "admin"]).context("built-in scopes")?;
    let key = NewKey {
        key_id: KeyId::from_ulid(ulid::Ulid::generate()),
        account_id: account.account_id.clone(),
        name: Some(KeyName::parse("First key").context("built-in name")?),
        scopes,
        metadata: Metadata::default(),
        expires_at: None,
        created_at: now,
        secret: NewSecret {
            digest: secret.digest(),
            hint: secret.hint(),
        },
    };
    let audit = AuditContext {
        actor_key_id: None,
        request_id: actor.to_owned(),
        time: now,
        changes: serde_json::json!({
            "name": "First key",
            "scopes": ["read", "write", "admin"],
            "expires_at": null,
            "metadata": {},
        }),
    };
    let key_id = key.key_id.clone();
    Ok((
        CreatedAccount {
            account,
            key_id,
            secret,
        },
        key,
        audit,
    ))
}

async fn accounts(command: AccountsCommand) -> anyhow::Result<()> {
    match command {
        AccountsCommand::Create {
            name,
            plan,
            json,
            database,
        } => {
            if name.trim().is_empty() || name.chars().count() > 200 {
                bail!("--name must be 1 to 200 characters");
            }
            let backend = open_store(&database.database_url).await?;
            let created = create_account(
                backend.store().as_ref(),
                &name,
                plan,
                &KeyPrefix::default(),
                "cli",
            )
            .await?;
            let store = backend;
            store.close().await;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "account_id": created.account.account_id.as_str(),
                        "key_id": created.key_id.as_str(),
                        "api_key": created.secret.expose(),
                    })
                );
            } else {
                println!("account_id  {}", created.account.account_id);
                println!("name        {}", created.account.name);
                println!("plan        {}", created.account.plan);
                println!("key_id      {}", created.key_id);
                println!("api_key     {}", created.secret.expose());
                println!();
                println!("The api_key is shown only this once: store it now.");
            }
        }
        AccountsCommand::List { json, database } => {
            let backend = open_store(&database.database_url).await?;
            let store = &backend;
            let accounts = store
                .store()
                .list_accounts()
                .await
                .context("listing accounts")?;
            store.close().await;
            let limit =
                |n: Option<u32>| n.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
            if !json {
                println!(
                    "{:<32} {:<11} {:>10} {:>10} {:>6}  {:<20}  name",
                    "account_id", "plan", "per_min", "per_day", "keys", "created_at"
                );
            }
            for summary in accounts {
                let a = &summary.account;
                let limits = a.limits();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "account_id": a.account_id.as_str(),
                            "name": a.name,
                            "plan": a.plan.as_str(),
                            "per_minute": limits.per_minute,
                            "per_day": limits.per_day,
                            "keys": summary.key_count,
                            "created_at": timefmt::format(a.created_at),
                        })
                    );
                } else {
                    println!(
                        "{:<32} {:<11} {:>10} {:>10} {:>6}  {:<20}  {}",
                        a.account_id,
                        a.plan,
                        limit(limits.per_minute),
                        limit(limits.per_day),
                        summary.key_count,
                        timefmt::format(a.created_at),
                        a.name
                    );
                }
            }
        }
        AccountsCommand::SetPlan {
            account_id,
            plan,
            database,
        } => {
            let store = open_store(&database.database_url).await?;
            store
                .store()
                .set_plan(&account_id, plan)
                .await
                .map_err(|e| not_found_as(e, &account_id))?;
            store.close().await;
            println!("{account_id} is now on plan {plan}");
        }
        AccountsCommand::SetLimits {
            account_id,
            per_minute,
            per_day,
            database,
        } => {
            let store = open_store(&database.database_url).await?;
            let account = store
                .store()
                .account(&account_id)
                .await
                .context("reading the account")?
                .with_context(|| format!("no account {account_id}"))?;
            if account.plan != Plan::Enterprise {
                bail!(
                    "{account_id} is on plan {}: custom limits apply to enterprise accounts only (run `keyward accounts set-plan {account_id} enterprise` first)",
                    account.plan
                );
            }
            store
                .store()
                .set_limits(&account_id, Limits::new(per_minute, per_day))
                .await
                .map_err(|e| not_found_as(e, &account_id))?;
            store.close().await;
            let show = |n: Option<u32>| n.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
            println!(
                "{account_id}: {} per minute, {} per day",
                show(per_minute),
                show(per_day)
            );
        }
    }
    Ok(())
}

fn not_found_as(e: keyward_store::StoreError, account_id: &AccountId) -> anyhow::Error {
    match e {
        keyward_store::StoreError::NotFound => anyhow::anyhow!("no account {account_id}"),
        other => anyhow::Error::new(other).context("updating the account"),
    }
}
