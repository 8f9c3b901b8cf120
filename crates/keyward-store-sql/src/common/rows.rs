//! Rows to records: every column of a key, an account or an audit event is read here and
//! nowhere else.

use std::str::FromStr;

use keyward_core::{
    AccountId, AccountStatus, ExternalId, KeyDigest, KeyId, KeyName, KeyPolicies, Limits, Metadata,
    OperatorId, PlanName, ScopeSet, StoredStatus,
};
use keyward_store::{
    Account, AccountSummary, ApiKey, AuditAction, AuditEvent, Operator, Plan, StoreError,
    StoreResult,
};
use time::OffsetDateTime;

use super::Sql;

/// The columns [`key`] reads, from `api_key k`.
pub(crate) const KEY_COLUMNS: &str = "k.key_id, k.account_id, k.name, k.scopes, k.metadata, \
     k.status, k.expires_at, k.created_at, k.last_used, k.hint, k.version, k.policies, \
     k.expire_after_inactive_days";

/// A key from the [`KEY_COLUMNS`] of a row.
pub(crate) fn key<D: Sql>(row: &D::Row) -> StoreResult<ApiKey> {
    let scopes: String = D::get(row, "scopes")?;
    let scopes: Vec<String> =
        serde_json::from_str(&scopes).map_err(|_| corrupt("scopes are not a JSON array"))?;
    let name: Option<String> = D::get(row, "name")?;
    let status: String = D::get(row, "status")?;
    let metadata: String = D::get(row, "metadata")?;
    let policies: String = D::get(row, "policies")?;
    let inactive_days: Option<i64> = D::get(row, "expire_after_inactive_days")?;
    Ok(ApiKey {
        key_id: KeyId::from_trusted(D::get(row, "key_id")?),
        account_id: AccountId::from_trusted(D::get(row, "account_id")?),
        name: name
            .map(|n| KeyName::parse(&n))
            .transpose()
            .map_err(|_| corrupt("stored name is invalid"))?,
        scopes: ScopeSet::parse(&scopes).map_err(|_| corrupt("stored scopes are invalid"))?,
        metadata: Metadata::from_stored(&metadata),
        status: StoredStatus::from_str(&status).map_err(|_| corrupt("stored status"))?,
        expires_at: time::<D>(row, "expires_at")?,
        created_at: from_ts(D::get(row, "created_at")?)?,
        last_used: time::<D>(row, "last_used")?,
        hint: D::get(row, "hint")?,
        version: D::get(row, "version")?,
        policies: KeyPolicies::from_stored(&policies).map_err(|_| corrupt("stored policies"))?,
        expire_after_inactive_days: inactive_days
            .map(u16::try_from)
            .transpose()
            .map_err(|_| corrupt("stored expire_after_inactive_days"))?,
    })
}

/// What [`account`] reads: every column of `account a`, its plan's limits from `plan p`
/// as `plan_per_*`, and its key count. Followed by the `where` or `order by`.
pub(crate) const ACCOUNT_SELECT: &str = "select a.*, p.per_minute as plan_per_minute, \
     p.per_day as plan_per_day, p.per_month as plan_per_month, \
     (select count(*) from api_key k where k.account_id = a.account_id) as key_count \
     from account a join plan p on p.name = a.plan";

/// An account, its limits in force and its key count, from an [`ACCOUNT_SELECT`] row.
pub(crate) fn account<D: Sql>(row: &D::Row) -> StoreResult<AccountSummary> {
    let status: String = D::get(row, "status")?;
    let external_id: Option<String> = D::get(row, "external_id")?;
    let metadata: String = D::get(row, "metadata")?;
    let overrides = limits::<D>(row, "")?;
    let account = Account {
        account_id: AccountId::from_trusted(D::get(row, "account_id")?),
        name: D::get(row, "name")?,
        plan: plan_name::<D>(row, "plan")?,
        overrides,
        status: AccountStatus::from_str(&status).map_err(|_| corrupt("stored account status"))?,
        external_id: external_id
            .map(|id| ExternalId::parse(&id))
            .transpose()
            .map_err(|_| corrupt("stored external id"))?,
        metadata: Metadata::from_stored(&metadata),
        created_at: from_ts(D::get(row, "created_at")?)?,
    };
    Ok(AccountSummary {
        account,
        limits: limits::<D>(row, "plan_")?.overridden_by(overrides),
        key_count: count::<D>(row, "key_count")?,
    })
}

