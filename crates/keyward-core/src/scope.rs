//! Scopes and the no-escalation rule of API.md §Scopes.

use std::fmt;

/// Most scopes a key may carry.
pub const MAX_SCOPES: usize = 32;
/// Longest scope string.
pub const MAX_SCOPE_LEN: usize = 64;

/// Why a scope or a scope list is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// A scope breaks `^[a-z][a-z0-9_.:-]{0,63}$`.
    #[error("each scope must match ^[a-z][a-z0-9_.:-]{{0,63}}$")]
    BadFormat,
    /// The list is empty.
    #[error("must not be empty")]
    Empty,
    /// More than [`MAX_SCOPES`].
    #[error("at most 32 scopes are allowed")]
    TooMany,
    /// The same scope appears twice.
    #[error("must not contain duplicates")]
    Duplicate,
}

/// One permission string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    /// Every `GET` endpoint of the account.
    pub const READ: &'static str = "read";
    /// Create, update, rotate and revoke keys.
    pub const WRITE: &'static str = "write";
    /// The audit log.
    pub const ADMIN: &'static str = "admin";

    /// Parses one scope.
    ///
    /// # Errors
    /// [`ScopeError::BadFormat`] if it breaks the format.
    pub fn parse(raw: &str) -> Result<Self, ScopeError> {
        let bytes = raw.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= MAX_SCOPE_LEN
            && bytes[0].is_ascii_lowercase()
            && bytes.iter().all(|&b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'_' | b'.' | b':' | b'-')
            });
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ScopeError::BadFormat)
        }
    }

    /// The scope as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether keyward itself enforces this scope (`read`, `write`, `admin`); every
    /// other scope is a custom scope, carried through for the platform's own use.
    #[must_use]
    pub fn is_built_in(&self) -> bool {
        matches!(self.0.as_str(), Self::READ | Self::WRITE | Self::ADMIN)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The scopes of one key: 1 to 32, no duplicates, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeSet(Vec<Scope>);

impl ScopeSet {
    /// Parses a list of scope strings.
    ///
    /// # Errors
    /// The first [`ScopeError`] found: format, then count, then duplicates.
    pub fn parse<S: AsRef<str>>(raw: &[S]) -> Result<Self, ScopeError> {
        let scopes = raw
            .iter()
            .map(|s| Scope::parse(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if scopes.is_empty() {
            return Err(ScopeError::Empty);
        }
        if scopes.len() > MAX_SCOPES {
            return Err(ScopeError::TooMany);
        }
        for (i, scope) in scopes.iter().enumerate() {
            if scopes[..i].contains(scope) {
                return Err(ScopeError::Duplicate);
            }
        }
        Ok(Self(scopes))
    }

    /// Whether the set holds `scope`.
    #[must_use]
    pub fn grants(&self, scope: &str) -> bool {
        self.0.iter().any(|s| s.as_str() == scope)
    }

    /// Whether every scope of `self` is also in `other`: the no-escalation rule.
    #[must_use]
    pub fn is_subset_of(&self, other: &Self) -> bool {
        self.0.iter().all(|s| other.0.contains(s))
    }

    /// Whether both hold the same scopes, whatever their order.
    #[must_use]
    pub fn same_scopes_as(&self, other: &Self) -> bool {
        self.is_subset_of(other) && other.is_subset_of(self)
    }

    /// The scopes of `self` that `other` lacks, in order.
    #[must_use]
    pub fn missing_from(&self, other: &Self) -> Vec<String> {
        self.0
            .iter()
            .filter(|s| !other.0.contains(s))
            .map(|s| s.0.clone())
            .collect()
    }

    /// The scopes of `self` that a caller holding `caller` may not grant, in order:
    /// the no-escalation rule of API.md §Scopes. A built-in scope is grantable only
    /// by a caller that holds it; a custom scope by a caller that holds it or holds
    /// `admin`. Empty means the caller may grant `self`, and so may also update,
    /// rotate or revoke a key carrying it.
    #[must_use]
    pub fn not_grantable_by(&self, caller: &Self) -> Vec<String> {
        let admin = caller.grants(Scope::ADMIN);
        self.0
            .iter()
            .filter(|s| !caller.0.contains(s) && (s.is_built_in() || !admin))
            .map(|s| s.0.clone())
            .collect()
    }

    /// The scopes as strings, in order.
    #[must_use]
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|s| s.0.clone()).collect()
    }

    /// Iterates over the scopes in order.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scope_format_follows_the_contract() {
        for ok in ["read", "a", "billing:read", "x.y_z-1", &"a".repeat(64)] {
            assert!(Scope::parse(ok).is_ok(), "{ok:?} rejected");
        }
        for bad in [
            "",
            "Read",
            "1read",
            "_x",
            "re ad",
            "réad",
            "a/b",
            &"a".repeat(65),
            "read\n",
        ] {
            assert_eq!(
                Scope::parse(bad),
                Err(ScopeError::BadFormat),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn scope_lists_are_checked() {
        assert_eq!(ScopeSet::parse::<&str>(&[]), Err(ScopeError::Empty));
        assert_eq!(
            ScopeSet::parse(&["read", "read"]),
            Err(ScopeError::Duplicate)
        );
        let many: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
        assert_eq!(ScopeSet::parse(&many), Err(ScopeError::TooMany));
        assert!(ScopeSet::parse(&many[..32]).is_ok());
        let kept = ScopeSet::parse(&["write", "read", "custom"]).unwrap();
        assert_eq!(kept.to_strings(), ["write", "read", "custom"]);
    }

    #[test]
    fn subset_rule_blocks_escalation() {
        let rw = ScopeSet::parse(&["read", "write"]).unwrap();
        let r = ScopeSet::parse(&["read"]).unwrap();
        let admin = ScopeSet::parse(&["read", "admin"]).unwrap();
        assert!(r.is_subset_of(&rw));
        assert!(!rw.is_subset_of(&r));
        assert!(!admin.is_subset_of(&rw));
        assert_eq!(admin.missing_from(&rw), ["admin"]);
        assert!(rw.same_scopes_as(&ScopeSet::parse(&["write", "read"]).unwrap()));
    }

    #[test]
    fn admin_grants_custom_scopes_but_only_built_in_scopes_it_holds() {
        let admin = ScopeSet::parse(&["read", "admin"]).unwrap();
        let rw = ScopeSet::parse(&["read", "write"]).unwrap();
        let custom = ScopeSet::parse(&["videos:create", "read"]).unwrap();
        assert!(custom.not_grantable_by(&admin).is_empty());
        assert_eq!(custom.not_grantable_by(&rw), ["videos:create"]);
        let with_write = ScopeSet::parse(&["write", "billing:read"]).unwrap();
        assert_eq!(with_write.not_grantable_by(&admin), ["write"]);
        let holder = ScopeSet::parse(&["videos:create"]).unwrap();
        assert!(holder.not_grantable_by(&holder).is_empty());
        assert_eq!(
            ScopeSet::parse(&["videos:delete"])
                .unwrap()
                .not_grantable_by(&holder),
            ["videos:delete"]
        );
    }

    fn scope_list() -> impl Strategy<Value = Vec<String>> {
        let pool = prop_oneof![
            Just("read".to_owned()),
            Just("write".to_owned()),
            Just("admin".to_owned()),
            "[a-c][a-c:]{0,3}",
        ];
        proptest::collection::hash_set(pool, 1..8).prop_map(|s| s.into_iter().collect())
    }

    proptest! {
        #[test]
        fn escalation_rule_holds_for_every_pair(wanted in scope_list(), held in scope_list()) {
            let wanted = ScopeSet::parse(&wanted).unwrap();
            let held = ScopeSet::parse(&held).unwrap();
            let refused = wanted.not_grantable_by(&held);
            for scope in wanted.iter() {
                let allowed = held.grants(scope.as_str())
                    || (!scope.is_built_in() && held.grants(Scope::ADMIN));
                prop_assert_eq!(allowed, !refused.contains(&scope.as_str().to_owned()));
            }
            // Anything a caller holds it may grant, and never a built-in scope it lacks.
            prop_assert!(held.not_grantable_by(&held).is_empty());
            prop_assert!(refused.iter().all(|s| wanted.grants(s)));
            if wanted.is_subset_of(&held) {
                prop_assert!(refused.is_empty());
            }
        }
    }

    proptest! {
        #[test]
        fn subset_is_reflexive_and_order_free(scopes in proptest::collection::hash_set("[a-z][a-z0-9_.:-]{0,10}", 1..10)) {
            let list: Vec<String> = scopes.into_iter().collect();
            let set = ScopeSet::parse(&list).unwrap();
            let mut reversed = list.clone();
            reversed.reverse();
            let rev = ScopeSet::parse(&reversed).unwrap();
            prop_assert!(set.is_subset_of(&rev) && rev.is_subset_of(&set));
            prop_assert!(set.missing_from(&rev).is_empty());
        }
    }
}
