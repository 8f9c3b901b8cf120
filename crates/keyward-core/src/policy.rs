//! Key policies (API.md §Key policies): a key's own rate limits, its credits, the
//! addresses it may be used from and its expiry after inactivity. Each value is parsed
//! from its wire form here, once; storage keeps the same form ([`KeyPolicies::to_json`]).
//! The checks themselves run on the request path: address matching here
//! ([`AllowedIps::allows`], [`client_address`]), windows and balances in
//! `keyward-ratelimit`.

use std::net::IpAddr;

pub use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::{Duration, OffsetDateTime};

use crate::model::{InvalidValue, Limits};

/// Largest per-key window limit and credit amount: a billion.
pub const MAX_POLICY_NUMBER: u64 = 1_000_000_000;
/// Most entries of `allowed_ips`.
pub const MAX_ALLOWED_IPS: usize = 100;
/// Longest `expire_after_inactive_days`: ten years.
pub const MAX_INACTIVE_DAYS: u16 = 3650;
/// Largest `cost` of one request.
pub const MAX_COST: u32 = 1000;

/// When credits are refilled: at the start of each UTC day or month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefillInterval {
    /// At 00:00 UTC every day.
    Day,
    /// At 00:00 UTC on the first of every month.
    Month,
}

impl RefillInterval {
    /// The number of the UTC day or month `now` falls in; a refill is due whenever it
    /// differs from the period of the last refill. Months count from year 0.
    #[must_use]
    pub fn period_of(self, now: OffsetDateTime) -> i64 {
        match self {
            Self::Day => now.unix_timestamp().div_euclid(86_400),
            Self::Month => i64::from(now.year()) * 12 + i64::from(u8::from(now.month())) - 1,
        }
    }

    /// The start of the period after `now`'s: when the next refill is due.
    #[must_use]
    pub fn next_start(self, now: OffsetDateTime) -> OffsetDateTime {
        let midnight = now.replace_time(time::Time::MIDNIGHT);
        match self {
            Self::Day => midnight + Duration::days(1),
            Self::Month => {
                let (year, month) = match now.month() {
                    time::Month::December => (now.year() + 1, time::Month::January),
                    m => (now.year(), m.next()),
                };
                time::Date::from_calendar_date(year, month, 1)
                    .map_or(midnight, |d| d.midnight().assume_utc())
            }
        }
    }
}

/// A refill: the balance becomes `amount` at each period's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refill {
    /// The balance after a refill, 1 to a billion.
    pub amount: u64,
    /// When refills happen.
    pub interval: RefillInterval,
}

/// A key's credits as set by a caller: the balance it starts from and its refill. The
/// live balance is the limiter's; `generation` tells it when a caller set the balance
/// again (the key's version at that change), so the limiter starts over from
/// `remaining`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Credits {
    /// The balance when set, 0 to a billion.
    pub remaining: u64,
    /// The refill, if any.
    pub refill: Option<Refill>,
    /// The key version that set this balance (storage only, never on the wire).
    #[serde(default)]
    pub generation: i64,
    /// When this balance was set, in unix seconds (storage only): refills count from
    /// the period it was set in.
    #[serde(default)]
    pub set_at: i64,
}

impl Credits {
    /// Parses the wire form `{"remaining": N, "refill": {"amount": M, "interval": ...} | null}`.
    ///
    /// # Errors
    /// [`InvalidValue`] naming what is wrong.
    pub fn parse(value: Value) -> Result<Self, InvalidValue> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wire {
            remaining: u64,
            #[serde(default)]
            refill: Option<Refill>,
        }
        let wire = from_object::<Wire>(value).ok_or(InvalidValue(
            "must be {\"remaining\": 0 to 1000000000, \"refill\": {\"amount\": 1 to \
                 1000000000, \"interval\": \"day\" or \"month\"} or null}",
        ))?;
        if wire.remaining > MAX_POLICY_NUMBER {
            return Err(InvalidValue("remaining must be from 0 to 1000000000"));
        }
        if let Some(refill) = wire.refill
            && !(1..=MAX_POLICY_NUMBER).contains(&refill.amount)
        {
            return Err(InvalidValue("refill.amount must be from 1 to 1000000000"));
        }
        Ok(Self {
            remaining: wire.remaining,
            refill: wire.refill,
            generation: 0,
            set_at: 0,
        })
    }
}

/// `value` read as the wire object `T`, or `None` if it is not one: only a JSON object
/// (serde would also fill a struct from an array of its fields).
fn from_object<T: serde::de::DeserializeOwned>(value: Value) -> Option<T> {
    value
        .is_object()
        .then(|| serde_json::from_value(value).ok())
        .flatten()
}

