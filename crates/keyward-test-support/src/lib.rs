//! Test-only helpers shared by keyward's crates. Never a dependency of production code.
//!
//! [`service_url`] is the one rule for tests that need a real PostgreSQL or Redis: the
//! URL comes from an environment variable; when it is unset or nothing answers there,
//! the test is skipped with a line `cargo test` shows, unless
//! `KEYWARD_TEST_REQUIRE_SERVICES=1` (which `.ci/run` sets), where it fails instead.
//! [`tls`] starts PostgreSQL and Redis servers of a test's own, with TLS and a
//! certificate authority the test made.

pub mod tls;

use std::io::Write as _;
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

/// The variable that turns a missing service from a skip into a failure.
pub const REQUIRE_SERVICES_VAR: &str = "KEYWARD_TEST_REQUIRE_SERVICES";

/// The variable naming the test PostgreSQL server.
pub const PG_URL_VAR: &str = "KEYWARD_TEST_PG_URL";

/// The variable naming the test Redis server.
pub const REDIS_URL_VAR: &str = "KEYWARD_TEST_REDIS_URL";

/// How long a reachability probe waits for a TCP connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The URL in `var` if a server answers there. Otherwise `None` after a `SKIPPED` line
/// naming `test` on the process's standard error (written straight to the stream, since
/// libtest captures `eprintln!` of passing tests and this line must be seen).
///
/// # Panics
/// When `KEYWARD_TEST_REQUIRE_SERVICES=1` and the variable is unset or nothing accepts a
/// TCP connection at its host and port: a required service that is missing is a failure.
#[must_use]
pub fn service_url(var: &str, test: &str) -> Option<String> {
    let problem = match answering_url(var) {
        Ok(url) => return Some(url),
        Err(problem) => problem,
    };
    assert!(
        !services_required(),
        "{test}: {problem}, and {REQUIRE_SERVICES_VAR}=1 requires it"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {problem}; it did not run"
    );
    None
}

/// The URL in `var`, for a run that asked for this service by name (such as
/// `KEYWARD_TEST_BACKEND=postgres`): there is nothing to skip to, so a missing service
/// fails whatever `KEYWARD_TEST_REQUIRE_SERVICES` says. `why` names what asked for it.
///
/// # Panics
/// When the variable is unset or nothing accepts a TCP connection at its host and port.
#[must_use]
pub fn required_service_url(var: &str, why: &str) -> String {
    answering_url(var).unwrap_or_else(|problem| panic!("{why}: {problem}"))
}

/// The URL in `var` if a server answers there; otherwise what is wrong.
fn answering_url(var: &str) -> Result<String, String> {
    let url = std::env::var(var)
        .ok()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| format!("{var} is not set"))?;
    probe(&url).map_err(|why| format!("{var} names a server that does not answer ({why})"))?;
    Ok(url)
}

/// Whether a missing service must fail the test (`KEYWARD_TEST_REQUIRE_SERVICES=1`).
#[must_use]
pub fn services_required() -> bool {
    std::env::var(REQUIRE_SERVICES_VAR).is_ok_and(|v| v == "1")
}

/// Skips (or, when services are required, fails) a test that needs something other than a
/// URL, such as a program on the `PATH`: prints the `SKIPPED` line and returns `false`
/// when `available` is false.
///
/// # Panics
/// When `available` is false and `KEYWARD_TEST_REQUIRE_SERVICES=1`.
#[must_use]
pub fn require(available: bool, test: &str, what: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        !services_required(),
        "{test}: {what}, and {REQUIRE_SERVICES_VAR}=1 requires it"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {what}; it did not run");
    false
}

/// Opens (and closes) a TCP connection to the URL's host and port.
fn probe(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let host = parsed.host_str().ok_or("no host")?;
    let port = parsed
        .port_or_known_default()
        .or_else(|| match parsed.scheme() {
            "postgres" | "postgresql" => Some(5432),
            "redis" | "rediss" => Some(6379),
            _ => None,
        })
        .ok_or("no port")?;
    let addrs = (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|e| format!("{host} does not resolve: {e}"))?;
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_port_does_not_answer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        assert!(probe(&format!("redis://127.0.0.1:{port}")).is_err());
    }

    #[test]
    fn an_open_port_answers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(probe(&format!("postgres://postgres@127.0.0.1:{port}/test")).is_ok());
    }
}
