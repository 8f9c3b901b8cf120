//! Ids, names, metadata, plans and statuses: the small value types of the contract.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use time::OffsetDateTime;
use ulid::Ulid;

/// Why an input value was refused. The HTTP layer names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub &'static str);

macro_rules! ulid_id {
    ($name:ident, $prefix:literal, $doc:literal) => {
        #[doc = $doc]
        ///
        /// Shared text: a clone is a reference count, not an allocation. Every metered
        /// request clones its key's id and account id into the history row, which lives
        /// until the next flush; copies would be two allocations per request, freed by the
        /// flush on another thread and cold by the time a later request reuses them.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The id's textual prefix. Wire format: stored ids carry it.
            pub const PREFIX: &'static str = $prefix;

            /// Builds the id of a ULID; the caller makes the ULID (clock and RNG stay
            /// outside the core).
            #[must_use]
            pub fn from_ulid(ulid: Ulid) -> Self {
                Self(format!("{}{}", $prefix, ulid).into())
            }

            /// Parses an id: the prefix and a canonical 26-character ULID.
            ///
            /// # Errors
            /// [`InvalidValue`] for anything else (hostile path segments included).
            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                let ulid = raw
                    .strip_prefix($prefix)
                    .filter(|rest| rest.len() == 26)
                    .and_then(|rest| Ulid::from_string(rest).ok())
                    .ok_or(InvalidValue("not a valid id"))?;
                // Only the canonical (upper-case) spelling is an id, so one key has one id.
                if ulid.to_string() != raw[$prefix.len()..] {
                    return Err(InvalidValue("not a valid id"));
                }
                Ok(Self(raw.into()))
            }

            /// Rebuilds an id read back from storage, where it was written by this type.
            #[must_use]
            pub fn from_trusted(raw: String) -> Self {
                Self(raw.into())
            }

            /// The id as text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

ulid_id!(
    KeyId,
    "key_",
    "Public id of an API key (`key_01J…`), never derived from the secret."
);
ulid_id!(AccountId, "acct_", "Id of an account (`acct_01J…`).");
ulid_id!(
    OperatorId,
    "op_",
    "Id of an operator: the holder of an operator key (`op_01J…`)."
);
ulid_id!(
    WebhookId,
    "wh_",
    "Id of a webhook subscription (`wh_01J…`)."
);
ulid_id!(
    EventId,
    "msg_",
    "Id of an event sent to subscriptions (`msg_01J…`): the `webhook-id` of each delivery."
);

/// Longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// A key's name: 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyName(String);

impl KeyName {
    /// Parses a name.
    ///
    /// # Errors
    /// [`InvalidValue`] if empty, too long or holding control characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let chars = raw.chars().count();
        if chars == 0 {
            return Err(InvalidValue("must be 1 to 100 characters"));
        }
        if chars > MAX_NAME_CHARS {
            return Err(InvalidValue("must be 1 to 100 characters"));
        }
        if raw.chars().any(char::is_control) {
            return Err(InvalidValue("must not contain control characters"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Longest request id, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// A request's id: 1 to 64 of `[A-Za-z0-9._-]`, echoed from the client or made by the
/// server (`req_` and a ULID), held inline.
///
/// Inline because every history row holds one until the next flush: a heap string would
/// be an allocation per request whose memory, freed by the flush on another thread, is
/// cold when a later request reuses it, and the allocator's load of such a free block is
/// then the costliest instruction of the request path under load.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    len: u8,
    bytes: [u8; MAX_REQUEST_ID_LEN],
}

impl RequestId {
    /// `text` if it is a well-formed request id.
    #[must_use]
    pub fn parse(text: &[u8]) -> Option<Self> {
        let well_formed = (1..=MAX_REQUEST_ID_LEN).contains(&text.len())
            && text
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        well_formed.then(|| {
            let mut bytes = [0; MAX_REQUEST_ID_LEN];
            bytes[..text.len()].copy_from_slice(text);
            Self {
                // At most 64: checked above.
                len: u8::try_from(text.len()).unwrap_or(u8::MAX),
                bytes,
            }
        })
    }

    /// The id the server gives a request: `req_` and the ULID.
    #[must_use]
    pub fn generated(ulid: Ulid) -> Self {
        let mut text = [0; ulid::ULID_LEN];
        let text = ulid.array_to_str(&mut text);
        let mut bytes = [0; MAX_REQUEST_ID_LEN];
        bytes[..4].copy_from_slice(b"req_");
        bytes[4..4 + text.len()].copy_from_slice(text.as_bytes());
        Self {
            len: 4 + ulid::ULID_LEN as u8,
            bytes,
        }
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only ASCII gets in (see the constructors), so this never falls back.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest metadata object, serialised, in bytes.
pub const MAX_METADATA_BYTES: usize = 4096;

/// A key's metadata: a JSON object of at most 4 KiB serialised.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata(serde_json::Map<String, serde_json::Value>);

impl Metadata {
    /// Checks a JSON value.
    ///
    /// # Errors
    /// [`InvalidValue`] if it is not an object or is too large.
    pub fn parse(value: serde_json::Value) -> Result<Self, InvalidValue> {
        let serde_json::Value::Object(map) = value else {
            return Err(InvalidValue("must be a JSON object"));
        };
        let size = serde_json::to_vec(&map).map_or(usize::MAX, |v| v.len());
        if size > MAX_METADATA_BYTES {
            return Err(InvalidValue("must be at most 4096 bytes serialised"));
        }
        Ok(Self(map))
    }

    /// The object.
    #[must_use]
    pub fn as_map(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.0
    }

    /// Serialised form, for storage.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::Value::Object(self.0.clone()).to_string()
    }

    /// Reads back what [`Metadata::to_json`] stored. Anything but an object reads as empty.
    #[must_use]
    pub fn from_stored(raw: &str) -> Self {
        match serde_json::from_str(raw) {
            Ok(serde_json::Value::Object(map)) => Self(map),
            _ => Self::default(),
        }
    }
}

/// Longest plan name.
pub const MAX_PLAN_NAME_LEN: usize = 32;

/// The name of an account's plan (API.md §Plans, rate limits, quotas and credits). Plans
/// are data: the store's `plan` table gives each name its limits, and starts with
/// KonPro's four (`free`, `pro`, `scale`, `enterprise`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlanName(String);

impl PlanName {
    /// The unlimited plan, given to the bootstrap account and by default to new ones.
    pub const ENTERPRISE: &'static str = "enterprise";

    /// Parses a plan name: 1 to 32 of `[a-z0-9_-]`, starting with a letter, so that it
    /// reads the same in a URL path, a CLI argument and a log line.
    ///
    /// # Errors
    /// [`InvalidValue`] for anything else.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let bytes = raw.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= MAX_PLAN_NAME_LEN
            && bytes[0].is_ascii_lowercase()
            && bytes
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidValue(
                "must be 1 to 32 of a-z, 0-9, _ and -, starting with a letter",
            ))
        }
    }

    /// The `enterprise` plan.
    #[must_use]
    pub fn enterprise() -> Self {
        Self(Self::ENTERPRISE.to_owned())
    }

    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PlanName {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for PlanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Requests allowed per rolling minute, per rolling day and per calendar month (UTC);
/// `None` is unlimited. As an account's overrides, `None` keeps the plan's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Limits {
    /// At most this many requests in any 60-second span.
    pub per_minute: Option<u32>,
    /// At most this many requests in any 24-hour span.
    pub per_day: Option<u32>,
    /// At most this many requests in a calendar month (UTC): the monthly quota.
    pub per_month: Option<u32>,
}

impl Limits {
    /// Builds limits with no monthly quota.
    #[must_use]
    pub const fn new(per_minute: Option<u32>, per_day: Option<u32>) -> Self {
        Self {
            per_minute,
            per_day,
            per_month: None,
        }
    }

    /// The same limits with a monthly quota.
    #[must_use]
    pub const fn with_per_month(self, per_month: Option<u32>) -> Self {
        Self { per_month, ..self }
    }

    /// Whether no window limits anything.
    #[must_use]
    pub const fn is_unlimited(&self) -> bool {
        self.per_minute.is_none() && self.per_day.is_none() && self.per_month.is_none()
    }

    /// A plan's limits with an account's overrides applied: each number the overrides
    /// set replaces the plan's, each they leave `None` is the plan's.
    #[must_use]
    pub const fn overridden_by(self, overrides: Self) -> Self {
        Self {
            per_minute: or(overrides.per_minute, self.per_minute),
            per_day: or(overrides.per_day, self.per_day),
            per_month: or(overrides.per_month, self.per_month),
        }
    }
}

const fn or(first: Option<u32>, then: Option<u32>) -> Option<u32> {
    match first {
        Some(n) => Some(n),
        None => then,
    }
}

/// Whether an account's keys authenticate (API.md §Operator API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AccountStatus {
    /// Its keys work.
    #[default]
    Active,
    /// Its keys get `401` with reason `account_suspended` until it is resumed.
    Suspended,
}

impl AccountStatus {
    /// The status on the wire and in storage.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }
}

impl FromStr for AccountStatus {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "suspended" => Ok(Self::Suspended),
            _ => Err(InvalidValue("must be one of active, suspended")),
        }
    }
}

