//! Wire types shared by several endpoints. Storage records are never serialised directly.

use keyward_core::timefmt;
use keyward_store::ApiKey;
use serde::{Deserialize, Deserializer, Serialize};
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

/// The API key object of the seed document, plus `hint` and `metadata`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyObject {
    /// Unique, opaque id (`key_01J…`).
    #[schema(example = "key_01JD8X4ZQ5V7W0000000000000")]
    pub key_id: String,
    /// Optional label.
    #[schema(example = "Production Key")]
    pub name: Option<String>,
    /// Permission scopes, in the order given.
    pub scopes: Vec<String>,
    /// When the key last authenticated (lags by at most a second); `null` if never.
    #[schema(format = DateTime)]
    pub last_used: Option<String>,
    /// Creation time.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When the key expires; `null` if never.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Current status.
    pub status: KeyStatusDto,
    /// Display hint of the current secret: prefix, first 4, last 4.
    #[schema(example = "kw_AbCd…wxyz")]
    pub hint: String,
    /// Caller-defined object.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

impl ApiKeyObject {
    /// The wire form of a key at `now` (which decides `expired`).
    #[must_use]
    pub fn new(key: &ApiKey, now: OffsetDateTime) -> Self {
        Self {
            key_id: key.key_id.to_string(),
            name: key.name.as_ref().map(|n| n.as_str().to_owned()),
            scopes: key.scopes.to_strings(),
            last_used: key.last_used.map(timefmt::format),
            created_at: timefmt::format(key.created_at),
            expires_at: key.expires_at.map(timefmt::format),
            status: key.status_at(now).into(),
            hint: key.hint.clone(),
            metadata: key.metadata.as_map().clone(),
        }
    }
}

/// A key object with its secret: the one response that shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyWithSecret {
    /// The key.
    #[serde(flatten)]
    pub key: ApiKeyObject,
    /// The secret. Shown once; store it now.
    #[schema(example = "kw_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AB")]
    pub api_key: String,
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
