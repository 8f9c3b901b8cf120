//! The command line (API.md §Operator interface). Every flag also reads a `KEYWARD_…`
//! variable, and values become domain types here, so no command starts half-configured.
//! An argument that can carry a password (`--database-url`, `--redis-url`) is declared
//! with `hide_env_values`, so `--help` names its variable but never shows its value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use keyward_core::{AccountId, KeyPrefix, Limits, OperatorId, PlanName};

/// keyward: a self-hostable API-key service.
#[derive(Debug, Parser)]
#[command(name = "keyward", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    // Boxed: its flags make it several times the size of the other commands.
    Serve(Box<ServeArgs>),
    /// Manage accounts (tenants).
    Accounts(AccountsArgs),
    /// Manage plans: names and their rate limits and monthly quotas.
    Plans(PlansArgs),
    /// Manage operators, whose keys (kwop_…) work on the operator API only.
    Operators(OperatorsArgs),
    /// Apply the database's pending migrations, then exit (creates a missing SQLite file).
    Migrate(MigrateArgs),
    /// Copy a SQLite database, consistently, while it serves.
    Backup(BackupArgs),
    /// Check the audit log.
    Audit(AuditArgs),
}

/// Where the database is, shared by every command.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `sqlite:PATH`, a plain path, or `postgres://…` for the shared PostgreSQL backend.
    #[arg(long, env = "KEYWARD_DATABASE_URL", hide_env_values = true, default_value = "sqlite:keyward.db", value_parser = DatabaseUrl::parse)]
    pub database_url: DatabaseUrl,
}

/// The key prefix, taken by every command (API.md §Operator interface), so that one set of
/// flags or variables serves them all; `migrate` and `backup` touch no key.
#[derive(Debug, Clone, Args)]
pub struct KeyPrefixArgs {
    /// Prefix of issued keys: 1 to 16 of [a-z0-9], starting with a letter. Keys issued
    /// under an earlier prefix keep working after it changes.
    #[arg(long = "key-prefix", env = "KEYWARD_KEY_PREFIX", default_value = "kw", value_parser = parse_prefix, global = true)]
    pub prefix: KeyPrefix,
}

/// `keyward accounts …`: the key prefix, then what to do.
#[derive(Debug, Args)]
pub struct AccountsArgs {
    /// The prefix of the keys it prints.
    #[command(flatten)]
    pub keys: KeyPrefixArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: AccountsCommand,
}

/// `keyward migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The key prefix, accepted like by every command.
    #[command(flatten)]
    pub keys: KeyPrefixArgs,
}

/// `keyward backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the copy: a new file (an existing one is never overwritten).
    #[arg(long)]
    pub to: PathBuf,
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The key prefix, accepted like by every command.
    #[command(flatten)]
    pub keys: KeyPrefixArgs,
}