impl fmt::Display for AccountStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest external id, in characters.
pub const MAX_EXTERNAL_ID_CHARS: usize = 128;

/// The platform's own id of an account (its customer id): 1 to 128 characters, no
/// control characters, unique among accounts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExternalId(String);

impl ExternalId {
    /// Parses an external id.
    ///
    /// # Errors
    /// [`InvalidValue`] if it is empty, longer than 128 characters or holds a control
    /// character.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let chars = raw.chars().count();
        if chars == 0 || chars > MAX_EXTERNAL_ID_CHARS || raw.chars().any(char::is_control) {
            return Err(InvalidValue(
                "must be 1 to 128 characters without control characters",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The status a caller may set on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredStatus {
    /// Authenticates (unless expired).
    Active,
    /// Disabled by a caller; can be re-enabled.
    Inactive,
}

impl StoredStatus {
    /// Every stored status.
    pub const ALL: [Self; 2] = [Self::Active, Self::Inactive];

    /// Name on the wire and in storage.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
        }
    }
}

impl FromStr for StoredStatus {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "inactive" => Ok(Self::Inactive),
            _ => Err(InvalidValue("must be active or inactive")),
        }
    }
}

/// The status a key shows (API.md §Status): `expired` is derived at read time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyStatus {
    /// Authenticates.
    Active,
    /// Disabled by a caller.
    Inactive,
    /// `expires_at` has passed.
    Expired,
}

