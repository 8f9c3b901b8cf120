//! Leaked keys (API.md §Operator API, `leaked-keys` and `secret-scanning/github`): the
//! fields of a report, what keyward does to a leaked key, and GitHub secret scanning's
//! public keys and signatures (ECDSA P-256 / SHA-256 over the raw body, base64 of DER).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::Deserialize;

use crate::InvalidValue;

/// Most strings one report may name.
pub const MAX_LEAKED_KEYS: usize = 1000;

/// Longest `source` of a report, in characters.
pub const MAX_SOURCE_LEN: usize = 200;

/// Longest `url` of a report.
pub const MAX_URL_LEN: usize = 2048;

/// What keyward does to a live key reported as leaked (`serve --on-leak`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeakResponse {
    /// Revoke it: it never authenticates again.
    #[default]
    Revoke,
    /// Disable it (status `inactive`): it stops authenticating, and its owner decides
    /// whether to re-enable or revoke it.
    Disable,
}

impl LeakResponse {
    /// Its name on the command line.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Revoke => "revoke",
            Self::Disable => "disable",
        }
    }

    /// The `action` of a key it was applied to: `revoked` or `disabled`.
    #[must_use]
    pub const fn action(self) -> &'static str {
        match self {
            Self::Revoke => "revoked",
            Self::Disable => "disabled",
        }
    }
}

impl std::str::FromStr for LeakResponse {
    type Err = InvalidValue;

    fn from_str(raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "revoke" => Ok(Self::Revoke),
            "disable" => Ok(Self::Disable),
            _ => Err(InvalidValue("must be revoke or disable")),
        }
    }
}

/// A report's `source` (where the key was found, in the reporter's words): 1 to
/// [`MAX_SOURCE_LEN`] characters, no control characters.
///
/// # Errors
/// Which rule it breaks.
pub fn parse_source(raw: &str) -> Result<String, InvalidValue> {
    let chars = raw.chars().count();
    if chars == 0 || chars > MAX_SOURCE_LEN {
        return Err(InvalidValue("must be 1 to 200 characters"));
    }
    if raw.chars().any(char::is_control) {
        return Err(InvalidValue("must not contain control characters"));
    }
    Ok(raw.to_owned())
}

/// A report's `url` (where the key was found): an absolute `http://` or `https://` URL of
/// at most [`MAX_URL_LEN`] characters, kept as given.
///
/// # Errors
/// Which rule it breaks.
pub fn parse_url(raw: &str) -> Result<String, InvalidValue> {
    if raw.len() > MAX_URL_LEN {
        return Err(InvalidValue("must be at most 2048 characters"));
    }
    let url = url::Url::parse(raw).map_err(|_| InvalidValue("must be an absolute URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(InvalidValue(
            "must be an http:// or https:// URL with a host",
        ));
    }
    Ok(raw.to_owned())
}

/// Why a GitHub secret scanning request's signature is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is missing, sent twice, or not text.
    #[error(
        "the Github-Public-Key-Identifier and Github-Public-Key-Signature headers are required"
    )]
    Missing,
    /// The identifier names no key of the keys file.
    #[error("the Github-Public-Key-Identifier names no known key")]
    UnknownKey,
    /// The signature is not base64 of a DER ECDSA signature, or does not match the body.
    #[error("the Github-Public-Key-Signature does not match the body")]
    Mismatch,
}

impl SignatureError {
    /// Its name in `details.reason`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::UnknownKey => "unknown_key",
            Self::Mismatch => "bad_signature",
        }
    }
}

/// GitHub secret scanning's public keys, by identifier: a saved copy of GitHub's document
/// `{"public_keys": [{"key_identifier", "key" (PEM SubjectPublicKeyInfo), "is_current"}]}`.
/// Every key it lists verifies, current or not: GitHub signs with a retired key for a
/// while after it rotates.
#[derive(Clone)]
pub struct GithubKeys(BTreeMap<String, VerifyingKey>);

