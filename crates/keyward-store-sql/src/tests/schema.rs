//! The two backends' schemas, as the databases report them, are the same: tables, columns
//! (names, order, types, nullability), primary keys and indexes (names, columns,
//! uniqueness). Collations, defaults and checks are not compared.

use std::collections::BTreeMap;

use sqlx::AssertSqlSafe;

use super::{TestDb, fresh_sqlite};

/// A table as compared: its columns `(name, type, not null)` in order, its primary key's
/// columns, and its other indexes `(name, unique, columns)`, sorted.
#[derive(Debug, Default, PartialEq, Eq)]
struct Table {
    columns: Vec<(String, &'static str, bool)>,
    primary_key: Vec<String>,
    indexes: Vec<(String, bool, Vec<String>)>,
}

/// The type a column is compared by. The equivalence: SQLite's `integer` (64 bits) is
/// PostgreSQL's `bigint`, `text` is `text`, `blob` is `bytea`.
fn comparable_type(declared: &str) -> &'static str {
    match declared.to_lowercase().as_str() {
        "integer" | "bigint" => "integer",
        "text" => "text",
        "blob" | "bytea" => "blob",
        other => panic!("no equivalence for the column type {other}"),
    }
}

#[tokio::test]
async fn both_backends_report_the_same_schema() {
    let Some(db) = TestDb::connect("both_backends_report_the_same_schema").await else {
        return;
    };
    let (sqlite, _dir) = fresh_sqlite().await;
    let (pg, schema) = db.fresh().await;

    let mut lite: BTreeMap<String, Table> = BTreeMap::new();
    let reader = &sqlite.0.reader;
    let ours = "m.type = 'table' and m.name not like 'sqlite\\_%' escape '\\' \
                and m.name <> '_sqlx_migrations'";
    let columns: Vec<(String, String, String, bool, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "select m.name, c.name, c.type, c.\"notnull\", c.pk \
         from sqlite_schema m join pragma_table_info(m.name) c where {ours} \
         order by m.name, c.cid"
    )))
    .fetch_all(reader)
    .await
    .unwrap();
    let mut primary_keys = Vec::new();
    for (table, column, declared, not_null, pk) in columns {
        let columns = &mut lite.entry(table.clone()).or_default().columns;
        columns.push((column.clone(), comparable_type(&declared), not_null));
        primary_keys.extend((pk > 0).then_some((table, pk, column)));
    }
    primary_keys.sort();
    for (table, _, column) in primary_keys {
        lite.get_mut(&table).unwrap().primary_key.push(column);
    }
    let indexes: Vec<(String, String, bool, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "select m.name, i.name, i.\"unique\", group_concat(c.name, ',' order by c.seqno) \
         from sqlite_schema m join pragma_index_list(m.name) i join pragma_index_info(i.name) c \
         where {ours} and i.origin <> 'pk' group by m.name, i.name order by i.name"
    )))
    .fetch_all(reader)
    .await
    .unwrap();
    for (table, index, unique, columns) in indexes {
        let columns = columns.split(',').map(str::to_owned).collect();
        lite.get_mut(&table)
            .unwrap()
            .indexes
            .push((index, unique, columns));
    }

    let mut postgres: BTreeMap<String, Table> = BTreeMap::new();
    let columns: Vec<(String, String, String, String)> = sqlx::query_as(
        "select table_name::text, column_name::text, data_type::text, is_nullable::text \
         from information_schema.columns \
         where table_schema = $1 and table_name <> '_sqlx_migrations' \
         order by table_name, ordinal_position",
    )
    .bind(&schema.name)
    .fetch_all(pg.pool())
    .await
    .unwrap();
    for (table, column, data_type, nullable) in columns {
        let column = (column, comparable_type(&data_type), nullable == "NO");
        postgres.entry(table).or_default().columns.push(column);
    }
    let indexes: Vec<(String, String, bool, bool, Vec<String>)> = sqlx::query_as(
        "select t.relname::text, i.relname::text, x.indisunique, x.indisprimary, \
         array_agg(a.attname::text order by k.position) \
         from pg_index x \
         join pg_class i on i.oid = x.indexrelid \
         join pg_class t on t.oid = x.indrelid \
         join pg_namespace n on n.oid = t.relnamespace \
         cross join lateral unnest(x.indkey::int2[]) with ordinality as k(attnum, position) \
         join pg_attribute a on a.attrelid = t.oid and a.attnum = k.attnum \
         where n.nspname = $1 and t.relname <> '_sqlx_migrations' \
         group by t.relname, i.relname, x.indisunique, x.indisprimary \
         order by i.relname",
    )
    .bind(&schema.name)
    .fetch_all(pg.pool())
    .await
    .unwrap();
    for (table, index, unique, primary, columns) in indexes {
        let table = postgres.get_mut(&table).unwrap();
        if primary {
            table.primary_key = columns;
        } else {
            table.indexes.push((index, unique, columns));
        }
    }

    assert!(lite.contains_key("api_key") && !lite["api_key"].indexes.is_empty());
    assert_eq!(
        lite.keys().collect::<Vec<_>>(),
        postgres.keys().collect::<Vec<_>>(),
        "tables"
    );
    for (name, table) in &lite {
        assert_eq!(table, &postgres[name], "table {name}");
    }
    sqlite.close().await;
    pg.close().await;
}
