//! Wire types shared by several endpoints. Storage records are never serialised directly.

use keyward_core::{AllowedIps, Credits, KeyName, RefillInterval, ScopeSet, timefmt};
use keyward_store::ApiKey;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// A key's status on the wire.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatusDto {
    /// Authenticates.
    Active,
    /// Disabled by a caller.
    Inactive,
    /// `expires_at` has passed.
    Expired,
}

impl From<keyward_core::KeyStatus> for KeyStatusDto {
    fn from(s: keyward_core::KeyStatus) -> Self {
        match s {
            keyward_core::KeyStatus::Active => Self::Active,
            keyward_core::KeyStatus::Inactive => Self::Inactive,
            keyward_core::KeyStatus::Expired => Self::Expired,
        }
    }
}

/// The API key object of the seed document, plus `hint` and `metadata`. It borrows the
/// stored key and is serialised straight from it: no copies of names, scopes or
/// metadata per response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyObject<'a> {
    /// Unique, opaque id (`key_01J…`).
    #[schema(value_type = String, example = "key_01JD8X4ZQ5V7W0000000000000")]
    pub key_id: &'a str,
    /// Optional label.
    #[schema(value_type = Option<String>, example = "Production Key")]
    pub name: Option<&'a str>,
    /// Permission scopes, in the order given.
    #[schema(value_type = Vec<String>)]
    #[serde(serialize_with = "serialize_scopes")]
    pub scopes: &'a ScopeSet,
    /// When the key last authenticated (lags by at most a second); `null` if never.
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(serialize_with = "serialize_optional_time")]
    pub last_used: Option<OffsetDateTime>,
    /// Creation time.
    #[schema(value_type = String, format = DateTime)]
    #[serde(serialize_with = "serialize_time")]
    pub created_at: OffsetDateTime,
    /// When the key expires; `null` if never.
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(serialize_with = "serialize_optional_time")]
    pub expires_at: Option<OffsetDateTime>,
    /// Current status.
    pub status: KeyStatusDto,
    /// Display hint of the current secret: prefix, first 4, last 4.
    #[schema(value_type = String, example = "kw_AbCd…wxyz")]
    pub hint: &'a str,
    /// Caller-defined object.
    #[schema(value_type = Object)]
    pub metadata: &'a Map<String, Value>,
    /// The key's own rate limit, on top of its account's; absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitObject>,
    /// The key's credits with their live balance; absent without credits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credits: Option<CreditsObject>,
    /// The addresses and ranges the key may be used from; absent when unrestricted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>, example = json!(["10.0.0.0/8"]))]
    pub allowed_ips: Option<Vec<String>>,
    /// Days without use after which the key shows `expired`; absent when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 3650)]
    pub expire_after_inactive_days: Option<u16>,
}

/// A key's own rate limit (API.md §Key policies).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct RateLimitObject {
    /// At most this many requests of the key in any 60 seconds; `null`: no own limit.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub per_minute: Option<u32>,
    /// At most this many requests of the key in any 24 hours; `null`: no own limit.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub per_day: Option<u32>,
}

/// A key's credits: what is left, and the refill.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct CreditsObject {
    /// The balance: each counted request takes its cost from it.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub remaining: u64,
    /// The balance becomes `amount` at each UTC day or month start; `null`: never.
    pub refill: Option<RefillObject>,
}

/// A refill of credits.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct RefillObject {
    /// The balance after a refill.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub amount: u64,
    /// `day` or `month` (UTC).
    #[schema(value_type = RefillIntervalName)]
    pub interval: &'static str,
}

/// When credits are refilled.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum RefillIntervalName {
    /// At 00:00 UTC every day.
    Day,
    /// At 00:00 UTC on the first of every month.
    Month,
}

impl CreditsObject {
    /// The wire form of credits with the balance `remaining`.
    #[must_use]
    pub fn new(credits: &Credits, remaining: u64) -> Self {
        Self {
            remaining,
            refill: credits.refill.map(|r| RefillObject {
                amount: r.amount,
                interval: match r.interval {
                    RefillInterval::Day => "day",
                    RefillInterval::Month => "month",
                },
            }),
        }
    }
}

