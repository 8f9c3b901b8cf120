//! The schema's migrations: one tree per backend (`migrations/sqlite`,
//! `migrations/postgres`), with the same versions and names, embedded in the binary and
//! run when a store opens ([`Migrations::Apply`]), or only checked
//! ([`Migrations::Require`]).
//!
//! A database that has a migration this binary does not know was migrated by a newer
//! keyward: every store refuses to open it ([`SchemaError::Newer`], naming the versions),
//! whatever the mode, because this binary's statements may not fit that schema
//! (docs/DEPLOYMENT.md, "Upgrades and rollbacks").

use std::borrow::Cow;
use std::fmt;

use keyward_store::{StoreError, StoreResult};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Executor, SqlSafeStr};

use crate::common::{Dialect, Statement as _};

/// What a store does with the schema's migrations when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Migrations {
    /// Applies the pending ones (`keyward serve`, `keyward migrate`).
    #[default]
    Apply,
    /// Applies none, and refuses to open while any is pending (`serve --no-migrate`, and
    /// the operator commands, which must never change the schema under a running server).
    Require,
}

/// A migration as its version and name, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationName {
    /// Its version.
    pub version: i64,
    /// Its name.
    pub name: String,
}

impl fmt::Display for MigrationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.version, self.name)
    }
}

/// Why a database's schema does not fit this binary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The database has migrations this binary does not know: a newer keyward migrated it.
    #[error(
        "the database's schema is newer than this keyward: it has migration(s) {} that this binary does not know (it knows up to {}); run the keyward that migrated it, or a newer one (docs/DEPLOYMENT.md, \"Upgrades and rollbacks\")",
        list(.unknown),
        .latest
    )]
    Newer {
        /// The applied migrations this binary does not know.
        unknown: Vec<MigrationName>,
        /// The newest version this binary knows.
        latest: i64,
    },
    /// Migrations are pending and the store was asked not to apply them.
    #[error(
        "the database's schema needs migration(s) {}: run `keyward migrate` first (or start `keyward serve` without --no-migrate)",
        list(.pending)
    )]
    Pending {
        /// The migrations not applied yet.
        pending: Vec<MigrationName>,
    },
}

fn list(names: &[MigrationName]) -> String {
    names
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads which migrations the database has and compares them with `migrator`'s: refuses
/// migrations it does not know, and, under [`Migrations::Require`], pending ones.
/// `table_exists` is the backend's query answering `n`, 1 if `_sqlx_migrations` exists,
/// else 0: the check itself writes nothing, not even that table.
pub(crate) async fn check<'c, D: Dialect>(
    on: impl Executor<'c, Database = D> + Copy,
    table_exists: &'static str,
    migrator: &Migrator,
    migrations: Migrations,
) -> StoreResult<()> {
    let exists: i64 = D::get(&sqlx::query(table_exists).one(on).await?, "n")?;
    let mut applied = Vec::new();
    if exists > 0 {
        let rows = sqlx::query(
            "select version, description from _sqlx_migrations where success order by version",
        )
        .all(on)
        .await?;
        for row in &rows {
            applied.push(MigrationName {
                version: D::get(row, "version")?,
                name: D::get(row, "description")?,
            });
        }
    }
    let unknown: Vec<MigrationName> = applied
        .iter()
        .filter(|m| !migrator.version_exists(m.version))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        return Err(StoreError::Other(Box::new(SchemaError::Newer {
            unknown,
            latest,
        })));
    }
    if migrations == Migrations::Require {
        let pending: Vec<MigrationName> = migrator
            .iter()
            .filter(|m| !applied.iter().any(|a| a.version == m.version))
            .map(|m| MigrationName {
                version: m.version,
                name: m.description.to_string(),
            })
            .collect();
        if !pending.is_empty() {
            return Err(StoreError::Other(Box::new(SchemaError::Pending {
                pending,
            })));
        }
    }
    Ok(())
}

/// The newest schema version this binary knows.
#[must_use]
pub fn latest_version() -> i64 {
    STEPS.last().map_or(0, |step| step.version)
}

/// A migration: its version, its name, and its SQL for each backend.
struct Step {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

/// Every migration, oldest first. A file `NNNN_name.sql` in each tree per entry (a test
/// checks both trees against this list).
const STEPS: &[Step] = &[
    Step {
        version: 1,
        name: "initial",
        sqlite: include_str!("../migrations/sqlite/0001_initial.sql"),
        postgres: include_str!("../migrations/postgres/0001_initial.sql"),
    },
    Step {
        version: 2,
        name: "operator",
        sqlite: include_str!("../migrations/sqlite/0002_operator.sql"),
        postgres: include_str!("../migrations/postgres/0002_operator.sql"),
    },
    Step {
        version: 3,
        name: "key_policies",
        sqlite: include_str!("../migrations/sqlite/0003_key_policies.sql"),
        postgres: include_str!("../migrations/postgres/0003_key_policies.sql"),
    },
    Step {
        version: 4,
        name: "webhooks",
        sqlite: include_str!("../migrations/sqlite/0004_webhooks.sql"),
        postgres: include_str!("../migrations/postgres/0004_webhooks.sql"),
    },
    Step {
        version: 5,
        name: "usage_day",
        sqlite: include_str!("../migrations/sqlite/0005_usage_day.sql"),
        postgres: include_str!("../migrations/postgres/0005_usage_day.sql"),
    },
];

/// The SQLite tree.
pub(crate) fn sqlite() -> Migrator {
    migrator(|step| step.sqlite)
}

/// The PostgreSQL tree.
pub(crate) fn postgres() -> Migrator {
    migrator(|step| step.postgres)
}

fn migrator(tree: fn(&Step) -> &'static str) -> Migrator {
    Migrator::with_migrations(
        STEPS
            .iter()
            .map(|step| {
                let sql = tree(step);
                Migration::new(
                    step.version,
                    Cow::Borrowed(step.name),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// The versions of the migrations, oldest first.
#[cfg(test)]
pub(crate) fn versions() -> Vec<i64> {
    STEPS.iter().map(|step| step.version).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_versions_are_numbered_from_one_without_gaps() {
        let versions = versions();
        let expected: Vec<i64> = (1..=i64::try_from(versions.len()).unwrap()).collect();
        assert_eq!(versions, expected);
    }

    /// Both trees hold a file `NNNN_name.sql` for each migration, and nothing else.
    #[test]
    fn both_trees_list_the_same_versions_and_names() {
        let wanted: Vec<String> = STEPS
            .iter()
            .map(|step| format!("{:04}_{}.sql", step.version, step.name.replace(' ', "_")))
            .collect();
        for tree in ["sqlite", "postgres"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(tree);
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .collect();
            files.sort();
            assert_eq!(files, wanted, "{}", dir.display());
        }
    }
}