/// `keyward audit …`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The key prefix, accepted like by every command.
    #[command(flatten)]
    pub keys: KeyPrefixArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// `keyward audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute every audit chain (or one account's) and exit non-zero naming the first
    /// event that does not match: a row edited, deleted or inserted in the database.
    Verify {
        /// Only this account's chain.
        #[arg(long = "account", value_parser = parse_account_id)]
        account_id: Option<AccountId>,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// `keyward serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "KEYWARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve `/metrics` on this address only (e.g. `127.0.0.1:9090`); `--listen` then
    /// answers `/metrics` with `404`.
    #[arg(long, env = "KEYWARD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Redis for rate limits shared by every node (`redis://HOST:PORT`, or `rediss://` for
    /// TLS); without it each node counts on its own.
    #[arg(long, env = "KEYWARD_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// PEM file of the CA certificates to trust for a `rediss://` server, in place of the
    /// built-in Mozilla roots (for a private CA).
    #[arg(long, env = "KEYWARD_REDIS_CA_CERT", requires = "redis_url")]
    pub redis_ca_cert: Option<PathBuf>,
    /// Don't create the `default` account and key on first start.
    #[arg(long, env = "KEYWARD_NO_BOOTSTRAP")]
    pub no_bootstrap: bool,
    /// Don't apply migrations: refuse to start while any is pending (run `keyward
    /// migrate` first), so that only a deliberate step changes the schema.
    #[arg(long, env = "KEYWARD_NO_MIGRATE")]
    pub no_migrate: bool,
    /// The prefix of issued keys.
    #[command(flatten)]
    pub keys: KeyPrefixArgs,
    /// Request history older than this many days is pruned (usage counters are kept).
    #[arg(long, env = "KEYWARD_HISTORY_RETENTION_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub history_retention_days: u32,
    /// Allow webhook targets whose host is a loopback, private, link-local or otherwise
    /// reserved address (for tests and private networks).
    #[arg(long, env = "KEYWARD_WEBHOOKS_ALLOW_PRIVATE")]
    pub webhooks_allow_private: bool,
    /// Tests only: retry webhook deliveries after 1 s each, give up on an attempt after
    /// 2 s, and scan key expiries every second.
    #[arg(long, hide = true)]
    pub webhooks_fast_retries: bool,
    /// What a report of leaked keys (`POST /operator/v1/leaked-keys`, GitHub secret
    /// scanning) does to a key that still works: `revoke` it, or `disable` it and leave
    /// the decision to its owner.
    #[arg(long, env = "KEYWARD_ON_LEAK", default_value = "revoke", value_parser = parse_on_leak)]
    pub on_leak: keyward_core::leak::LeakResponse,
    /// GitHub's secret scanning public keys (a saved copy of
    /// `https://api.github.com/meta/public_keys/secret_scanning`): with it, keyward serves
    /// `POST /secret-scanning/github` for GitHub's partner program. Read at start; a file
    /// that is not that document stops `serve`.
    #[arg(long, env = "KEYWARD_GITHUB_SCANNING_KEYS")]
    pub github_scanning_keys: Option<PathBuf>,
    /// Largest request body in bytes.
    #[arg(long, env = "KEYWARD_BODY_LIMIT", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub body_limit: u32,
    /// Most keys kept in the in-memory authentication cache.
    #[arg(long, env = "KEYWARD_KEY_CACHE_CAPACITY", default_value_t = 100_000)]
    pub key_cache_capacity: u64,
    /// Most unflushed request-history rows held in memory before new ones are dropped.
    #[arg(long, env = "KEYWARD_METER_CAPACITY", default_value_t = 200_000)]
    pub meter_capacity: usize,
    /// Log format. Text is coloured only when standard error is a terminal and
    /// `NO_COLOR` is unset.
    #[arg(long, env = "KEYWARD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Log one line per request (target `keyward::access`: request id, method, route,
    /// status, latency, key id, user agent).
    #[arg(long, env = "KEYWARD_ACCESS_LOG")]
    pub access_log: bool,
    /// Proxies (addresses or CIDR ranges, comma-separated) whose `x-forwarded-for` names
    /// the client: a request from one of them is from the right-most entry that is not
    /// one of them (for keys' `allowed_ips`). Without it, the TCP peer is the client.
    #[arg(long, env = "KEYWARD_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_proxy)]
    pub trusted_proxies: Vec<keyward_core::policy::IpNet>,
    /// Tests only: seconds added to the clock of requests, so that a test can see what
    /// days of time do (inactivity expiry, credit refills) at once.
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    pub test_clock_offset: i64,
    /// Longest wait for a request's headers, from the connection's start or from the
    /// first byte of each later request; then the connection is closed. `10s`, `500ms`,
    /// `2m` or seconds.
    #[arg(long, env = "KEYWARD_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Longest wait for a request's whole body, from when keyward first waits for it;
    /// then `408` and the connection is closed.
    #[arg(long, env = "KEYWARD_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request before it is
    /// closed. Keep it above the idle timeout of a load balancer in front.
    #[arg(long, env = "KEYWARD_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Most connections open at once; further ones wait in the listen backlog until one
    /// closes. Keep the file descriptor limit above it.
    #[arg(long, env = "KEYWARD_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// At SIGTERM, how long in-flight requests may take to finish before the remaining
    /// connections are closed (buffered metering is flushed either way).
    #[arg(long, env = "KEYWARD_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// The platform's routes (TOML, docs/GATEWAY.md): served by forward auth on
    /// `/authorize`, and forwarded to `--upstream` when it is given. A file with a fault
    /// stops `serve` with its line.
    #[arg(long, env = "KEYWARD_ROUTES")]
    pub routes: Option<PathBuf>,
    /// Gateway mode: forward requests of the routes to this `http://HOST:PORT[/BASE]`.
    #[arg(long, env = "KEYWARD_UPSTREAM", requires = "routes")]
    pub upstream: Option<String>,
    /// Longest wait for the upstream's response headers (and for connecting to it);
    /// then `504`. `30s`, `500ms`, `2m` or seconds.
    #[arg(long, env = "KEYWARD_UPSTREAM_TIMEOUT", default_value = "30s", value_parser = parse_duration, requires = "upstream")]
    pub upstream_timeout: Duration,
    /// Largest body forwarded to the upstream, in bytes (`413` past it); unlimited if
    /// not given. `--body-limit` and `--body-timeout` are for keyward's own endpoints.
    #[arg(long, env = "KEYWARD_UPSTREAM_BODY_LIMIT", requires = "upstream")]
    pub upstream_body_limit: Option<u64>,
}

fn parse_on_leak(raw: &str) -> Result<keyward_core::leak::LeakResponse, String> {
    raw.parse()
        .map_err(|e: keyward_core::InvalidValue| e.0.to_owned())
}

