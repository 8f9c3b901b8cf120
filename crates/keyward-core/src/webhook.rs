//! Webhooks' rules (API.md §Webhooks): event types, target URLs and the addresses they may
//! reach, subscription secrets, Standard Webhooks signatures and the retry schedule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::{InvalidValue, RandomSource};

/// The kinds of event a subscription can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// A key was created.
    KeyCreated,
    /// A key was updated (name, scopes, status, expiry or metadata).
    KeyUpdated,
    /// A key got a new secret.
    KeyRotated,
    /// A key was revoked.
    KeyRevoked,
    /// A key was reported leaked and revoked or disabled.
    KeyLeaked,
    /// A key expires in 7 days, or in 1 day.
    KeyExpiring,
    /// A key's `expires_at` passed.
    KeyExpired,
    /// A charge took a key's credits to 0 (or a request found them at 0).
    CreditsExhausted,
    /// An account was created (operators' subscriptions only).
    AccountCreated,
    /// An account's name, plan, overrides, metadata or external id changed.
    AccountUpdated,
    /// An account was suspended.
    AccountSuspended,
    /// An account was resumed.
    AccountResumed,
    /// An account was deleted.
    AccountDeleted,
}

impl EventType {
    /// Every type an operator's subscription may name: an account's
    /// ([`Self::ACCOUNT_TYPES`], listed first), then the accounts' own.
    pub const OPERATOR_TYPES: &'static [Self] = &[
        Self::KeyCreated,
        Self::KeyUpdated,
        Self::KeyRotated,
        Self::KeyRevoked,
        Self::KeyLeaked,
        Self::KeyExpiring,
        Self::KeyExpired,
        Self::CreditsExhausted,
        Self::AccountCreated,
        Self::AccountUpdated,
        Self::AccountSuspended,
        Self::AccountResumed,
        Self::AccountDeleted,
    ];

    /// Every type an account's subscription may name: the key and credit types, the
    /// first eight of [`Self::OPERATOR_TYPES`].
    pub const ACCOUNT_TYPES: &'static [Self] = Self::OPERATOR_TYPES.split_at(8).0;

    /// Its name on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::KeyCreated => "key.created",
            Self::KeyUpdated => "key.updated",
            Self::KeyRotated => "key.rotated",
            Self::KeyRevoked => "key.revoked",
            Self::KeyLeaked => "key.leaked",
            Self::KeyExpiring => "key.expiring",
            Self::KeyExpired => "key.expired",
            Self::CreditsExhausted => "credits.exhausted",
            Self::AccountCreated => "account.created",
            Self::AccountUpdated => "account.updated",
            Self::AccountSuspended => "account.suspended",
            Self::AccountResumed => "account.resumed",
            Self::AccountDeleted => "account.deleted",
        }
    }

    /// The type named `raw`.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        Self::OPERATOR_TYPES
            .iter()
            .copied()
            .find(|t| t.as_str() == raw)
    }
}

/// Parses a subscription's `events`: at least one type of `allowed`
/// ([`EventType::ACCOUNT_TYPES`] or [`EventType::OPERATOR_TYPES`]), no duplicates, order
/// kept.
///
/// # Errors
/// Which rule the list breaks.
pub fn parse_events(raw: &[String], allowed: &[EventType]) -> Result<Vec<EventType>, InvalidValue> {
    if raw.is_empty() {
        return Err(InvalidValue("must name at least one event type"));
    }
    let mut out = Vec::with_capacity(raw.len());
    for name in raw {
        let t = EventType::parse(name)
            .filter(|t| allowed.contains(t))
            .ok_or(InvalidValue("unknown event type"))?;
        if out.contains(&t) {
            return Err(InvalidValue("names an event type twice"));
        }
        out.push(t);
    }
    Ok(out)
}

/// Longest accepted URL.
pub const MAX_URL_LEN: usize = 2048;

/// A subscription's target: an absolute `http://` or `https://` URL with a host and no
/// credentials. Which addresses it may reach is [`address_allowed`]'s question, asked of
/// every address its host resolves to, at subscription and at each delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(url::Url);

impl WebhookUrl {
    /// Parses and checks a target URL.
    ///
    /// # Errors
    /// Why it is not a target URL.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.len() > MAX_URL_LEN {
            return Err(InvalidValue("must be at most 2048 characters"));
        }
        let url = url::Url::parse(raw).map_err(|_| InvalidValue("must be an absolute URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(InvalidValue("must be an http:// or https:// URL"));
        }
        if url.host().is_none() {
            return Err(InvalidValue("must name a host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(InvalidValue("must not carry credentials"));
        }
        Ok(Self(url))
    }

    /// The URL as given (normalised by the URL parser).
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The host: a name, or an address literal.
    #[must_use]
    pub fn host(&self) -> Host<'_> {
        match self.0.host() {
            Some(url::Host::Ipv4(ip)) => Host::Ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Host::Ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => Host::Name(name),
            None => Host::Name(""),
        }
    }

    /// The port, explicit or the scheme's.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.0.port_or_known_default().unwrap_or(443)
    }
}

