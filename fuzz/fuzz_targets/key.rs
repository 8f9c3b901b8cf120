//! The key parser: what arrives in `x-api-key` (and in `POST /v1/api-keys/validate`,
//! whose only input is that header), the key prefix of the configuration, and the
//! digests nodes send each other as hex.
//!
//! Input: UTF-8 text. With a newline, the first line is a configured prefix and the rest
//! the presented key; without, the whole text is the key. A presented key's prefix only
//! has to be well-formed (keys outlive a change of the configured prefix).
#![no_main]

use keyward_core::{KeyDigest, KeyPrefix, KeySecret};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let raw = match text.split_once('\n') {
        Some((line, rest)) => {
            match KeyPrefix::parse(line) {
                // An accepted prefix reads back as written.
                Ok(prefix) => {
                    assert_eq!(prefix.as_str(), line);
                    assert_eq!(prefix.to_string(), line);
                }
                Err(_) => assert!(!well_formed_prefix(line), "{line:?} was refused"),
            }
            rest
        }
        None => text,
    };

    let parsed = KeySecret::parse(raw);
    let digest = KeySecret::digest_of(raw);
    match (&parsed, &digest) {
        (Ok(key), Ok(digest)) => {
            // The secret is the text given, and its digest is SHA-256 of it, however it
            // is reached.
            assert_eq!(key.expose(), raw);
            let expected: [u8; 32] = Sha256::digest(raw.as_bytes()).into();
            assert_eq!(digest.0, expected);
            assert!(key.digest().ct_eq(digest));
            assert!(KeySecret::digest_of(raw).is_ok_and(|again| again.ct_eq(digest)));
            // The shape of API.md §Key format, under any well-formed prefix.
            let (prefix, body) = raw.split_once('_').expect("a prefix and a body");
            assert!(well_formed_prefix(prefix), "{prefix:?} was accepted");
            assert!(KeyPrefix::parse(prefix).is_ok());
            assert_eq!(body.len(), 38);
            assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()));
            // The hint shows the prefix, the first four and the last four characters.
            assert_eq!(
                key.hint(),
                format!("{prefix}_{}…{}", &body[..4], &body[34..])
            );
            // The checksum covers the random part only: the same body under another
            // prefix is a key of that prefix.
            assert!(KeySecret::parse(&format!("zz9_{body}")).is_ok());
            // The digest's hex form reads back.
            let hex = digest.to_hex();
            assert!(KeyDigest::from_hex(&hex).is_some_and(|d| d.ct_eq(digest)));
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "parse and digest_of disagree on {raw:?}"),
        _ => panic!("parse and digest_of disagree on {raw:?}"),
    }

    // Hex digests (change notifications between nodes): only `to_hex`'s own output is
    // accepted, and it reads back to the same text.
    if let Some(d) = KeyDigest::from_hex(text) {
        assert_eq!(
            d.to_hex(),
            text.to_ascii_lowercase(),
            "{text:?} read as a digest"
        );
    }
});

/// API.md §Key format's prefix: 1 to 16 of `[a-z0-9]`, starting with a letter.
fn well_formed_prefix(text: &str) -> bool {
    (1..=16).contains(&text.len())
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}