/// An operator from its row.
pub(crate) fn operator<D: Sql>(row: &D::Row) -> StoreResult<Operator> {
    Ok(Operator {
        operator_id: OperatorId::from_trusted(D::get(row, "operator_id")?),
        name: D::get(row, "name")?,
        hint: D::get(row, "hint")?,
        created_at: from_ts(D::get(row, "created_at")?)?,
    })
}

/// A plan from its row.
pub(crate) fn plan<D: Sql>(row: &D::Row) -> StoreResult<Plan> {
    Ok(Plan {
        name: plan_name::<D>(row, "name")?,
        limits: limits::<D>(row, "")?,
    })
}

fn plan_name<D: Sql>(row: &D::Row, column: &str) -> StoreResult<PlanName> {
    let name: String = D::get(row, column)?;
    PlanName::parse(&name).map_err(|_| corrupt("stored plan name"))
}

/// Limits from the columns `{prefix}per_minute`, `{prefix}per_day` and
/// `{prefix}per_month`: a plan's (`plan_`, or a plan row's own), or an account's
/// overrides.
pub(crate) fn limits<D: Sql>(row: &D::Row, prefix: &str) -> StoreResult<Limits> {
    let number = |window: &str| -> StoreResult<Option<u32>> {
        let n: Option<i64> = D::get(row, &format!("{prefix}per_{window}"))?;
        n.map(|n| u32::try_from(n).map_err(|_| corrupt("stored limit out of range")))
            .transpose()
    };
    Ok(Limits::new(number("minute")?, number("day")?).with_per_month(number("month")?))
}

/// An audit event from all the columns of its row.
pub(crate) fn audit_event<D: Sql>(row: &D::Row) -> StoreResult<AuditEvent> {
    let action: String = D::get(row, "action")?;
    let changes: String = D::get(row, "changes")?;
    let actor: Option<String> = D::get(row, "actor_key_id")?;
    let key_id: Option<String> = D::get(row, "key_id")?;
    Ok(AuditEvent {
        seq: D::get(row, "audit_event_id")?,
        time: from_ts(D::get(row, "time")?)?,
        action: AuditAction::parse(&action).ok_or_else(|| corrupt("stored action"))?,
        actor_key_id: actor,
        key_id: key_id.map(KeyId::from_trusted),
        changes: serde_json::from_str(&changes)
            .map_err(|_| corrupt("stored changes are not JSON"))?,
        request_id: D::get(row, "request_id")?,
        prev_hash: D::get(row, "prev_hash")?,
        hash: D::get(row, "hash")?,
    })
}

/// A secret's digest from its column `digest`.
pub(crate) fn digest<D: Sql>(row: &D::Row) -> StoreResult<KeyDigest> {
    let bytes: Vec<u8> = D::get(row, "digest")?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map(KeyDigest)
        .map_err(|_| corrupt("digest is not 32 bytes"))
}

/// A count column (`bigint`), as the `u64` records hold.
pub(crate) fn count<D: Sql>(row: &D::Row, column: &str) -> StoreResult<u64> {
    D::get(row, column).map(i64::unsigned_abs)
}

/// A stored row that does not decode.
pub(crate) fn corrupt(what: &'static str) -> StoreError {
    StoreError::Other(what.into())
}

/// A time as stored: unix seconds.
pub(crate) fn ts(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

pub(crate) fn from_ts(secs: i64) -> StoreResult<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| corrupt("timestamp out of range"))
}

/// A time column that may be null.
pub(crate) fn time<D: Sql>(row: &D::Row, column: &str) -> StoreResult<Option<OffsetDateTime>> {
    let secs: Option<i64> = D::get(row, column)?;
    secs.map(from_ts).transpose()
}

/// Scopes as stored: a JSON array of their names.
pub(crate) fn scopes_json(scopes: &ScopeSet) -> String {
    serde_json::Value::from(scopes.to_strings()).to_string()
}