/// The host of a [`WebhookUrl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    /// A name, to resolve.
    Name(&'a str),
    /// An address literal.
    Ip(IpAddr),
}

/// Whether a webhook may be delivered to `ip` (API.md §Webhooks): only publicly routable
/// unicast addresses. Refused: unspecified, loopback, private, shared (CGNAT), link-local,
/// multicast, broadcast, documentation, benchmarking and reserved ranges of IPv4; for
/// IPv6 everything outside global unicast (`2000::/3`), its documentation, benchmarking,
/// ORCHID and Teredo ranges, and addresses that embed an IPv4 one (mapped, NAT64, 6to4)
/// unless the embedded address is allowed.
#[must_use]
pub fn address_allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_allowed(v4),
        IpAddr::V6(v6) => v6_allowed(v6),
    }
}

fn v4_allowed(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0 // "this network", unspecified
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast, reserved, broadcast
    !refused
}

fn v6_allowed(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_allowed(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96): the IPv4 address in its last 32 bits.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return v4_allowed(embedded_v4(s[6], s[7]));
    }
    // 6to4 (2002::/16): the IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        return v4_allowed(embedded_v4(s[1], s[2]));
    }
    let global_unicast = (s[0] & 0xe000) == 0x2000;
    let refused = !global_unicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] == 0) // Teredo
        || (s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0) // benchmarking
        || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0010) // ORCHID
        || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0020) // ORCHIDv2
        || (s[0] == 0x3fff && s[1] < 0x1000); // documentation (RFC 9637)
    !refused
}

fn embedded_v4(high: u16, low: u16) -> Ipv4Addr {
    let [a, b] = high.to_be_bytes();
    let [c, d] = low.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// Prefix of a subscription secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new subscription secret: `whsec_` and the base64 of 32 random bytes (Standard
/// Webhooks: the signing key is the decoded bytes).
pub fn generate_secret(rng: &mut impl RandomSource) -> String {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The `webhook-signature` header of a delivery: `v1,` and the base64 HMAC-SHA256, keyed
/// by the secret's decoded bytes, of `{id}.{timestamp}.{body}`. `None` for a secret that
/// is not `whsec_` and base64.
#[must_use]
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix(SECRET_PREFIX)?).ok()?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The waits before the 2nd to 8th attempts (API.md §Webhooks): after the last, the
/// delivery is failed.
pub const RETRY_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// How long an attempt may take: a 2xx within it is success.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_and_reserved_addresses_are_refused_and_public_ones_allowed() {
        let refused = [
            "0.0.0.0",
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "fe80::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "2001:db8::1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001::1",
            "::127.0.0.1",
            "fec0::1",
            "100::1",
        ];
        for ip in refused {
            assert!(
                !address_allowed(ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))),
                "{ip}"
            );
        }
        let allowed = [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ];
        for ip in allowed {
            let parsed: IpAddr = ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            assert!(address_allowed(parsed), "{ip}");
        }
    }

    #[test]
    fn target_urls_are_absolute_http_or_https_with_a_host_and_no_credentials() {
        assert!(WebhookUrl::parse("https://example.com/hook").is_ok());
        assert!(WebhookUrl::parse("http://127.0.0.1:8080/x").is_ok());
        for bad in [
            "ftp://example.com",
            "file:///etc/passwd",
            "/relative",
            "https://u:p@example.com",
            "example.com",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(WebhookUrl::parse(&format!("https://e.com/{}", "a".repeat(2048))).is_err());
    }

    #[test]
    fn a_signature_is_the_standard_webhooks_hmac_of_id_timestamp_and_body() {
        // The example of the Standard Webhooks specification's reference libraries.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(
            signature.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(sign("nope", "id", 1, b""), None);
    }

    #[test]
    fn event_lists_need_known_types_without_repeats() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let account = EventType::ACCOUNT_TYPES;
        let operator = EventType::OPERATOR_TYPES;
        assert!(parse_events(&names(&["key.created", "key.revoked"]), account).is_ok());
        assert!(parse_events(&names(&[]), account).is_err());
        assert!(parse_events(&names(&["key.created", "key.created"]), account).is_err());
        assert!(parse_events(&names(&["key.nope"]), account).is_err());
        assert!(parse_events(&names(&["account.created"]), account).is_err());
        assert!(parse_events(&names(&["account.created", "key.created"]), operator).is_ok());
    }

    #[test]
    fn an_operator_may_subscribe_to_every_type_an_account_may_and_each_parses() {
        for t in EventType::ACCOUNT_TYPES {
            assert!(EventType::OPERATOR_TYPES.contains(t), "{}", t.as_str());
        }
        for t in EventType::OPERATOR_TYPES {
            assert_eq!(EventType::parse(t.as_str()), Some(*t));
            assert_eq!(
                EventType::ACCOUNT_TYPES.contains(t),
                !t.as_str().starts_with("account."),
                "{}",
                t.as_str()
            );
        }
    }
}