impl KeyStatus {
    /// Every status a key can show.
    pub const ALL: [Self; 3] = [Self::Active, Self::Inactive, Self::Expired];

    /// Derives the status at `now`: [`KeyStatus::of`] the stored status and
    /// [`has_expired`].
    #[must_use]
    pub fn at(
        stored: StoredStatus,
        expires_at: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Self {
        Self::of(stored, has_expired(expires_at, now))
    }

    /// The status a key shows, from its stored status and whether it has expired. A
    /// disabled key shows `inactive` even once expired, matching the order in which
    /// authentication checks status, then expiry. The storage's status filter is built
    /// from this function, so a listing filtered by status agrees with it.
    #[must_use]
    pub const fn of(stored: StoredStatus, expired: bool) -> Self {
        match (stored, expired) {
            (StoredStatus::Inactive, _) => Self::Inactive,
            (StoredStatus::Active, true) => Self::Expired,
            (StoredStatus::Active, false) => Self::Active,
        }
    }

    /// The first instant after `now` at which [`KeyStatus::at`] gives another status
    /// with nothing written: the expiry of a key active at `now` (it shows `expired`
    /// from then on). `None` when the status holds until the key is changed. Whatever
    /// keeps a rendered status (a cached listing page) is good until this instant.
    #[must_use]
    pub fn next_change(
        stored: StoredStatus,
        expires_at: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Option<OffsetDateTime> {
        match Self::at(stored, expires_at, now) {
            // Active at `now` means no expiry or one still ahead; it takes effect at
            // the expiry instant itself (`at` counts `expires_at <= now` as expired).
            Self::Active => expires_at,
            Self::Inactive | Self::Expired => None,
        }
    }

    /// Name on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
            Self::Expired => "expired",
        }
    }
}