impl<'a> ApiKeyObject<'a> {
    /// The wire form of a key at `now` (which decides `expired`), with the credit
    /// balance as set (see [`ApiKeyObject::with_balance`] for the live one).
    #[must_use]
    pub fn new(key: &'a ApiKey, now: OffsetDateTime) -> Self {
        let policies = &key.policies;
        Self {
            key_id: key.key_id.as_str(),
            name: key.name.as_ref().map(KeyName::as_str),
            scopes: &key.scopes,
            last_used: key.last_used,
            created_at: key.created_at,
            expires_at: key.expires_at,
            status: key.status_at(now).into(),
            hint: &key.hint,
            metadata: key.metadata.as_map(),
            rate_limit: policies.rate_limit.map(|l| RateLimitObject {
                per_minute: l.per_minute,
                per_day: l.per_day,
            }),
            credits: policies
                .credits
                .as_ref()
                .map(|c| CreditsObject::new(c, c.remaining)),
            allowed_ips: policies.allowed_ips.as_ref().map(AllowedIps::to_strings),
            expire_after_inactive_days: key.expire_after_inactive_days,
        }
    }

    /// The object with the live credit balance (as the limiter has it).
    #[must_use]
    pub fn with_balance(mut self, balance: Option<u64>) -> Self {
        if let (Some(credits), Some(balance)) = (&mut self.credits, balance) {
            credits.remaining = balance;
        }
        self
    }
}

/// Serialises a time as API.md §Times asks, without allocating.
///
/// # Errors
/// The serializer's.
pub fn serialize_time<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 20];
    s.serialize_str(timefmt::format_into(*t, &mut buf))
}

/// [`serialize_time`] for an optional time (`null` when absent).
///
/// # Errors
/// The serializer's.
pub fn serialize_optional_time<S: Serializer>(
    t: &Option<OffsetDateTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize_time(t, s),
        None => s.serialize_none(),
    }
}

fn serialize_scopes<S: Serializer>(scopes: &&ScopeSet, s: S) -> Result<S::Ok, S::Error> {
    serialize_scope_set(scopes, s)
}

/// Serialises scopes as a list of strings, in order.
///
/// # Errors
/// The serializer's.
pub fn serialize_scope_set<S: Serializer>(scopes: &ScopeSet, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(scopes.iter().map(keyward_core::Scope::as_str))
}

/// A key object with its secret: the one response that shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyWithSecret<'a> {
    /// The key.
    #[serde(flatten)]
    pub key: ApiKeyObject<'a>,
    /// The secret. Shown once; store it now.
    #[schema(example = "kw_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AB")]
    pub api_key: &'a str,
}

// Here rather than with its handler because the listing cache renders it too. Its doc
// comment is the schema's description in the OpenAPI document.
/// Body of `GET /v1/api-keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList<'a> {
    /// The account's keys, oldest first.
    pub api_keys: Vec<ApiKeyObject<'a>>,
    /// With `limit`: whether more keys follow the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_more: Option<bool>,
}

/// For `PATCH` fields where `null` means something: absent is `None`, `null` is
/// `Some(None)`.
///
/// # Errors
/// The inner type's error.
pub fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Keeps the rows asked of the `read` rows of
/// [`crate::extract::QueryParams::take_page`], and gives the cursor of the last one if
/// more followed.
pub(crate) fn trim_page<T>(
    rows: &mut Vec<T>,
    read: u32,
    seq: impl Fn(&T) -> i64,
) -> Option<String> {
    let wanted = (read - 1) as usize;
    if rows.len() > wanted {
        rows.truncate(wanted);
        rows.last().map(|r| encode_cursor(seq(r)))
    } else {
        None
    }
}

/// The opaque cursor of history and audit pages.
#[must_use]
pub fn encode_cursor(seq: i64) -> String {
    format!("cur_{seq}")
}

/// Reads a cursor made by [`encode_cursor`].
#[must_use]
pub fn decode_cursor(raw: &str) -> Option<i64> {
    raw.strip_prefix("cur_")
        .filter(|digits| {
            !digits.is_empty() && digits.len() <= 18 && digits.bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|digits| digits.parse().ok())
}
