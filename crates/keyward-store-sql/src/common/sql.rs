//! What the shared code needs of a database, said once.
//!
//! The shared statements are generic over sqlx's [`Database`]. A bound such as
//! `i64: Encode<D>` would have to be restated on every generic function: the compiler
//! carries a trait's supertraits to the trait's users, not its other bounds. So [`Sql`]
//! turns each need into a method or supertrait of the database type itself, implemented
//! once for every database that meets them, and the shared code asks for `D: Sql` alone.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use keyward_store::{StoreError, StoreResult};
use tokio::sync::Notify;

use super::{Dialect, map_err};
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, QueryBuilder, Row, Type,
};

/// A shared statement of database `D`, with its values bound.
pub(crate) type Query<'q, D> = sqlx::query::Query<'q, D, <D as Database>::Arguments>;

/// A write transaction of database `D`. It knows whether it enqueued webhook deliveries
/// ([`Tx::enqueued`]), so that [`super::commit`] wakes this process's dispatcher once
/// they are committed.
pub(crate) struct Tx<D: Database> {
    tx: sqlx::Transaction<'static, D>,
    outbox: Arc<Notify>,
    enqueued: bool,
}

impl<D: Database> Tx<D> {
    /// `tx`, which tells `outbox` when it commits having enqueued deliveries.
    pub(crate) fn new(tx: sqlx::Transaction<'static, D>, outbox: &Arc<Notify>) -> Self {
        Self {
            tx,
            outbox: outbox.clone(),
            enqueued: false,
        }
    }

    /// Notes that the transaction inserted webhook deliveries.
    pub(crate) fn enqueued(&mut self) {
        self.enqueued = true;
    }

    /// The sqlx transaction, and the signal to tell after it commits if it enqueued
    /// deliveries.
    pub(crate) fn into_parts(self) -> (sqlx::Transaction<'static, D>, Option<Arc<Notify>>) {
        (self.tx, self.enqueued.then_some(self.outbox))
    }
}

impl<D: Database> Deref for Tx<D> {
    type Target = sqlx::Transaction<'static, D>;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl<D: Database> DerefMut for Tx<D> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// A value a shared statement binds: one of the column types keyward stores.
#[derive(Debug, Clone)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    Owned(String),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
    Bytes(&'a [u8]),
}

macro_rules! arg_from {
    ($($type:ty => $variant:ident),*) => {
        $(impl<'a> From<$type> for Arg<'a> {
            fn from(value: $type) -> Self {
                Self::$variant(value)
            }
        })*
    };
}

arg_from!(
    &'a str => Text,
    String => Owned,
    Option<&'a str> => OptText,
    i64 => Int,
    Option<i64> => OptInt,
    &'a [u8] => Bytes
);

/// A database the shared code runs on: it binds every [`Arg`], reads the column types
/// keyward stores by name ([`Get`]), and runs statements on a connection.
pub(crate) trait Sql:
    Database<Arguments: IntoArguments<Self>>
    + Get<String>
    + Get<Option<String>>
    + Get<i64>
    + Get<Option<i64>>
    + Get<Vec<u8>>
    + Get<bool>
{
    /// `query` with `value` bound to its next parameter.
    fn bind<'q>(query: Query<'q, Self>, value: Arg<'_>) -> Query<'q, Self>;
    /// Binds `value` to a parameter at the end of `builder`'s text.
    fn push_bind(builder: &mut QueryBuilder<Self>, value: Arg<'_>);
    /// A connection (a transaction's, through `Deref`) as an executor.
    fn conn(conn: &mut Self::Connection) -> impl Executor<'_, Database = Self>;
}

impl<D> Sql for D
where
    D: Database<Arguments: IntoArguments<D>>
        + Get<String>
        + Get<Option<String>>
        + Get<i64>
        + Get<Option<i64>>
        + Get<Vec<u8>>
        + Get<bool>,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'a> &'a str: Encode<'a, D> + Type<D>,
    for<'a> String: Encode<'a, D> + Type<D>,
    for<'a> Option<&'a str>: Encode<'a, D> + Type<D>,
    for<'a> i64: Encode<'a, D> + Type<D>,
    for<'a> Option<i64>: Encode<'a, D> + Type<D>,
    for<'a> &'a [u8]: Encode<'a, D> + Type<D>,
{
    fn bind<'q>(query: Query<'q, D>, value: Arg<'_>) -> Query<'q, D> {
        match value {
            Arg::Text(v) => query.bind(v),
            Arg::Owned(v) => query.bind(v),
            Arg::OptText(v) => query.bind(v),
            Arg::Int(v) => query.bind(v),
            Arg::OptInt(v) => query.bind(v),
            Arg::Bytes(v) => query.bind(v),
        }
    }

    fn push_bind(builder: &mut QueryBuilder<D>, value: Arg<'_>) {
        match value {
            Arg::Text(v) => builder.push_bind(v),
            Arg::Owned(v) => builder.push_bind(v),
            Arg::OptText(v) => builder.push_bind(v),
            Arg::Int(v) => builder.push_bind(v),
            Arg::OptInt(v) => builder.push_bind(v),
            Arg::Bytes(v) => builder.push_bind(v),
        };
    }

    fn conn(conn: &mut D::Connection) -> impl Executor<'_, Database = D> {
        conn
    }
}

/// Reads a column of type `T` by name.
pub(crate) trait Get<T>: Database {
    /// The value of `column` in `row`.
    fn get(row: &Self::Row, column: &str) -> StoreResult<T>;
}

impl<D: Database, T> Get<T> for D
where
    T: for<'r> Decode<'r, D> + Type<D>,
    for<'c> &'c str: ColumnIndex<D::Row>,
{
    fn get(row: &D::Row, column: &str) -> StoreResult<T> {
        row.try_get(column)
            .map_err(|e| StoreError::Other(Box::new(e)))
    }
}

/// `.push_arg(value)`: [`Sql::push_bind`] as a method of the builder.
pub(crate) trait PushArg {
    /// Binds `value` to a parameter at the end of the text.
    fn push_arg<'a>(&mut self, value: impl Into<Arg<'a>>) -> &mut Self;
}

