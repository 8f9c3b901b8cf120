//! The API key format of API.md §Key format.
//!
//! `<prefix>_<32 random base62 chars><6 base62 chars of CRC32 over the random part>`.
//! Parsing is pure and rejects any other shape, or a wrong checksum, before storage is
//! ever asked (API.md §Authentication: check order). A presented key's prefix only has to
//! be well-formed: the deployment's prefix decides what new keys start with, and keys
//! issued under an earlier prefix keep working after it changes (API.md §Operator
//! interface); the checksum and the stored digest decide the rest.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Base62 alphabet of the random part and the checksum.
/// Wire format: changing it breaks every issued key.
pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of the random part. Wire format: 32 base62 chars carry about 190 bits.
pub const RANDOM_LEN: usize = 32;

/// Length of the base62 CRC32 checksum. Wire format: 62^6 > 2^32, so it always fits.
pub const CHECKSUM_LEN: usize = 6;

/// Longest prefix a deployment may configure.
pub const MAX_PREFIX_LEN: usize = 16;

/// Why a configured key prefix is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a key prefix must be 1 to {MAX_PREFIX_LEN} characters of [a-z0-9], starting with a letter"
)]
pub struct KeyPrefixError;

/// The deployment's key prefix (`kw` by default). `_` separates it from the random part,
/// so it may not contain one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// Parses a prefix: `^[a-z][a-z0-9]{0,15}$`.
    ///
    /// # Errors
    /// [`KeyPrefixError`] for any other string.
    pub fn parse(raw: &str) -> Result<Self, KeyPrefixError> {
        if Self::is_well_formed(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(KeyPrefixError)
        }
    }

    /// The prefix of operator keys: this one followed by `op` (`kwop_…`; API.md §Operator
    /// API), or `None` when that is longer than a prefix may be.
    #[must_use]
    pub fn operator(&self) -> Option<Self> {
        Self::parse(&format!("{}op", self.0)).ok()
    }

    /// The prefix rule, for configured prefixes and presented keys alike.
    fn is_well_formed(raw: &str) -> bool {
        let bytes = raw.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= MAX_PREFIX_LEN
            && bytes[0].is_ascii_lowercase()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    }

    /// The prefix as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        Self("kw".to_owned())
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a presented key string is not a key of this deployment. The variants exist for
/// tests and debugging; the HTTP layer reports all of them as `malformed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// The string does not start with a well-formed prefix and `_`.
    #[error("wrong prefix")]
    WrongPrefix,
    /// The part after the prefix is not 38 base62 characters.
    #[error("wrong length or character")]
    WrongShape,
    /// The checksum does not match the random part.
    #[error("checksum mismatch")]
    BadChecksum,
}

/// A well-formed API key secret. It can't be printed, serialised or compared by
/// accident: `Debug` shows `KeySecret(..)` and revealing it takes [`KeySecret::expose`].
pub struct KeySecret(SecretString);

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeySecret(..)")
    }
}

impl KeySecret {
    /// Generates a new key from `random`, which must be a CSPRNG in production
    /// ([`OsRandom`]).
    pub fn generate(prefix: &KeyPrefix, random: &mut impl RandomSource) -> Self {
        let mut body = String::with_capacity(RANDOM_LEN + CHECKSUM_LEN);
        let mut buf = [0u8; 64];
        while body.len() < RANDOM_LEN {
            random.fill(&mut buf);
            // Rejection sampling: 248 = 4 * 62, so `b % 62` is uniform below it.
            for &b in buf.iter().filter(|&&b| b < 248) {
                if body.len() == RANDOM_LEN {
                    break;
                }
                body.push(char::from(ALPHABET[usize::from(b % 62)]));
            }
        }
        let checksum = checksum(body.as_bytes());
        body.extend(checksum.map(char::from));
        Self(SecretString::from(format!("{}_{body}", prefix.as_str())))
    }

    /// Parses a presented key: a well-formed prefix (any, not only the deployment's
    /// current one), shape and checksum, nothing else.
    ///
    /// # Errors
    /// A [`KeyFormatError`] naming the first rule the string breaks.
    pub fn parse(raw: &str) -> Result<Self, KeyFormatError> {
        Self::check(raw)?;
        Ok(Self(SecretString::from(raw.to_owned())))
    }

    /// The digest of a presented key, after the checks of [`KeySecret::parse`]: what
    /// authentication needs, without copying the secret out of the request.
    ///
    /// # Errors
    /// As [`KeySecret::parse`].
    pub fn digest_of(raw: &str) -> Result<KeyDigest, KeyFormatError> {
        Self::check(raw)?;
        Ok(digest(raw))
    }

    fn check(raw: &str) -> Result<(), KeyFormatError> {
        // A prefix holds no `_`, so the first one ends it.
        let body = raw
            .split_once('_')
            .filter(|(prefix, _)| KeyPrefix::is_well_formed(prefix))
            .map(|(_, body)| body)
            .ok_or(KeyFormatError::WrongPrefix)?;
        let bytes = body.as_bytes();
        if bytes.len() != RANDOM_LEN + CHECKSUM_LEN || !bytes.iter().all(u8::is_ascii_alphanumeric)
        {
            return Err(KeyFormatError::WrongShape);
        }
        let (random, given) = bytes.split_at(RANDOM_LEN);
        let expected = checksum(random);
        if bool::from(expected.ct_eq(given)) {
            Ok(())
        } else {
            Err(KeyFormatError::BadChecksum)
        }
    }