impl FromStr for KeyStatus {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "inactive" => Ok(Self::Inactive),
            "expired" => Ok(Self::Expired),
            _ => Err(InvalidValue("must be one of active, inactive, expired")),
        }
    }
}

/// Whether a key has expired at `now`: from its `expires_at` on (at that very second it
/// no longer authenticates). The one definition of expiry; the storage renders it in SQL
/// for its status filter, next to where it uses [`KeyStatus::of`].
#[must_use]
pub fn has_expired(expires_at: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    expires_at.is_some_and(|t| t <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn request_ids_are_1_to_64_of_their_characters() {
        let ok = RequestId::parse(b"abc-123_X.y").unwrap();
        assert_eq!(ok.as_str(), "abc-123_X.y");
        assert_eq!(format!("{ok:?} {ok}"), "\"abc-123_X.y\" abc-123_X.y");
        let longest = "a".repeat(MAX_REQUEST_ID_LEN);
        assert_eq!(
            RequestId::parse(longest.as_bytes()).unwrap().as_str(),
            longest
        );
        let too_long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        for bad in [
            &b""[..],
            b"a b",
            b"a/b",
            b"caf\xc3\xa9",
            too_long.as_bytes(),
        ] {
            assert!(RequestId::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn generated_request_ids_are_req_and_the_ulid() {
        let ulid = Ulid::from_parts(1_700_000_000_000, 42);
        let id = RequestId::generated(ulid);
        assert_eq!(id.as_str(), format!("req_{ulid}"));
        assert_eq!(RequestId::parse(id.as_str().as_bytes()), Some(id));
    }

    #[test]
    fn ids_parse_only_their_canonical_form() {
        let id = KeyId::from_ulid(Ulid::from_parts(1_700_000_000_000, 42));
        assert_eq!(KeyId::parse(id.as_str()).unwrap(), id);
        let lower = id.as_str().to_ascii_lowercase();
        for bad in [
            "",
            "key_",
            "key-001",
            &lower,
            "acct_01JD0000000000000000000000",
            "key_01JD00000000000000000000000",
            "key_../../etc/passwd",
            "key_' OR 1=1 --",
            "key_%2e%2e",
        ] {
            assert!(KeyId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_are_bounded() {
        assert!(KeyName::parse("Production Key").is_ok());
        assert!(KeyName::parse(&"é".repeat(100)).is_ok());
        assert!(KeyName::parse(&"é".repeat(101)).is_err());
        assert!(KeyName::parse("").is_err());
        assert!(KeyName::parse("a\u{0}b").is_err());
    }

    #[test]
    fn metadata_numbers_read_back_from_storage_as_they_were_accepted() {
        // Found by the `json_body` fuzz target: without correctly rounded float parsing,
        // this number was stored as 1e88 and read back as 1.0000000000000001e88.
        let long = format!("{}{}", "9".repeat(19), "4".repeat(70));
        for number in [
            long.as_str(),
            "1e88",
            "0.1",
            "2.2250738585072014e-308",
            "-0.0",
        ] {
            let raw: serde_json::Value =
                serde_json::from_str(&format!(r#"{{"a":{number}}}"#)).unwrap();
            let accepted = Metadata::parse(raw).unwrap();
            let stored = accepted.to_json();
            assert_eq!(Metadata::from_stored(&stored), accepted, "{number}");
            assert_eq!(Metadata::from_stored(&stored).to_json(), stored, "{number}");
        }
    }

    #[test]
    fn metadata_is_an_object_of_at_most_4_kib() {
        assert!(Metadata::parse(serde_json::json!({"env": "prod"})).is_ok());
        assert!(Metadata::parse(serde_json::json!([1])).is_err());
        assert!(Metadata::parse(serde_json::json!("x")).is_err());
        let big = "x".repeat(4096);
        assert!(Metadata::parse(serde_json::json!({ "k": big })).is_err());
        let fits = "x".repeat(4096 - 8);
        assert!(Metadata::parse(serde_json::json!({ "k": fits })).is_ok());
    }

    #[test]
    fn status_is_derived_in_check_order() {
        let now = datetime!(2026-01-01 0:00 UTC);
        let past = Some(datetime!(2025-01-01 0:00 UTC));
        let future = Some(datetime!(2027-01-01 0:00 UTC));
        assert_eq!(
            KeyStatus::at(StoredStatus::Active, future, now),
            KeyStatus::Active
        );
        assert_eq!(
            KeyStatus::at(StoredStatus::Active, None, now),
            KeyStatus::Active
        );
        assert_eq!(
            KeyStatus::at(StoredStatus::Active, past, now),
            KeyStatus::Expired
        );
        assert_eq!(
            KeyStatus::at(StoredStatus::Active, Some(now), now),
            KeyStatus::Expired
        );
        assert_eq!(
            KeyStatus::at(StoredStatus::Inactive, past, now),
            KeyStatus::Inactive
        );
    }

    #[test]
    fn the_next_status_change_is_the_first_instant_that_shows_another_status() {
        let now = datetime!(2026-01-01 0:00 UTC);
        let instants = [
            None,
            Some(datetime!(2025-01-01 0:00 UTC)),
            Some(now - time::Duration::nanoseconds(1)),
            Some(now),
            Some(now + time::Duration::nanoseconds(1)),
            Some(datetime!(2027-01-01 0:00 UTC)),
        ];
        let never = datetime!(9999-12-31 23:59:59 UTC);
        for stored in [StoredStatus::Active, StoredStatus::Inactive] {
            for expires_at in instants {
                let case = format!("{stored:?}, expires {expires_at:?}");
                let shown = KeyStatus::at(stored, expires_at, now);
                match KeyStatus::next_change(stored, expires_at, now) {
                    Some(change) => {
                        assert!(change > now, "{case}");
                        assert_ne!(KeyStatus::at(stored, expires_at, change), shown, "{case}");
                        let just_before = change - time::Duration::nanoseconds(1);
                        assert_eq!(
                            KeyStatus::at(stored, expires_at, just_before),
                            shown,
                            "{case}"
                        );
                    }
                    None => {
                        assert_eq!(KeyStatus::at(stored, expires_at, never), shown, "{case}");
                    }
                }
            }
        }
        assert_eq!(
            KeyStatus::next_change(StoredStatus::Active, instants[5], now),
            instants[5]
        );
    }

    #[test]
    fn overrides_replace_only_the_numbers_they_set() {
        let plan = Limits::new(Some(10), Some(100));
        let overrides = Limits::default().with_per_month(Some(5));
        assert_eq!(
            plan.overridden_by(overrides),
            Limits::new(Some(10), Some(100)).with_per_month(Some(5))
        );
        assert_eq!(plan.overridden_by(Limits::default()), plan);
        assert_eq!(
            Limits::default().overridden_by(Limits::new(Some(7), None)),
            Limits::new(Some(7), None)
        );
        assert!(!Limits::default().with_per_month(Some(1)).is_unlimited());
        assert!(Limits::default().is_unlimited());
    }

    #[test]
    fn plan_names_external_ids_and_account_statuses_are_checked() {
        for ok in ["free", "a", "team-2024_b", &"p".repeat(32)] {
            assert!(PlanName::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "Pro", "1x", "-x", "a b", "a/b", "é", &"p".repeat(33)] {
            assert!(PlanName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ExternalId::parse("cus_123").is_ok());
        assert!(
            ExternalId::parse(&"é".repeat(128)).is_ok(),
            "characters, not bytes"
        );
        for bad in ["", "a\nb", "\u{7f}", &"x".repeat(129)] {
            assert!(ExternalId::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!("suspended".parse(), Ok(AccountStatus::Suspended));
        assert!("deleted".parse::<AccountStatus>().is_err());
    }
}
