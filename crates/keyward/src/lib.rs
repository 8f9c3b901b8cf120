//! The `keyward` binary's library: CLI, wiring, serve and operator commands. `main.rs`
//! only parses the command line and calls [`run`], so tests can drive everything here.

pub mod cli;
mod connections;
mod metrics;
mod serve;

use std::sync::Arc;

use anyhow::{Context, bail};
use axum::http::StatusCode;
use keyward_core::{
    AccountId, AccountStatus, ExternalId, KeyPrefix, Limits, Metadata, PlanName, timefmt,
};
use keyward_http::error::ApiError;
use keyward_http::operator;
pub use keyward_http::operator::{Actor, CreatedAccount, NewAccount, new_account};
use keyward_store::{AccountPatch, AccountSummary, AuditChain, Plan, Store, verify_chain};
use keyward_store_sql::{IfMissing, Migrations, PgStore, SqliteStore};
use time::OffsetDateTime;

use crate::cli::{
    AccountsArgs, AccountsCommand, AuditArgs, AuditCommand, BackupArgs, Cli, Command, DatabaseUrl,
    OperatorsArgs, OperatorsCommand, PlansArgs, PlansCommand,
};

/// Runs a parsed command line.
///
/// # Errors
/// Whatever stopped the command, with the context that names its cause.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::serve(*args).await,
        Command::Accounts(args) => accounts(args).await,
        Command::Plans(args) => plans(args).await,
        Command::Operators(args) => operators(args).await,
        Command::Migrate(args) => migrate(&args.database.database_url).await,
        Command::Backup(args) => backup(&args).await,
        Command::Audit(args) => audit(args).await,
    }
}