    /// The key string itself. Call it only to put the secret in the one response that
    /// shows it (creation or rotation).
    #[must_use]
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// SHA-256 of the whole key string: what storage keeps and looks up. A fast hash is
    /// right here because the key carries 190 bits of entropy; nothing can be guessed.
    #[must_use]
    pub fn digest(&self) -> KeyDigest {
        digest(self.expose())
    }

    /// The display hint: prefix, first 4 and last 4 characters (`kw_AbCd…wxyz`).
    #[must_use]
    pub fn hint(&self) -> String {
        hint_of(self.expose())
    }
}

/// The display hint of any presented string, key or not (a leak report names strings
/// that may be neither): a key's is its prefix, first 4 and last 4 characters
/// (`kw_AbCd…wxyz`). Of anything else it shows no more than a key's would: the part
/// before the first `_` if that is a well-formed prefix, and the first and last 4
/// characters of the rest only when the rest has at least 16 (so a hint never shows
/// most of a short string); otherwise `…` alone stands for them.
#[must_use]
pub fn hint_of(raw: &str) -> String {
    let (prefix, body) = match raw.split_once('_') {
        Some((prefix, body)) if KeyPrefix::is_well_formed(prefix) => (Some(prefix), body),
        _ => (None, raw),
    };
    let chars: Vec<char> = body.chars().collect();
    let middle = if chars.len() >= 16 {
        let first: String = chars[..4].iter().collect();
        let last: String = chars[chars.len() - 4..].iter().collect();
        format!("{first}…{last}")
    } else {
        "…".to_owned()
    };
    match prefix {
        Some(prefix) => format!("{prefix}_{middle}"),
        None => middle,
    }
}

/// SHA-256 of a whole key string; see [`KeySecret::digest`].
fn digest(key: &str) -> KeyDigest {
    KeyDigest(Sha256::digest(key.as_bytes()).into())
}