/// Parses a key's `rate_limit`: `{"per_minute": N | null, "per_day": N | null}`, each 1
/// to a billion, at least one set.
///
/// # Errors
/// [`InvalidValue`] naming what is wrong.
pub fn parse_rate_limit(value: Value) -> Result<Limits, InvalidValue> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wire {
        #[serde(default)]
        per_minute: Option<u64>,
        #[serde(default)]
        per_day: Option<u64>,
    }
    let wire = from_object::<Wire>(value).ok_or(InvalidValue(
        "must be {\"per_minute\": N or null, \"per_day\": N or null}",
    ))?;
    let bounded = |n: Option<u64>| match n {
        None => Ok(None),
        Some(n) if (1..=MAX_POLICY_NUMBER).contains(&n) => Ok(u32::try_from(n).ok()),
        Some(_) => Err(InvalidValue(
            "per_minute and per_day must be from 1 to 1000000000",
        )),
    };
    let limits = Limits::new(bounded(wire.per_minute)?, bounded(wire.per_day)?);
    if limits.is_unlimited() {
        return Err(InvalidValue(
            "must set per_minute or per_day (null removes the rate limit)",
        ));
    }
    Ok(limits)
}

/// The addresses a key may be used from: 1 to 100 IPv4/IPv6 addresses or CIDR ranges.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AllowedIps(Vec<IpNet>);

