//! The upstream of `--upstream URL`: hyper-util's pooled client (keep-alive, HTTP/1.1;
//! HTTP/2 is its `http2` feature and a builder option away), and the header rules of
//! API.md §Gateway for both directions. Bodies stream through as `hyper` frames: neither
//! direction is ever held whole.

use std::net::IpAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header};
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The body keyward sends upstream: the client's, cut off past `--upstream-body-limit`.
pub type UpstreamBody = Limited<Body>;

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The hop-by-hop headers of RFC 9110 §7.6.1 (and the older `keep-alive` and
/// `proxy-connection`), which describe one connection and never cross a proxy; the
/// headers a message's `connection` names are dropped with them.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Why a request could not be forwarded.
#[derive(Debug)]
pub enum UpstreamError {
    /// No response head within `--upstream-timeout`.
    TimedOut(Duration),
    /// The upstream could not be reached, or broke off.
    Unreachable(Box<dyn std::error::Error + Send + Sync>),
    /// The client's body passed `--upstream-body-limit`.
    TooLarge(usize),
}

/// The upstream and the client that reaches it.
pub struct Upstream {
    client: Client<HttpConnector, UpstreamBody>,
    scheme: Scheme,
    authority: Authority,
    /// The URL's path without its trailing `/`, put before every forwarded path.
    base_path: String,
    timeout: Duration,
    body_limit: Option<usize>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("authority", &self.authority)
            .field("base_path", &self.base_path)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// The upstream at `url` (`http://host:port[/base]`).
    ///
    /// # Errors
    /// The URL is not an `http://` URL with a host, or has a query.
    pub fn new(url: &str, timeout: Duration, body_limit: Option<usize>) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        if scheme != Scheme::HTTP {
            return Err(format!(
                "`{url}`: the upstream is reached over plain http:// (put it on a private network, or terminate TLS in front of it)"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{url}` names no host"))?;
        // Credentials would be logged with the URL, and hyper would not send them.
        if authority.as_str().contains('@') {
            return Err("the upstream URL takes no user:password".to_owned());
        }
        if uri.query().is_some() {
            return Err(format!("`{url}`: an upstream URL takes no query"));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self {
            client,
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            timeout,
            body_limit,
        })
    }

    /// The most bytes a forwarded body may have, if limited.
    #[must_use]
    pub fn body_limit(&self) -> Option<usize> {
        self.body_limit
    }

    /// Forwards `req` (its headers already prepared by [`prepare_request`]) to the
    /// upstream, at the path and query of `target`. Dropping the future (the client went
    /// away) drops the upstream request, and hyper closes that upstream connection.
    ///
    /// # Errors
    /// [`UpstreamError`].
    pub async fn send(
        &self,
        target: &Uri,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let (mut parts, body) = req.into_parts();
        let path_and_query = target.path_and_query().map_or("/", PathAndQuery::as_str);
        let joined = if self.base_path.is_empty() {
            None
        } else {
            Some(format!("{}{path_and_query}", self.base_path))
        };
        let mut uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        uri = uri.path_and_query(joined.as_deref().unwrap_or(path_and_query));
        parts.uri = uri
            .build()
            .map_err(|e| UpstreamError::Unreachable(Box::new(e)))?;
        let limit = self.body_limit.unwrap_or(usize::MAX);
        let req = Request::from_parts(parts, Limited::new(body, limit));
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::TimedOut(self.timeout)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                if error_chain_has::<http_body_util::LengthLimitError>(&e) {
                    Err(UpstreamError::TooLarge(limit))
                } else {
                    Err(UpstreamError::Unreachable(Box::new(e)))
                }
            }
        }
    }
}

fn error_chain_has<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.is::<E>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Removes the hop-by-hop headers from `headers`, and those its `connection` names.
/// One pass over the headers finds them; most messages hold none, or only `connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut hop_by_hop: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name))
        .cloned()
        .collect();
    if hop_by_hop.is_empty() {
        return;
    }
    hop_by_hop.extend(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::try_from(token.trim()).ok()),
    );
    for name in hop_by_hop {
        headers.remove(name);
    }
}

/// Prepares a client's request headers for the upstream (API.md §Gateway): hop-by-hop
/// headers, `x-api-key`, every `x-keyward-*` and `x-request-id` and `host` removed; the
/// request id set; `x-forwarded-for` (the peer), `-proto` (`http`) and `-host` (the
/// client's `host`) appended to any the client sent. The identity headers are set by
/// `gateway::set_identity` afterwards.
pub fn prepare_request(headers: &mut HeaderMap, request_id: &str, peer: Option<IpAddr>) {
    strip_hop_by_hop(headers);
    headers.remove(X_API_KEY);
    headers.remove(X_REQUEST_ID);
    let host = headers.remove(header::HOST);
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-keyward-"))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID, id);
    }
    if let Some(peer) = peer {
        append(headers, X_FORWARDED_FOR, &peer.to_string());
    }
    append(headers, X_FORWARDED_PROTO, "http");
    if let Some(host) = host.as_ref().and_then(|h| h.to_str().ok()) {
        append(headers, X_FORWARDED_HOST, host);
    }
}

/// Appends `value` to the list header `name`: one header, the earlier values first.
fn append(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let earlier: Vec<&str> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if earlier.is_empty() {
        HeaderValue::from_str(value)
    } else {
        HeaderValue::from_str(&format!("{}, {value}", earlier.join(", ")))
    };
    if let Ok(value) = value {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_request_loses_its_hop_by_hop_key_and_spoofed_headers_and_gains_forwarding_ones() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-api-key", "kw_secret"),
            ("x-keyward-account-id", "acc_spoofed"),
            ("x-keyward-anything", "spoofed"),
            ("x-request-id", "client-id"),
            ("host", "api.example.com"),
            ("x-forwarded-for", "203.0.113.7"),
            ("content-type", "application/json"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        prepare_request(&mut headers, "req_1", Some("127.0.0.1".parse().unwrap()));
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "te",
            "upgrade",
            "x-api-key",
            "x-keyward-account-id",
            "x-keyward-anything",
            "host",
        ] {
            assert!(headers.get(gone).is_none(), "{gone} forwarded");
        }
        assert_eq!(headers["x-request-id"], "req_1");
        assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "api.example.com");
        assert_eq!(headers["content-type"], "application/json");
    }

    #[test]
    fn only_http_upstreams_with_a_host_and_no_query_are_taken() {
        let t = Duration::from_secs(1);
        assert!(Upstream::new("http://127.0.0.1:9000", t, None).is_ok());
        let base = Upstream::new("http://127.0.0.1:9000/api/", t, None).unwrap();
        assert_eq!(base.base_path, "/api");
        for bad in [
            "https://x.example",
            "/just/a/path",
            "http://h/?q=1",
            "not a url",
        ] {
            assert!(Upstream::new(bad, t, None).is_err(), "{bad}");
        }
    }
}
