//! The command line (API.md §Operator interface). Every flag also reads a `KEYWARD_…`
//! variable, and values become domain types here, so no command starts half-configured.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use keyward_core::{AccountId, KeyPrefix, Plan};

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
    Serve(ServeArgs),
    /// Manage accounts (tenants).
    #[command(subcommand)]
    Accounts(AccountsCommand),
}

/// Where the database is, shared by every command.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `sqlite:PATH`, a plain path, or `postgres://…` for the shared PostgreSQL backend.
    #[arg(long, env = "KEYWARD_DATABASE_URL", default_value = "sqlite:keyward.db", value_parser = DatabaseUrl::parse)]
    pub database_url: DatabaseUrl,
}

/// `keyward serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "KEYWARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Redis for rate limits shared by every node (`redis://HOST:PORT`); without it each
    /// node counts on its own.
    #[arg(long, env = "KEYWARD_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Don't create the `default` account and key on first start.
    #[arg(long, env = "KEYWARD_NO_BOOTSTRAP")]
    pub no_bootstrap: bool,
    /// Prefix of issued keys: 1 to 16 of [a-z0-9], starting with a letter.
    #[arg(long, env = "KEYWARD_KEY_PREFIX", default_value = "kw", value_parser = parse_prefix)]
    pub key_prefix: KeyPrefix,
    /// Request history older than this many days is pruned (usage counters are kept).
    #[arg(long, env = "KEYWARD_HISTORY_RETENTION_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub history_retention_days: u32,
    /// Largest request body in bytes.
    #[arg(long, env = "KEYWARD_BODY_LIMIT", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub body_limit: u32,
    /// Most keys kept in the in-memory authentication cache.
    #[arg(long, env = "KEYWARD_KEY_CACHE_CAPACITY", default_value_t = 100_000)]
    pub key_cache_capacity: u64,
    /// Most unflushed request-history rows held in memory before new ones are dropped.
    #[arg(long, env = "KEYWARD_METER_CAPACITY", default_value_t = 200_000)]
    pub meter_capacity: usize,
    /// Log format.
    #[arg(long, env = "KEYWARD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
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
        /// Its plan.
        #[arg(long, default_value = "free", value_parser = parse_plan)]
        plan: Plan,
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
        /// The new plan.
        #[arg(value_parser = parse_plan)]
        plan: Plan,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Set an enterprise account's limits; an omitted window is unlimited.
    SetLimits {
        /// The account.
        #[arg(value_parser = parse_account_id)]
        account_id: AccountId,
        /// Requests per rolling minute.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        per_minute: Option<u32>,
        /// Requests per rolling day.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        per_day: Option<u32>,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
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

fn parse_prefix(raw: &str) -> Result<KeyPrefix, String> {
    KeyPrefix::parse(raw).map_err(|e| e.to_string())
}

fn parse_plan(raw: &str) -> Result<Plan, String> {
    raw.parse::<Plan>().map_err(|e| e.to_string())
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
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