impl fmt::Debug for GithubKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GithubKeys")
            .field(&self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct RawDocument {
    public_keys: Vec<RawKey>,
}

#[derive(Deserialize)]
struct RawKey {
    key_identifier: String,
    key: String,
}

/// Why a keys document is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeysFileError(String);

impl GithubKeys {
    /// Reads GitHub's keys document: at least one key, every identifier non-empty and
    /// listed once, every key a PEM P-256 public key.
    ///
    /// # Errors
    /// What is wrong with it, naming the key at fault.
    pub fn parse(text: &str) -> Result<Self, KeysFileError> {
        let doc: RawDocument = serde_json::from_str(text).map_err(|e| {
            KeysFileError(format!(
                "is not GitHub's public keys document ({{\"public_keys\": [{{\"key_identifier\", \"key\", \"is_current\"}}]}}): {e}"
            ))
        })?;
        if doc.public_keys.is_empty() {
            return Err(KeysFileError("lists no public key".to_owned()));
        }
        let mut keys = BTreeMap::new();
        for (i, raw) in doc.public_keys.iter().enumerate() {
            if raw.key_identifier.trim().is_empty() {
                return Err(KeysFileError(format!(
                    "public key {i} has an empty key_identifier"
                )));
            }
            let key = VerifyingKey::from_public_key_pem(&raw.key).map_err(|_| {
                KeysFileError(format!(
                    "the key of {:?} is not a PEM P-256 public key",
                    raw.key_identifier
                ))
            })?;
            if keys.insert(raw.key_identifier.clone(), key).is_some() {
                return Err(KeysFileError(format!(
                    "lists {:?} twice",
                    raw.key_identifier
                )));
            }
        }
        Ok(Self(keys))
    }

    /// How many keys it holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds none (never, once parsed).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks that `signature` (base64 of a DER ECDSA signature) is the key
    /// `identifier`'s over `body`.
    ///
    /// # Errors
    /// Which check failed.
    pub fn verify(
        &self,
        identifier: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let key = self.0.get(identifier).ok_or(SignatureError::UnknownKey)?;
        let der = STANDARD
            .decode(signature.trim())
            .map_err(|_| SignatureError::Mismatch)?;
        let signature = Signature::from_der(&der).map_err(|_| SignatureError::Mismatch)?;
        key.verify(body, &signature)
            .map_err(|_| SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};

    use super::*;

    fn signing_key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    fn document(keys: &[(&str, &SigningKey)]) -> String {
        let keys: Vec<_> = keys
            .iter()
            .map(|(id, key)| {
                serde_json::json!({
                    "key_identifier": id,
                    "key": key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
                    "is_current": true,
                })
            })
            .collect();
        serde_json::json!({ "public_keys": keys }).to_string()
    }

    fn sign(key: &SigningKey, body: &[u8]) -> String {
        let signature: Signature = key.sign(body);
        STANDARD.encode(signature.to_der().as_bytes())
    }

    #[test]
    fn a_signature_verifies_with_its_key_only_and_over_its_body_only() {
        let (a, b) = (signing_key(7), signing_key(9));
        let keys = GithubKeys::parse(&document(&[("a", &a), ("b", &b)])).unwrap();
        assert_eq!(keys.len(), 2);
        let body = br#"[{"token":"kw_x","type":"keyward_api_key"}]"#;
        let by_a = sign(&a, body);
        assert_eq!(keys.verify("a", &by_a, body), Ok(()));
        assert_eq!(keys.verify("b", &by_a, body), Err(SignatureError::Mismatch));
        assert_eq!(
            keys.verify("c", &by_a, body),
            Err(SignatureError::UnknownKey)
        );
        assert_eq!(
            keys.verify("a", &by_a, b"[]"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            keys.verify("a", "not base64!", body),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            keys.verify("a", &STANDARD.encode(b"not DER"), body),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_signature_with_a_high_s_verifies_like_its_low_s_twin() {
        // Other ECDSA signers do not normalise s; P-256 verification must not ask it.
        let key = signing_key(11);
        let keys = GithubKeys::parse(&document(&[("k", &key)])).unwrap();
        let body = b"[]";
        let signature: Signature = key.sign(body);
        let (r, s) = signature.split_scalars();
        let high = Signature::from_scalars(r, -*s).unwrap();
        let encoded = STANDARD.encode(high.to_der().as_bytes());
        assert_eq!(keys.verify("k", &encoded, body), Ok(()));
    }

    #[test]
    fn a_bad_document_is_refused_naming_its_fault() {
        let key = signing_key(3);
        for (text, needle) in [
            ("not json".to_owned(), "public keys document"),
            (r#"{"public_keys": []}"#.to_owned(), "no public key"),
            (
                r#"{"public_keys": [{"key_identifier": "x", "key": "garbage", "is_current": true}]}"#
                    .to_owned(),
                "\"x\" is not a PEM",
            ),
            (document(&[("", &key)]), "empty key_identifier"),
            (document(&[("d", &key), ("d", &key)]), "\"d\" twice"),
        ] {
            let e = GithubKeys::parse(&text).unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn report_fields_follow_their_rules() {
        assert!(parse_source("GitHub secret scanning").is_ok());
        assert!(parse_source("").is_err());
        assert!(parse_source(&"x".repeat(201)).is_err());
        assert!(parse_source("a\nb").is_err());
        assert!(parse_url("https://github.com/o/r/blob/main/.env").is_ok());
        for bad in [
            "not a url",
            "ftp://example.com/",
            "mailto:a@b.c",
            "/relative",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert!(parse_url(&format!("https://e.com/{}", "a".repeat(2048))).is_err());
        assert_eq!("disable".parse(), Ok(LeakResponse::Disable));
        assert!("delete".parse::<LeakResponse>().is_err());
    }
}
