//! `POST /secret-scanning/github`: GitHub secret scanning's partner endpoint (API.md
//! §Operator API). Served only with `--github-scanning-keys FILE`; the request is signed
//! by GitHub, and what it does is what `POST /operator/v1/leaked-keys` does
//! ([`crate::leaks::respond`]). Tokens are never logged.

use axum::Json;
use axum::extract::{FromRequest as _, Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse as _, Response};
use keyward_core::leak::{self, MAX_LEAKED_KEYS, SignatureError};
use keyward_store::OperatorActor;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::context::RequestContext;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::leaks::{self, LeakReport, Leaked};
use crate::state::AppState;

/// The header naming the key GitHub signed with.
pub const KEY_IDENTIFIER: HeaderName = HeaderName::from_static("github-public-key-identifier");
/// The header holding the signature: base64 of DER ECDSA P-256 / SHA-256 over the body.
pub const KEY_SIGNATURE: HeaderName = HeaderName::from_static("github-public-key-signature");

/// The `source` of the `key.leaked` events of this endpoint's reports.
const SOURCE: &str = "github secret scanning";

/// One match GitHub found.
#[derive(Debug, Deserialize, ToSchema)]
pub struct GithubMatch {
    /// The string found.
    pub token: String,
    /// The secret type the partner registered (for keyward, the name given at
    /// registration).
    #[serde(rename = "type")]
    pub token_type: String,
    /// Where it was found.
    #[serde(default)]
    pub url: Option<String>,
    /// What it was found in: `content`, `commit`, `pull_request_description`, …
    #[serde(default)]
    pub source: Option<String>,
}

/// GitHub's verdict of a match.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// The token was a working secret of a keyward key: it has stopped working.
    TruePositive,
    /// The token is not a working secret.
    FalsePositive,
}

/// The answer for one match, in GitHub's format.
#[derive(Debug, Serialize, ToSchema)]
pub struct GithubVerdict<'a> {
    /// The token as GitHub sent it.
    pub token_raw: &'a str,
    /// The type as GitHub sent it.
    pub token_type: &'a str,
    /// `true_positive` if it was a working secret.
    pub label: Label,
}

/// The one value of a header, if it is sent once and is text.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    values.next().is_none().then(|| value.to_str().ok())?
}

/// GitHub secret scanning reports tokens it found in public places (a signed request).
#[utoipa::path(
    post, path = "/secret-scanning/github", operation_id = "github_secret_scanning", tag = "secret-scanning",
    request_body(content = Vec<GithubMatch>, description = "The matches, as GitHub sends them: at most 1000"),
    params(
        ("Github-Public-Key-Identifier" = String, Header, description = "The key_identifier of the key in the keys file that signed the body"),
        ("Github-Public-Key-Signature" = String, Header, description = "Base64 of the DER ECDSA P-256 / SHA-256 signature over the raw body"),
    ),
    responses((status = 200, description = "A verdict per match, in order", body = Vec<GithubVerdict>)),
    security(("github_signature" = []))
)]
pub async fn github(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let Some(keys) = state.github_keys.as_ref() else {
        // Not routed without the keys file; answered as any unknown path if it were.
        return Err(ApiError::no_such_route());
    };
    let ctx = RequestContext::of_request(&req);
    let identifier = single(req.headers(), &KEY_IDENTIFIER).map(str::to_owned);
    let signature = single(req.headers(), &KEY_SIGNATURE).map(str::to_owned);
    let body = JsonBody::from_request(req, &state).await?;
    let raw = body.raw()?;
    let checked = match (&identifier, &signature) {
        (Some(identifier), Some(signature)) => keys.verify(identifier, signature, raw),
        _ => Err(SignatureError::Missing),
    };
    if let Err(e) = checked {
        tracing::warn!(
            request_id = %ctx.request_id,
            reason = e.as_str(),
            "refused a secret scanning request whose signature does not verify"
        );
        return Err(ApiError::bad_signature(e.to_string(), e.as_str()));
    }
    let matches: Vec<GithubMatch> = body.parse_array()?;
    if matches.len() > MAX_LEAKED_KEYS {
        return Err(ApiError::validation(
            "body",
            format!("must hold at most {MAX_LEAKED_KEYS} matches"),
        ));
    }
    let report = LeakReport {
        source: Some(SOURCE),
        reporter: &OperatorActor::Scanner,
        request_id: ctx.request_id.as_str(),
        now: ctx.arrived,
    };
    // A match's URL is kept in its event only if it is one; GitHub's `source` names a
    // kind of place, which the URL already shows.
    let urls: Vec<Option<String>> = matches
        .iter()
        .map(|m| m.url.as_deref().and_then(|u| leak::parse_url(u).ok()))
        .collect();
    let strings: Vec<Leaked<'_>> = matches
        .iter()
        .zip(&urls)
        .map(|(m, url)| Leaked {
            raw: &m.token,
            url: url.as_deref(),
        })
        .collect();
    let outcomes = leaks::respond(&state, &strings, &report).await?;
    let verdicts: Vec<GithubVerdict<'_>> = matches
        .iter()
        .zip(&outcomes)
        .map(|(m, outcome)| GithubVerdict {
            token_raw: &m.token,
            token_type: &m.token_type,
            label: if outcome.live {
                Label::TruePositive
            } else {
                Label::FalsePositive
            },
        })
        .collect();
    Ok((StatusCode::OK, Json(verdicts)).into_response())
}