fn checksum(random: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = u64::from(crc32fast::hash(random));
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// SHA-256 digest of a key. Not secret on its own, but never shown anywhere either:
/// `Debug` is redacted and there is no `Serialize`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(pub [u8; 32]);

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

impl KeyDigest {
    /// Lower-case hex, for change notifications between nodes (never for logs).
    #[must_use]
    pub fn to_hex(&self) -> String {
        use std::fmt::Write as _;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    /// Reads [`KeyDigest::to_hex`] back; `None` for anything else.
    #[must_use]
    pub fn from_hex(hex: &str) -> Option<Self> {
        // Hex digits only: `from_str_radix` alone would also take a sign (`+f`).
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }

    /// Compares two digests in constant time.
    #[must_use]
    pub fn ct_eq(&self, other: &Self) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

/// A source of random bytes. Production uses [`OsRandom`]; tests may pass a fixed one.
pub trait RandomSource {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}

/// The operating system's CSPRNG.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        // The OS CSPRNG failing is unrecoverable: issuing a weak key would be worse.
        #[expect(clippy::expect_used, reason = "no safe fallback for a broken OS RNG")]
        getrandom::fill(buf).expect("the OS random number generator failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Fixed(u8);
    impl RandomSource for Fixed {
        fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                *b = self.0;
                self.0 = self.0.wrapping_add(37);
            }
        }
    }

    fn kw() -> KeyPrefix {
        KeyPrefix::default()
    }

    #[test]
    fn generated_key_has_the_documented_shape() {
        let key = KeySecret::generate(&kw(), &mut OsRandom);
        let s = key.expose();
        assert!(s.starts_with("kw_"));
        assert_eq!(s.len(), 3 + RANDOM_LEN + CHECKSUM_LEN);
        assert!(s[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = KeySecret::generate(&kw(), &mut OsRandom);
        let shown = format!("{key:?} {:?}", key.digest());
        assert!(!shown.contains(&key.expose()[3..]), "{shown}");
        assert_eq!(shown, "KeySecret(..) KeyDigest(..)");
    }

    #[test]
    fn hint_is_prefix_first_four_and_last_four() {
        let key = KeySecret::generate(&kw(), &mut Fixed(3));
        let s = key.expose().to_owned();
        assert_eq!(key.hint(), format!("kw_{}…{}", &s[3..7], &s[s.len() - 4..]));
    }

    #[test]
    fn the_hint_of_any_string_shows_no_more_than_a_keys_would() {
        let key = KeySecret::generate(&kw(), &mut Fixed(5));
        assert_eq!(hint_of(key.expose()), key.hint());
        assert_eq!(hint_of("kw_short"), "kw_…");
        assert_eq!(hint_of("nope"), "…");
        assert_eq!(hint_of("X_0123456789abcdefXYZ"), "X_01…fXYZ");
        assert_eq!(hint_of("ghp_0123456789abcdefXYZ"), "ghp_0123…fXYZ");
        assert_eq!(hint_of("kw_ééééééééééééééééé"), "kw_éééé…éééé");
        assert_eq!(hint_of(""), "…");
    }

    #[test]
    fn keys_under_any_well_formed_prefix_parse_and_garbage_is_rejected() {
        let key = KeySecret::generate(&kw(), &mut OsRandom);
        let body = &key.expose()[3..];
        for prefix in ["sk", "acme", "a", "abcdefghijklmnop"] {
            let other = format!("{prefix}_{body}");
            assert!(KeySecret::parse(&other).is_ok(), "{other:?} was refused");
        }
        for bad in ["Kw", "2kw", "k-w", "abcdefghijklmnopq", ""] {
            assert_eq!(
                KeySecret::parse(&format!("{bad}_{body}")).unwrap_err(),
                KeyFormatError::WrongPrefix,
                "{bad:?}"
            );
        }
        for raw in ["", "kw_", "kw", "kw_short", "kw__", "kwx_0123", "KW_abc"] {
            assert!(KeySecret::parse(raw).is_err(), "{raw:?} was accepted");
        }
        let long = format!("{}0", key.expose());
        assert_eq!(
            KeySecret::parse(&long).unwrap_err(),
            KeyFormatError::WrongShape
        );
    }

    #[test]
    fn prefixes_follow_their_rule() {
        for ok in ["kw", "sk", "a", "live2", "abcdefghijklmnop"] {
            assert!(KeyPrefix::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Kw", "2kw", "k_w", "k-w", "abcdefghijklmnopq", "kw "] {
            assert!(KeyPrefix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digest_is_sha256_of_the_whole_key() {
        let key = KeySecret::parse(KeySecret::generate(&kw(), &mut Fixed(9)).expose()).unwrap();
        let again = KeySecret::parse(key.expose()).unwrap();
        assert!(key.digest().ct_eq(&again.digest()));
        let expected: [u8; 32] = Sha256::digest(key.expose().as_bytes()).into();
        assert_eq!(key.digest().0, expected);
    }

    #[test]
    fn digest_of_agrees_with_parse_then_digest() {
        let key = KeySecret::generate(&kw(), &mut OsRandom);
        let digest = KeySecret::digest_of(key.expose()).unwrap();
        assert!(digest.ct_eq(&key.digest()));
        let mut bad_checksum = key.expose().to_owned();
        let last = if bad_checksum.ends_with('0') {
            "1"
        } else {
            "0"
        };
        bad_checksum.replace_range(bad_checksum.len() - 1.., last);
        for raw in [bad_checksum.as_str(), "Kw_short", "kw_short"] {
            assert_eq!(
                KeySecret::digest_of(raw).unwrap_err(),
                KeySecret::parse(raw).unwrap_err(),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn digests_round_trip_through_hex() {
        let digest = KeySecret::generate(&kw(), &mut OsRandom).digest();
        assert!(
            KeyDigest::from_hex(&digest.to_hex())
                .unwrap()
                .ct_eq(&digest)
        );
        assert!(KeyDigest::from_hex("zz").is_none());
        assert!(KeyDigest::from_hex(&"g".repeat(64)).is_none());
    }

    #[test]
    fn a_digest_reads_back_only_from_hex_digits() {
        // Found by the `key` fuzz target: a `+` passed for a digit.
        let hex = KeySecret::generate(&kw(), &mut Fixed(5)).digest().to_hex();
        let signed = format!("+{}", &hex[1..]);
        assert!(KeyDigest::from_hex(&signed).is_none(), "{signed}");
        let inner = format!("{}+{}", &hex[..10], &hex[11..]);
        assert!(KeyDigest::from_hex(&inner).is_none(), "{inner}");
        assert!(KeyDigest::from_hex(&format!("{}-1", &hex[..62])).is_none());
        assert!(KeyDigest::from_hex(&hex.to_ascii_uppercase()).is_some());
    }

    proptest! {
        #[test]
        fn every_generated_key_parses_back(seed in any::<u8>(), prefix in "[a-z][a-z0-9]{0,15}") {
            let prefix = KeyPrefix::parse(&prefix).unwrap();
            let key = KeySecret::generate(&prefix, &mut Fixed(seed));
            let parsed = KeySecret::parse(key.expose()).unwrap();
            prop_assert_eq!(parsed.expose(), key.expose());
        }

        #[test]
        fn every_single_character_change_is_caught(
            seed in any::<u8>(),
            position in 0usize..(RANDOM_LEN + CHECKSUM_LEN),
            replacement in 0usize..62,
        ) {
            let key = KeySecret::generate(&kw(), &mut Fixed(seed));
            let mut bytes = key.expose().as_bytes().to_vec();
            let at = 3 + position;
            let new = ALPHABET[replacement];
            prop_assume!(bytes[at] != new);
            bytes[at] = new;
            let tampered = String::from_utf8(bytes).unwrap();
            prop_assert!(KeySecret::parse(&tampered).is_err());
        }
    }
}
