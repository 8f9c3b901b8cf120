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
        /// until the next flush; as copies those were two allocations per request whose
        /// memory was cold by the time it was reused.
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
/// Inline because every history row holds one until the next flush: as a heap string
/// that was an allocation per request, and its memory, freed by the flush on another
/// thread, was cold when a later request reused it. The allocator's load of such a free
/// block was the costliest instruction of the request path under load.
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

/// An account's tier, which sets its rate limits (API.md §Rate limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plan {
    /// 10 per minute, 100 per day.
    Free,
    /// 60 per minute, 1000 per day.
    Pro,
    /// 300 per minute, 10000 per day.
    Scale,
    /// Set per account; unlimited by default.
    Enterprise,
}

impl Plan {
    /// Every plan, in price order.
    pub const ALL: [Self; 4] = [Self::Free, Self::Pro, Self::Scale, Self::Enterprise];

    /// The plan's name on the wire and in storage.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Pro => "pro",
            Self::Scale => "scale",
            Self::Enterprise => "enterprise",
        }
    }

    /// The plan's limits; `custom` applies to enterprise accounts only.
    #[must_use]
    pub const fn limits(self, custom: Limits) -> Limits {
        match self {
            Self::Free => Limits::new(Some(10), Some(100)),
            Self::Pro => Limits::new(Some(60), Some(1000)),
            Self::Scale => Limits::new(Some(300), Some(10_000)),
            Self::Enterprise => custom,
        }
    }
}

impl FromStr for Plan {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or(InvalidValue("must be one of free, pro, scale, enterprise"))
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Requests allowed per rolling minute and per rolling day; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Limits {
    /// At most this many requests in any 60-second span.
    pub per_minute: Option<u32>,
    /// At most this many requests in any 24-hour span.
    pub per_day: Option<u32>,
}

impl Limits {
    /// Builds limits.
    #[must_use]
    pub const fn new(per_minute: Option<u32>, per_day: Option<u32>) -> Self {
        Self {
            per_minute,
            per_day,
        }
    }

    /// Whether neither window limits anything.
    #[must_use]
    pub const fn is_unlimited(&self) -> bool {
        self.per_minute.is_none() && self.per_day.is_none()
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
    /// Derives the status at `now`. A disabled key shows `inactive` even once expired,
    /// matching the order in which authentication checks status, then expiry.
    #[must_use]
    pub fn at(
        stored: StoredStatus,
        expires_at: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Self {
        match stored {
            StoredStatus::Inactive => Self::Inactive,
            StoredStatus::Active if expires_at.is_some_and(|t| t <= now) => Self::Expired,
            StoredStatus::Active => Self::Active,
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
    fn plans_have_the_documented_limits() {
        let custom = Limits::new(Some(5), None);
        assert_eq!(Plan::Free.limits(custom), Limits::new(Some(10), Some(100)));
        assert_eq!(Plan::Pro.limits(custom), Limits::new(Some(60), Some(1000)));
        assert_eq!(
            Plan::Scale.limits(custom),
            Limits::new(Some(300), Some(10_000))
        );
        assert_eq!(Plan::Enterprise.limits(custom), custom);
        assert!(Plan::Enterprise.limits(Limits::default()).is_unlimited());
        assert_eq!("pro".parse::<Plan>().unwrap(), Plan::Pro);
        assert!("gold".parse::<Plan>().is_err());
    }
}