fn parse_proxy(raw: &str) -> Result<keyward_core::policy::IpNet, String> {
    keyward_core::policy::parse_net(raw.trim())
        .ok_or_else(|| format!("{raw:?} is not an IP address or CIDR range"))
}

/// `keyward accounts …`.
#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Create an account and its first key (scopes read, write, admin); prints the
    /// secret once.
    Create {
        /// The account's name.
        #[arg(long)]
        name: String,
        /// Its plan (see `keyward plans list`).
        #[arg(long, default_value = "free", value_parser = parse_plan)]
        plan: PlanName,
        /// Print `{"account_id", "key_id", "api_key"}` on one line.
        #[arg(long)]
        json: bool,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List accounts.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Change an account's plan.
    SetPlan {
        /// The account.
        #[arg(value_parser = parse_account_id)]
        account_id: AccountId,
        /// The new plan (see `keyward plans list`).
        #[arg(value_parser = parse_plan)]
        plan: PlanName,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Issue a key with any scopes to an account (for one whose keys are lost); prints the
    /// secret once.
    IssueKey {
        /// The account.
        #[arg(value_parser = parse_account_id)]
        account_id: AccountId,
        /// The key's scopes, comma-separated (any scopes, custom ones included).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// The key's name.
        #[arg(long)]
        name: Option<String>,
        /// Print `{"key_id", "api_key"}` on one line.
        #[arg(long)]
        json: bool,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Suspend an account: its keys are refused (401) until it is resumed.
    Suspend {
        /// The account.
        #[arg(value_parser = parse_account_id)]
        account_id: AccountId,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Resume a suspended account.
    Resume {
        /// The account.
        #[arg(value_parser = parse_account_id)]
        account_id: AccountId,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Delete an account: its keys are revoked, its request history, usage and webhook
    /// subscriptions deleted; its audit log is kept.
    Delete {
        /// The account.
        #[arg(value_parser = parse_account_id)]
        account_id: AccountId,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Override an account's plan numbers (any plan): N replaces the plan's number,
    /// `none` goes back to the plan's; an omitted window keeps its current override.
    SetLimits {
        /// The account.
        #[arg(value_parser = parse_account_id)]
        account_id: AccountId,
        /// The numbers of the windows.
        #[command(flatten)]
        limits: LimitArgs,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// `keyward operators …`: the key prefix, then what to do.
#[derive(Debug, Args)]
pub struct OperatorsArgs {
    /// The prefix of the keys it prints (with `op` added).
    #[command(flatten)]
    pub keys: KeyPrefixArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: OperatorsCommand,
}

/// `keyward operators …`.
#[derive(Debug, Subcommand)]
pub enum OperatorsCommand {
    /// Create an operator and its key; prints the key once.
    Create {
        /// The operator's name.
        #[arg(long)]
        name: String,
        /// Print `{"operator_id", "api_key"}` on one line.
        #[arg(long)]
        json: bool,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List operators (never their keys).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Revoke an operator's key.
    Revoke {
        /// The operator.
        #[arg(value_parser = parse_operator_id)]
        operator_id: OperatorId,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// `keyward plans …`.
#[derive(Debug, Args)]
pub struct PlansArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PlansCommand,
}

/// `keyward plans …`.
#[derive(Debug, Subcommand)]
pub enum PlansCommand {
    /// List the plans and their limits.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Create a plan or replace its limits; an omitted window is unlimited.
    Set {
        /// The plan's name: 1 to 32 of a-z, 0-9, _ and -, starting with a letter.
        #[arg(value_parser = parse_plan)]
        name: PlanName,
        /// The numbers of the windows.
        #[command(flatten)]
        limits: LimitArgs,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Delete a plan no account uses.
    Delete {
        /// The plan.
        #[arg(value_parser = parse_plan)]
        name: PlanName,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// The number of each window, as `accounts set-limits` and `plans set` take them.
#[derive(Debug, Clone, Copy, Args)]
pub struct LimitArgs {
    /// Requests per rolling minute: N or none.
    #[arg(long, value_parser = parse_limit)]
    pub per_minute: Option<Limit>,
    /// Requests per rolling day: N or none.
    #[arg(long, value_parser = parse_limit)]
    pub per_day: Option<Limit>,
    /// Requests per calendar month (UTC), the monthly quota: N or none.
    #[arg(long, value_parser = parse_limit)]
    pub per_month: Option<Limit>,
}

impl LimitArgs {
    /// `current` with each window given replaced: by its number, or by `None` for `none`.
    #[must_use]
    pub fn over(self, current: Limits) -> Limits {
        let pick = |given: Option<Limit>, now: Option<u32>| given.map_or(now, |l| l.0);
        Limits::new(
            pick(self.per_minute, current.per_minute),
            pick(self.per_day, current.per_day),
        )
        .with_per_month(pick(self.per_month, current.per_month))
    }
}

/// A limit given on the command line: a positive number, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<u32>);

fn parse_limit(raw: &str) -> Result<Limit, String> {
    if raw == "none" {
        return Ok(Limit(None));
    }
    match raw.parse::<u32>() {
        Ok(n) if n > 0 => Ok(Limit(Some(n))),
        _ => Err(format!("`{raw}`: a positive whole number, or none")),
    }
}

/// Which backend, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (its password is never printed).
    Postgres(String),
}

impl DatabaseUrl {
    /// Picks the backend from the scheme; refuses unknown schemes rather than creating a
    /// stray SQLite file named after a URL.
    ///
    /// # Errors
    /// A message naming what was wrong.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(Self::Postgres(raw.to_owned()));
        }
        let path = if let Some(rest) = raw.strip_prefix("sqlite://") {
            rest
        } else if let Some(rest) = raw.strip_prefix("sqlite:") {
            rest
        } else if raw.contains("://") {
            let scheme = raw.split("://").next().unwrap_or_default();
            return Err(format!(
                "unsupported database URL scheme `{scheme}://`: use sqlite:PATH, a plain path, or postgres://"
            ));
        } else {
            raw
        };
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err("the SQLite database path is empty".to_owned());
        }
        if path == ":memory:" {
            return Err(
                "an in-memory SQLite database would lose every key at exit; give a file path"
                    .to_owned(),
            );
        }
        Ok(Self::Sqlite(PathBuf::from(path)))
    }

    /// A form safe to print: the path, or the PostgreSQL URL without its password.
    #[must_use]
    pub fn redacted(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite:{}", path.display()),
            Self::Postgres(url) => match (url.find("://"), url.rfind('@')) {
                (Some(scheme_end), Some(at))
                    if at > scheme_end && url[scheme_end + 3..at].contains(':') =>
                {
                    let userinfo = &url[scheme_end + 3..at];
                    let user = userinfo.split(':').next().unwrap_or_default();
                    format!("{}://{user}:***{}", &url[..scheme_end], &url[at..])
                }
                _ => url.clone(),
            },
        }
    }
}

/// A positive duration: `500ms`, `10s`, `2m`, or a number of seconds.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = raw
        .find(|c: char| !c.is_ascii_digit())
        .map_or((raw, ""), |at| raw.split_at(at));
    let bad = || format!("`{raw}` is not a duration: write 500ms, 10s, 2m, or a number of seconds");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if duration.is_zero() {
        return Err(format!("`{raw}`: the duration must be above zero"));
    }
    Ok(duration)
}

fn parse_prefix(raw: &str) -> Result<KeyPrefix, String> {
    KeyPrefix::parse(raw).map_err(|e| e.to_string())
}

fn parse_plan(raw: &str) -> Result<PlanName, String> {
    PlanName::parse(raw).map_err(|e| format!("`{raw}`: a plan name {e}"))
}

fn parse_operator_id(raw: &str) -> Result<OperatorId, String> {
    OperatorId::parse(raw).map_err(|_| format!("`{raw}` is not an operator id (op_…)"))
}

fn parse_account_id(raw: &str) -> Result<AccountId, String> {
    AccountId::parse(raw).map_err(|_| format!("`{raw}` is not an account id (acct_…)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_pick_their_backend() {
        assert_eq!(
            DatabaseUrl::parse("sqlite:keyward.db").unwrap(),
            DatabaseUrl::Sqlite("keyward.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///tmp/k.db").unwrap(),
            DatabaseUrl::Sqlite("/tmp/k.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("data/k.db").unwrap(),
            DatabaseUrl::Sqlite("data/k.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:k.db?mode=rwc").unwrap(),
            DatabaseUrl::Sqlite("k.db".into())
        );
        assert!(matches!(
            DatabaseUrl::parse("postgres://u:p@h/db").unwrap(),
            DatabaseUrl::Postgres(_)
        ));
        for bad in [
            "mysql://root@localhost/db",
            "sqlite:",
            "",
            "sqlite::memory:",
        ] {
            assert!(DatabaseUrl::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn postgres_passwords_are_redacted() {
        let url = DatabaseUrl::parse("postgres://keyward:hunter2@db:5432/keyward").unwrap();
        assert_eq!(url.redacted(), "postgres://keyward:***@db:5432/keyward");
        assert!(!url.redacted().contains("hunter2"));
        let no_password = DatabaseUrl::parse("postgres://postgres@127.0.0.1/test").unwrap();
        assert_eq!(no_password.redacted(), "postgres://postgres@127.0.0.1/test");
    }

    #[test]
    fn durations_take_a_unit_or_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "0", "0s", "-1s", "1h", "s", "1.5s", "10 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