impl<D: Sql> PushArg for QueryBuilder<D> {
    fn push_arg<'a>(&mut self, value: impl Into<Arg<'a>>) -> &mut Self {
        D::push_bind(self, value.into());
        self
    }
}

/// Pushes `(…), (…)`: one parenthesized row per item, its values bound.
pub(crate) fn push_rows<'a, D: Sql, const N: usize>(
    qb: &mut QueryBuilder<D>,
    rows: impl IntoIterator<Item = [Arg<'a>; N]>,
) {
    for (i, row) in rows.into_iter().enumerate() {
        qb.push(if i == 0 { "(" } else { ", (" });
        for (j, value) in row.into_iter().enumerate() {
            qb.push(if j == 0 { "" } else { ", " }).push_arg(value);
        }
        qb.push(")");
    }
}

/// A shared statement's methods: `.arg(value)` binds its next parameter ([`Sql::bind`]);
/// the others run it, with errors mapped by the database's [`Dialect`].
pub(crate) trait Statement<D: Dialect>: Sized {
    /// The statement with `value` bound to its next parameter.
    fn arg<'a>(self, value: impl Into<Arg<'a>>) -> Self;
    /// Executes it.
    async fn run<'c>(self, on: impl Executor<'c, Database = D>) -> StoreResult<()>;
    /// Its rows.
    async fn all<'c>(self, on: impl Executor<'c, Database = D>) -> StoreResult<Vec<D::Row>>;
    /// Its one row (`NotFound` if none).
    async fn one<'c>(self, on: impl Executor<'c, Database = D>) -> StoreResult<D::Row>;
    /// Its row, if any.
    async fn optional<'c>(self, on: impl Executor<'c, Database = D>)
    -> StoreResult<Option<D::Row>>;
}

impl<D: Dialect> Statement<D> for Query<'_, D> {
    fn arg<'a>(self, value: impl Into<Arg<'a>>) -> Self {
        D::bind(self, value.into())
    }

    async fn run<'c>(self, on: impl Executor<'c, Database = D>) -> StoreResult<()> {
        self.execute(on).await.map(drop).map_err(map_err::<D>)
    }

    async fn all<'c>(self, on: impl Executor<'c, Database = D>) -> StoreResult<Vec<D::Row>> {
        self.fetch_all(on).await.map_err(map_err::<D>)
    }

    async fn one<'c>(self, on: impl Executor<'c, Database = D>) -> StoreResult<D::Row> {
        self.fetch_one(on).await.map_err(map_err::<D>)
    }

    async fn optional<'c>(
        self,
        on: impl Executor<'c, Database = D>,
    ) -> StoreResult<Option<D::Row>> {
        self.fetch_optional(on).await.map_err(map_err::<D>)
    }
}

/// `tx` as an executor: `on(&mut tx)`.
pub(crate) fn on<D: Sql>(tx: &mut Tx<D>) -> impl Executor<'_, Database = D> {
    D::conn(&mut tx.tx)
}