/// Set once `serve` logs JSON: every later line on stderr, the last error too, is JSON.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn set_json_logs() {
    JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn json_logs() -> bool {
    JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Reports the error that ends the process on stderr: `keyward: error: …`, or in JSON
/// mode an ERROR log line like every other line (the error in its `error` field).
pub fn report_error(e: &anyhow::Error) {
    if json_logs() {
        tracing::error!(error = format!("{e:#}"), "keyward: error");
    } else {
        eprintln!("keyward: error: {e:#}");
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

    /// Told after each commit of this process that enqueued webhook deliveries: the
    /// dispatcher's wake-up.
    #[must_use]
    pub fn deliveries_enqueued(&self) -> Arc<tokio::sync::Notify> {
        match self {
            Self::Sqlite(s) => s.deliveries_enqueued(),
            Self::Postgres(s) => s.deliveries_enqueued(),
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

/// How a command opens the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    /// What to do when a SQLite file is missing: only `serve`, `migrate` and
    /// `accounts create` create one; every other command fails, naming the path.
    pub if_missing: IfMissing,
    /// Apply pending migrations, or refuse to open while any is pending.
    pub migrations: Migrations,
}

impl Open {
    /// Creates a missing SQLite file and applies pending migrations.
    pub const CREATE_AND_MIGRATE: Self = Self {
        if_missing: IfMissing::Create,
        migrations: Migrations::Apply,
    };
    /// Opens an existing database whose schema is up to date, changing nothing: what
    /// operator commands do, beside a server that may be running an older binary.
    pub const EXISTING: Self = Self {
        if_missing: IfMissing::Fail,
        migrations: Migrations::Require,
    };

    /// `keyward accounts create`: creates (and so migrates) a missing SQLite file; any
    /// other database is opened as by every operator command, which never migrates.
    #[must_use]
    pub fn accounts_create(url: &DatabaseUrl) -> Self {
        match url {
            DatabaseUrl::Sqlite(path) if path.symlink_metadata().is_err() => {
                Self::CREATE_AND_MIGRATE
            }
            _ => Self::EXISTING,
        }
    }

    /// `keyward serve`: creates and migrates, or with `--no-migrate` changes nothing and
    /// needs an existing, up-to-date database.
    #[must_use]
    pub const fn serve(no_migrate: bool) -> Self {
        if no_migrate {
            Self::EXISTING
        } else {
            Self::CREATE_AND_MIGRATE
        }
    }
}

/// Opens the database a URL names (creating a missing SQLite file) and runs its
/// migrations.
///
/// # Errors
/// If the database can't be opened or migrated; the message names the flag and variable.
pub async fn open_store(url: &DatabaseUrl) -> anyhow::Result<Backend> {
    open_store_with(url, Open::CREATE_AND_MIGRATE).await
}

/// Opens the database a URL names, as `open` says.
///
/// # Errors
/// If the database can't be opened, is missing where it must exist (the message names the
/// path it looked at), or its schema does not fit (pending or unknown migrations); the
/// message names the flag and variable.
pub async fn open_store_with(url: &DatabaseUrl, open: Open) -> anyhow::Result<Backend> {
    match url {
        DatabaseUrl::Sqlite(path) => {
            if open.if_missing == IfMissing::Fail && path.symlink_metadata().is_err() {
                bail!(
                    "no SQLite database at {} (set by --database-url or KEYWARD_DATABASE_URL); \
                     only `keyward serve`, `keyward migrate` and `keyward accounts create` create one",
                    looked_at(path)
                );
            }
            let store = SqliteStore::open_with(path, open.if_missing, open.migrations)
                .await
                .with_context(|| {
                    format!(
                        "cannot open the SQLite database at {} (set by --database-url or KEYWARD_DATABASE_URL)",
                        path.display()
                    )
                })?;
            Ok(Backend::Sqlite(Arc::new(store)))
        }
        DatabaseUrl::Postgres(raw) => {
            let store = PgStore::connect_with(raw, open.migrations)
                .await
                .with_context(|| {
                    format!(
                        "cannot open the PostgreSQL database at {} (set by --database-url or KEYWARD_DATABASE_URL)",
                        url.redacted()
                    )
                })?;
            Ok(Backend::Postgres(Arc::new(store)))
        }
    }
}

/// A path as given, and where it lands from the working directory if it is relative.
fn looked_at(path: &std::path::Path) -> String {
    match std::env::current_dir() {
        Ok(dir) if path.is_relative() => {
            format!("{} ({})", path.display(), dir.join(path).display())
        }
        _ => path.display().to_string(),
    }
}

/// `keyward migrate`: applies the pending migrations and says where the schema stands.
async fn migrate(url: &DatabaseUrl) -> anyhow::Result<()> {
    let backend = open_store_with(url, Open::CREATE_AND_MIGRATE).await?;
    backend.close().await;
    println!(
        "{}: schema at version {}, the newest this keyward knows",
        url.redacted(),
        keyward_store_sql::latest_version()
    );
    Ok(())
}

/// `keyward backup --to PATH`.
async fn backup(args: &BackupArgs) -> anyhow::Result<()> {
    let url = &args.database.database_url;
    let path = match url {
        DatabaseUrl::Sqlite(path) => path,
        DatabaseUrl::Postgres(_) => bail!(
            "keyward backup copies SQLite databases; back up PostgreSQL ({}) with pg_dump, \
             or the server's own backups and point-in-time recovery (docs/DEPLOYMENT.md, \"Backups\")",
            url.redacted()
        ),
    };
    if path.symlink_metadata().is_err() {
        bail!(
            "no SQLite database at {} (set by --database-url or KEYWARD_DATABASE_URL)",
            looked_at(path)
        );
    }
    SqliteStore::backup(path, &args.to)
        .await
        .with_context(|| format!("cannot back up {} to {}", url.redacted(), args.to.display()))?;
    println!(
        "{} copied to {} (integrity check: ok)",
        url.redacted(),
        args.to.display()
    );
    Ok(())
}

/// `keyward audit verify [--account ID]`: recomputes each chain; the first that breaks
/// ends the command with an error naming its first event that does not match.
async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let AuditCommand::Verify {
        account_id,
        database,
    } = args.command;
    let backend = open_store_with(&database.database_url, Open::EXISTING).await?;
    let result = verify_chains(&*backend.store(), account_id).await;
    backend.close().await;
    let (chains, events) = result?;
    println!("audit log intact: {chains} chain(s), {events} chained event(s)");
    Ok(())
}

/// Verifies every chain (or one account's): how many chains and events it checked.
async fn verify_chains(
    store: &dyn Store,
    account_id: Option<AccountId>,
) -> anyhow::Result<(u64, u64)> {
    let chains = match account_id {
        Some(account_id) => vec![AuditChain::Account(account_id)],
        None => store.audit_chains().await.context("listing audit chains")?,
    };
    let (mut checked, mut events) = (0, 0);
    for chain in chains {
        let report = verify_chain(store, &chain)
            .await
            .with_context(|| format!("reading the audit log of {chain}"))?
            .map_err(|broken| anyhow::anyhow!("audit chain broken: {broken}"))?;
        if report.unchained > 0 {
            println!(
                "{chain}: {} event(s) stored before the log was chained are not covered",
                report.unchained
            );
        }
        checked += 1;
        events += report.chained;
    }
    Ok((checked, events))
}

/// Creates an account and its first key (scopes `read`, `write`, `admin`), with the
/// checks and answers of `POST /operator/v1/accounts`.
///
/// # Errors
/// The operation's refusal, as its message, or the store's error.
pub async fn create_account(
    store: &dyn Store,
    name: &str,
    plan: PlanName,
    prefix: &KeyPrefix,
    actor: &Actor,
) -> anyhow::Result<CreatedAccount> {
    let new = NewAccount {
        name: operator::parse_account_name(name).map_err(refusal)?,
        plan,
        external_id: None,
        metadata: Metadata::default(),
    };
    operator::create_account(store, new, prefix, actor, OffsetDateTime::now_utc())
        .await
        .map_err(refusal)
}

/// An operation's refusal as the CLI prints it: its message, and the field at fault.
fn refusal(e: ApiError) -> anyhow::Error {
    match e.details.as_ref().and_then(|d| d.get("field")) {
        Some(field) => anyhow::anyhow!("{}: {}", field.as_str().unwrap_or("input"), e.message),
        None => anyhow::anyhow!("{}", e.message),
    }
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
    let new = NewAccount {
        name: "default".to_owned(),
        plan: PlanName::enterprise(),
        external_id: None,
        metadata: Metadata::default(),
    };
    let (created, key, audit) =
        new_account(new, prefix, &Actor::bootstrap(), OffsetDateTime::now_utc())
            .map_err(refusal)?;
    let made = store
        .bootstrap_account(&created.account, &key, &audit)
        .await
        .context("creating the bootstrap account")?;
    Ok(made.then_some(created))
}

async fn accounts(args: AccountsArgs) -> anyhow::Result<()> {
    let prefix = args.keys.prefix;
    match args.command {
        AccountsCommand::Create {
            name,
            plan,
            json,
            database,
        } => {
            operator::parse_account_name(&name).map_err(refusal)?;
            let backend = open_store_with(
                &database.database_url,
                Open::accounts_create(&database.database_url),
            )
            .await?;
            let created = create_account(
                backend.store().as_ref(),
                &name,
                plan,
                &prefix,
                &Actor::cli(),
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
            let backend = open_store_with(&database.database_url, Open::EXISTING).await?;
            let store = &backend;
            let accounts = store
                .store()
                .list_accounts()
                .await
                .context("listing accounts")?;
            store.close().await;
            if !json {
                println!(
                    "{:<32} {:<11} {:>10} {:>10} {:>10} {:<9} {:>6}  {:<20}  name",
                    "account_id",
                    "plan",
                    "per_min",
                    "per_day",
                    "per_month",
                    "status",
                    "keys",
                    "created_at"
                );
            }
            for summary in accounts {
                let a = &summary.account;
                let limits = summary.limits;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "account_id": a.account_id.as_str(),
                            "name": a.name,
                            "plan": a.plan.as_str(),
                            "per_minute": limits.per_minute,
                            "per_day": limits.per_day,
                            "per_month": limits.per_month,
                            "status": a.status.as_str(),
                            "external_id": a.external_id.as_ref().map(ExternalId::as_str),
                            "keys": summary.key_count,
                            "created_at": timefmt::format(a.created_at),
                        })
                    );
                } else {
                    println!(
                        "{:<32} {:<11} {:>10} {:>10} {:>10} {:<9} {:>6}  {:<20}  {}",
                        a.account_id,
                        a.plan,
                        show_limit(limits.per_minute),
                        show_limit(limits.per_day),
                        show_limit(limits.per_month),
                        a.status,
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
            let patch = AccountPatch {
                plan: Some(plan.clone()),
                ..AccountPatch::default()
            };
            change_account(&database.database_url, &account_id, &patch).await?;
            println!("{account_id} is now on plan {plan}");
        }
        AccountsCommand::IssueKey {
            account_id,
            scopes,
            name,
            json,
            database,
        } => {
            let req = serde_json::from_value(serde_json::json!({"scopes": scopes, "name": name}))
                .context("the key's fields")?;
            let store = open_store_with(&database.database_url, Open::EXISTING).await?;
            let issued = operator::issue_key(
                store.store().as_ref(),
                &account_id,
                req,
                &prefix,
                &Actor::cli(),
                OffsetDateTime::now_utc(),
            )
            .await;
            store.close().await;
            let (key, secret) = match issued {
                Ok(issued) => issued,
                Err(e) if e.status == StatusCode::NOT_FOUND => {
                    bail!(no_account(&account_id, &database.database_url))
                }
                Err(e) => return Err(refusal(e)),
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "key_id": key.key_id.as_str(),
                        "api_key": secret.expose(),
                    })
                );
            } else {
                println!("key_id      {}", key.key_id);
                println!("api_key     {}", secret.expose());
                println!();
                println!("The api_key is shown only this once: store it now.");
            }
        }
        AccountsCommand::Suspend {
            account_id,
            database,
        } => {
            let patch = AccountPatch {
                status: Some(AccountStatus::Suspended),
                ..AccountPatch::default()
            };
            change_account(&database.database_url, &account_id, &patch).await?;
            println!("{account_id} is suspended");
        }
        AccountsCommand::Resume {
            account_id,
            database,
        } => {
            let patch = AccountPatch {
                status: Some(AccountStatus::Active),
                ..AccountPatch::default()
            };
            change_account(&database.database_url, &account_id, &patch).await?;
            println!("{account_id} is active");
        }
        AccountsCommand::Delete {
            account_id,
            database,
        } => {
            let store = open_store_with(&database.database_url, Open::EXISTING).await?;
            let deleted = operator::delete_account(
                store.store().as_ref(),
                &account_id,
                &Actor::cli(),
                OffsetDateTime::now_utc(),
            )
            .await;
            store.close().await;
            match deleted {
                Ok(_) => println!("{account_id} deleted"),
                Err(e) if e.status == StatusCode::NOT_FOUND => {
                    bail!(no_account(&account_id, &database.database_url))
                }
                Err(e) => return Err(refusal(e)),
            }
        }
        AccountsCommand::SetLimits {
            account_id,
            limits,
            database,
        } => {
            let store = open_store_with(&database.database_url, Open::EXISTING).await?;
            let current = store
                .store()
                .account(&account_id)
                .await
                .context("reading the account")?
                .with_context(|| no_account(&account_id, &database.database_url))?
                .account
                .overrides;
            let overrides = limits.over(current);
            store.close().await;
            let patch = AccountPatch {
                overrides: Some(overrides),
                ..AccountPatch::default()
            };
            let limits = change_account(&database.database_url, &account_id, &patch)
                .await?
                .limits;
            println!("{account_id}: {}", show_limits(limits));
        }
    }
    Ok(())
}