impl AllowedIps {
    /// Parses a JSON array of addresses and ranges, as given (a bare address is its own
    /// one-address range; host bits of a range are kept as written).
    ///
    /// # Errors
    /// [`InvalidValue`] naming what is wrong.
    pub fn parse(value: &Value) -> Result<Self, InvalidValue> {
        let Value::Array(items) = value else {
            return Err(InvalidValue(
                "must be an array of IP addresses or CIDR ranges",
            ));
        };
        if items.is_empty() || items.len() > MAX_ALLOWED_IPS {
            return Err(InvalidValue("must hold 1 to 100 addresses or ranges"));
        }
        items
            .iter()
            .map(|item| {
                item.as_str().and_then(parse_net).ok_or(InvalidValue(
                    "each entry must be an IP address or CIDR range",
                ))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Parses the ranges of `--trusted-proxies` (comma-separated; none for empty text).
    ///
    /// # Errors
    /// [`InvalidValue`] for an entry that is not an address or range.
    pub fn parse_list(text: &str) -> Result<Vec<IpNet>, InvalidValue> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| parse_net(s).ok_or(InvalidValue("not an IP address or CIDR range")))
            .collect()
    }

    /// Whether `addr` is in one of the ranges.
    #[must_use]
    pub fn allows(&self, addr: IpAddr) -> bool {
        contains(&self.0, addr)
    }

    /// The entries as written, for the wire and storage.
    #[must_use]
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

/// An address or CIDR range; an address alone is a range of one.
#[must_use]
pub fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Whether one of `nets` holds `addr` (an IPv4-mapped IPv6 address counts as its IPv4).
fn contains(nets: &[IpNet], addr: IpAddr) -> bool {
    let addr = addr.to_canonical();
    nets.iter().any(|net| net.contains(&addr))
}

/// The client's address (API.md §Key policies): the TCP `peer`, or, when the peer is a
/// trusted proxy, the right-most `x-forwarded-for` entry that is not one (the entries
/// of every header, in order). `None` when that entry is not an address: nothing can
/// be said of the client then, and no allowlist admits it. When every entry is trusted,
/// the left-most one.
#[must_use]
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    if !contains(trusted, peer) {
        return Some(peer.to_canonical());
    }
    let mut last = peer.to_canonical();
    for entry in forwarded_for.rev().flat_map(|h| h.rsplit(',')) {
        let addr: IpAddr = entry.trim().parse().ok()?;
        if !contains(trusted, addr) {
            return Some(addr.to_canonical());
        }
        last = addr.to_canonical();
    }
    Some(last)
}

/// Parses `expire_after_inactive_days`: 1 to 3650.
///
/// # Errors
/// [`InvalidValue`] outside that range.
pub fn parse_inactive_days(value: &Value) -> Result<u16, InvalidValue> {
    value
        .as_u64()
        .filter(|d| (1..=u64::from(MAX_INACTIVE_DAYS)).contains(d))
        .and_then(|d| u16::try_from(d).ok())
        .ok_or(InvalidValue("must be a whole number from 1 to 3650"))
}

/// When a key stops authenticating: the earlier of its `expires_at` and the end of its
/// allowed inactivity (its last use, or its creation if never used, plus the days).
/// [`crate::KeyStatus::at`] of this is the one status definition, for both.
#[must_use]
pub fn expiry(
    expires_at: Option<OffsetDateTime>,
    inactive_days: Option<u16>,
    last_used: Option<OffsetDateTime>,
    created_at: OffsetDateTime,
) -> Option<OffsetDateTime> {
    let idle_end =
        inactive_days.map(|d| last_used.unwrap_or(created_at) + Duration::days(i64::from(d)));
    match (expires_at, idle_end) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A key's policies that travel with it in one stored JSON object: its own rate limit,
/// credits and allowed addresses (`expire_after_inactive_days` has a column of its own,
/// since the storage's status filter reads it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPolicies {
    /// This key's own windows, on top of the account's.
    pub rate_limit: Option<Limits>,
    /// Its credits.
    pub credits: Option<Credits>,
    /// Where it may be used from.
    pub allowed_ips: Option<AllowedIps>,
}

#[derive(Serialize, Deserialize, Default)]
struct Stored {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limit: Option<StoredLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credits: Option<Credits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allowed_ips: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
struct StoredLimits {
    per_minute: Option<u32>,
    per_day: Option<u32>,
}

impl KeyPolicies {
    /// Serialised form, for storage.
    #[must_use]
    pub fn to_json(&self) -> String {
        let stored = Stored {
            rate_limit: self.rate_limit.map(|l| StoredLimits {
                per_minute: l.per_minute,
                per_day: l.per_day,
            }),
            credits: self.credits,
            allowed_ips: self.allowed_ips.as_ref().map(AllowedIps::to_strings),
        };
        serde_json::to_string(&stored).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Reads back what [`KeyPolicies::to_json`] stored.
    ///
    /// # Errors
    /// [`InvalidValue`] if it does not decode (a corrupt row).
    pub fn from_stored(raw: &str) -> Result<Self, InvalidValue> {
        let stored: Stored =
            serde_json::from_str(raw).map_err(|_| InvalidValue("stored policies"))?;
        let allowed_ips = stored
            .allowed_ips
            .map(|ips| AllowedIps::parse(&Value::from(ips)))
            .transpose()?;
        Ok(Self {
            rate_limit: stored
                .rate_limit
                .map(|l| Limits::new(l.per_minute, l.per_day)),
            credits: stored.credits,
            allowed_ips,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    #[test]
    fn rate_limits_need_one_window_in_range() {
        assert_eq!(
            parse_rate_limit(json!({"per_minute": 3})).unwrap(),
            Limits::new(Some(3), None)
        );
        assert_eq!(
            parse_rate_limit(json!({"per_minute": null, "per_day": 5})).unwrap(),
            Limits::new(None, Some(5))
        );
        for bad in [
            json!({}),
            json!({"per_minute": null, "per_day": null}),
            json!({"per_minute": 0}),
            json!({"per_minute": -1}),
            json!({"per_minute": 1_000_000_001_u64}),
            json!({"per_minute": 1.5}),
            json!({"per_hour": 1}),
            json!([1]),
            json!("3/min"),
        ] {
            assert!(parse_rate_limit(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn credits_are_a_balance_and_an_optional_refill() {
        let c = Credits::parse(json!({"remaining": 5})).unwrap();
        assert_eq!((c.remaining, c.refill), (5, None));
        let c =
            Credits::parse(json!({"remaining": 0, "refill": {"amount": 10, "interval": "month"}}))
                .unwrap();
        assert_eq!(
            c.refill,
            Some(Refill {
                amount: 10,
                interval: RefillInterval::Month
            })
        );
        for bad in [
            json!({}),
            json!({"remaining": -1}),
            json!({"remaining": 1_000_000_001_u64}),
            json!({"remaining": 1, "refill": {"amount": 0, "interval": "day"}}),
            json!({"remaining": 1, "refill": {"amount": 1, "interval": "week"}}),
            json!({"remaining": 1, "refill": {"amount": 1}}),
            json!({"remaining": 1, "generation": 4}),
            json!({"remaining": 1, "set_at": 4}),
            json!(5),
        ] {
            assert!(Credits::parse(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowed_ips_match_addresses_and_ranges() {
        let ips = AllowedIps::parse(&json!(["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"])).unwrap();
        assert!(ips.allows("10.1.2.3".parse().unwrap()));
        assert!(ips.allows("::ffff:10.1.2.3".parse().unwrap()));
        assert!(ips.allows("192.0.2.7".parse().unwrap()));
        assert!(ips.allows("2001:db8::1".parse().unwrap()));
        assert!(!ips.allows("127.0.0.1".parse().unwrap()));
        assert!(!ips.allows("192.0.2.8".parse().unwrap()));
        assert_eq!(
            ips.to_strings(),
            ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]
        );
        let hundred: Vec<String> = (0..100).map(|i| format!("10.0.0.{i}")).collect();
        assert!(AllowedIps::parse(&json!(hundred)).is_ok());
        let too_many: Vec<String> = (0..101).map(|i| format!("10.0.0.{i}")).collect();
        for bad in [
            json!([]),
            json!(too_many),
            json!(["10.0.0.0/33"]),
            json!(["example.com"]),
            json!([7]),
            json!("10.0.0.0/8"),
        ] {
            assert!(AllowedIps::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_forwarded_address() {
        let trusted = AllowedIps::parse_list("127.0.0.0/8, 192.168.0.0/16").unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let local = ip("127.0.0.1");
        // An untrusted peer is the client, whatever it forwards.
        assert_eq!(
            client_address(ip("203.0.113.9"), ["10.1.2.3"].into_iter(), &trusted),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            client_address(local, ["10.1.2.3"].into_iter(), &trusted),
            Some(ip("10.1.2.3"))
        );
        // A client-written entry left of the first untrusted one is ignored.
        assert_eq!(
            client_address(
                local,
                ["6.6.6.6, 10.1.2.3", "192.168.1.1"].into_iter(),
                &trusted
            ),
            Some(ip("10.1.2.3"))
        );
        assert_eq!(
            client_address(local, ["192.168.1.1"].into_iter(), &trusted),
            Some(ip("192.168.1.1"))
        );
        assert_eq!(
            client_address(local, std::iter::empty(), &trusted),
            Some(local)
        );
        assert_eq!(
            client_address(local, ["garbage"].into_iter(), &trusted),
            None
        );
        assert_eq!(
            client_address(local, ["10.1.2.3"].into_iter(), &[]),
            Some(local)
        );
    }

    #[test]
    fn inactivity_counts_from_the_last_use_or_creation() {
        let created = datetime!(2026-01-01 0:00 UTC);
        let used = Some(datetime!(2026-01-10 0:00 UTC));
        assert_eq!(
            expiry(None, Some(2), None, created),
            Some(datetime!(2026-01-03 0:00 UTC))
        );
        assert_eq!(
            expiry(None, Some(2), used, created),
            Some(datetime!(2026-01-12 0:00 UTC))
        );
        let soon = Some(datetime!(2026-01-11 0:00 UTC));
        assert_eq!(expiry(soon, Some(2), used, created), soon);
        assert_eq!(expiry(soon, None, used, created), soon);
        assert_eq!(expiry(None, None, used, created), None);
        assert!(parse_inactive_days(&json!(0)).is_err());
        assert!(parse_inactive_days(&json!(3651)).is_err());
        assert!(parse_inactive_days(&json!("1")).is_err());
        assert_eq!(parse_inactive_days(&json!(3650)), Ok(3650));
    }

    #[test]
    fn refill_periods_are_utc_days_and_months() {
        let t = datetime!(2026-12-31 23:59:59 UTC);
        assert_eq!(
            RefillInterval::Day.next_start(t),
            datetime!(2027-01-01 0:00 UTC)
        );
        assert_eq!(
            RefillInterval::Month.next_start(t),
            datetime!(2027-01-01 0:00 UTC)
        );
        let next = RefillInterval::Month.next_start(t);
        assert_eq!(
            RefillInterval::Month.period_of(next),
            RefillInterval::Month.period_of(t) + 1
        );
        assert_eq!(
            RefillInterval::Day.period_of(next),
            RefillInterval::Day.period_of(t) + 1
        );
        assert_eq!(
            RefillInterval::Month.next_start(datetime!(2026-02-10 5:00 UTC)),
            datetime!(2026-03-01 0:00 UTC)
        );
    }

    #[test]
    fn policies_read_back_as_stored() {
        let policies = KeyPolicies {
            rate_limit: Some(Limits::new(Some(3), None)),
            credits: Some(Credits {
                remaining: 5,
                refill: Some(Refill {
                    amount: 7,
                    interval: RefillInterval::Day,
                }),
                generation: 3,
                set_at: 1_700_000_000,
            }),
            allowed_ips: Some(AllowedIps::parse(&json!(["10.0.0.0/8"])).unwrap()),
        };
        assert_eq!(
            KeyPolicies::from_stored(&policies.to_json()).unwrap(),
            policies
        );
        assert_eq!(
            KeyPolicies::from_stored("{}").unwrap(),
            KeyPolicies::default()
        );
        assert_eq!(KeyPolicies::default().to_json(), "{}");
    }
}