fn show_limit(n: Option<u32>) -> String {
    n.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

/// `N per minute, N per day, N per month`, each N a number or `unlimited`.
fn show_limits(limits: Limits) -> String {
    format!(
        "{} per minute, {} per day, {} per month",
        show_limit(limits.per_minute),
        show_limit(limits.per_day),
        show_limit(limits.per_month)
    )
}

async fn operators(args: OperatorsArgs) -> anyhow::Result<()> {
    match args.command {
        OperatorsCommand::Create {
            name,
            json,
            database,
        } => {
            let store = open_store_with(&database.database_url, Open::EXISTING).await?;
            let created = operator::create_operator(
                store.store().as_ref(),
                &name,
                &args.keys.prefix,
                &Actor::cli(),
                OffsetDateTime::now_utc(),
            )
            .await;
            store.close().await;
            let (op, secret) = created.map_err(refusal)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "operator_id": op.operator_id.as_str(),
                        "api_key": secret.expose(),
                    })
                );
            } else {
                println!("operator_id  {}", op.operator_id);
                println!("name         {}", op.name);
                println!("api_key      {}", secret.expose());
                println!();
                println!("The api_key is shown only this once: store it now.");
            }
        }
        OperatorsCommand::List { json, database } => {
            let store = open_store_with(&database.database_url, Open::EXISTING).await?;
            let listed = store.store().list_operators().await;
            store.close().await;
            for op in listed.context("listing operators")? {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "operator_id": op.operator_id.as_str(),
                            "name": op.name,
                            "hint": op.hint,
                            "created_at": timefmt::format(op.created_at),
                        })
                    );
                } else {
                    println!(
                        "{:<30} {:<16} {:<20}  {}",
                        op.operator_id,
                        op.hint,
                        timefmt::format(op.created_at),
                        op.name
                    );
                }
            }
        }
        OperatorsCommand::Revoke {
            operator_id,
            database,
        } => {
            let store = open_store_with(&database.database_url, Open::EXISTING).await?;
            let revoked = operator::revoke_operator(
                store.store().as_ref(),
                &operator_id,
                &Actor::cli(),
                OffsetDateTime::now_utc(),
            )
            .await;
            store.close().await;
            match revoked {
                Ok(()) => println!("{operator_id} revoked"),
                Err(e) if e.status == StatusCode::NOT_FOUND => bail!("no operator {operator_id}"),
                Err(e) => return Err(refusal(e)),
            }
        }
    }
    Ok(())
}

async fn plans(args: PlansArgs) -> anyhow::Result<()> {
    match args.command {
        PlansCommand::List { json, database } => {
            let store = open_store_with(&database.database_url, Open::EXISTING).await?;
            let plans = store.store().plans().await.context("listing plans")?;
            store.close().await;
            if !json {
                println!(
                    "{:<32} {:>10} {:>10} {:>10}",
                    "plan", "per_min", "per_day", "per_month"
                );
            }
            for plan in plans {
                let l = plan.limits;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "name": plan.name.as_str(),
                            "per_minute": l.per_minute,
                            "per_day": l.per_day,
                            "per_month": l.per_month,
                        })
                    );
                } else {
                    println!(
                        "{:<32} {:>10} {:>10} {:>10}",
                        plan.name,
                        show_limit(l.per_minute),
                        show_limit(l.per_day),
                        show_limit(l.per_month)
                    );
                }
            }
        }
        PlansCommand::Set {
            name,
            limits,
            database,
        } => {
            // An omitted window is unlimited.
            let limits = limits.over(Limits::default());
            let store = open_store_with(&database.database_url, Open::EXISTING).await?;
            let plan = Plan {
                name: name.clone(),
                limits,
            };
            let put = operator::put_plan(
                store.store().as_ref(),
                &plan,
                &Actor::cli(),
                OffsetDateTime::now_utc(),
            )
            .await;
            store.close().await;
            put.map_err(refusal)?;
            println!("plan {name}: {}", show_limits(limits));
        }
        PlansCommand::Delete { name, database } => {
            let store = open_store_with(&database.database_url, Open::EXISTING).await?;
            let deleted = operator::delete_plan(
                store.store().as_ref(),
                &name,
                &Actor::cli(),
                OffsetDateTime::now_utc(),
            )
            .await;
            store.close().await;
            deleted.map_err(refusal)?;
            println!("plan {name} deleted");
        }
    }
    Ok(())
}

/// Changes an account as `PATCH /operator/v1/accounts/{account_id}` does.
async fn change_account(
    url: &DatabaseUrl,
    account_id: &AccountId,
    patch: &AccountPatch,
) -> anyhow::Result<AccountSummary> {
    let store = open_store_with(url, Open::EXISTING).await?;
    let changed = operator::update_account(
        store.store().as_ref(),
        account_id,
        patch,
        &Actor::cli(),
        OffsetDateTime::now_utc(),
    )
    .await;
    store.close().await;
    match changed {
        Ok((account, _)) => Ok(account),
        Err(e) if e.status == StatusCode::NOT_FOUND => bail!(no_account(account_id, url)),
        Err(e) => Err(refusal(e)),
    }
}

/// "No account" naming the database searched (its password redacted), so that a wrong
/// `--database-url` or working directory shows at once.
fn no_account(account_id: &AccountId, database: &DatabaseUrl) -> String {
    format!(
        "no account {account_id} in {} (set by --database-url or KEYWARD_DATABASE_URL)",
        database.redacted()
    )
}
