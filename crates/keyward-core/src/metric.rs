//! Every metric keyward emits: its name (the one place it is written), its type, its
//! labels and its help text. The crates that record a metric name it through these
//! constants; the binary describes every [`FAMILIES`] entry to the exporter, so each
//! family on `/metrics` has its `# HELP` line, and registers at zero the series an alert
//! may name (docs/OPERATIONS.md lists them all; a test checks the list against
//! `/metrics`).
//!
//! Names follow Prometheus's conventions: `keyward_` prefix, base units (`_seconds`,
//! `_bytes`), `_total` on counters, and one family per kind with a label for the
//! variant (`cache`, `timeout`, `kind`) rather than a name per variant.

/// A metric's type, as the exposition format names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; alerts use its `rate()`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets (`_bucket`, `_sum`, `_count`).
    Histogram,
}

/// One family: what `/metrics` shows under one name.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// The family's name.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// The names of its labels.
    pub labels: &'static [&'static str],
    /// Its `# HELP` text.
    pub help: &'static str,
    /// Label sets shown at zero from the start (empty: the family appears at its first
    /// use). Alerts name these, and `rate()` needs a series before the first event.
    pub at_zero: &'static [&'static [(&'static str, &'static str)]],
}

/// `keyward_build_info{version,commit}`: always 1.
pub const BUILD_INFO: &str = "keyward_build_info";
/// `keyward_http_requests_total{method,route,status}`.
pub const HTTP_REQUESTS: &str = "keyward_http_requests_total";
/// `keyward_http_request_duration_seconds{method,route}`.
pub const HTTP_REQUEST_DURATION: &str = "keyward_http_request_duration_seconds";
/// `keyward_upstream_responses_total{method,route,class}`.
pub const UPSTREAM_RESPONSES: &str = "keyward_upstream_responses_total";
/// `keyward_upstream_duration_seconds{method,route}`.
pub const UPSTREAM_DURATION: &str = "keyward_upstream_duration_seconds";
/// `keyward_http_open_connections`.
pub const HTTP_OPEN_CONNECTIONS: &str = "keyward_http_open_connections";
/// `keyward_http_connection_timeouts_total{timeout}`.
pub const HTTP_CONNECTION_TIMEOUTS: &str = "keyward_http_connection_timeouts_total";
/// `keyward_auth_failures_total{reason}`.
pub const AUTH_FAILURES: &str = "keyward_auth_failures_total";
/// `keyward_rate_limited_total`.
pub const RATE_LIMITED: &str = "keyward_rate_limited_total";
/// `keyward_ratelimit_redis_failures_total`.
pub const RATELIMIT_REDIS_FAILURES: &str = "keyward_ratelimit_redis_failures_total";
/// `keyward_ratelimit_redis_fallback_total`.
pub const RATELIMIT_REDIS_FALLBACK: &str = "keyward_ratelimit_redis_fallback_total";
/// `keyward_cache_hits_total{cache}`.
pub const CACHE_HITS: &str = "keyward_cache_hits_total";
/// `keyward_cache_misses_total{cache}`.
pub const CACHE_MISSES: &str = "keyward_cache_misses_total";
/// `keyward_cache_bypassed_total{cache}`.
pub const CACHE_BYPASSED: &str = "keyward_cache_bypassed_total";
/// `keyward_storage_errors_total{kind}`.
pub const STORAGE_ERRORS: &str = "keyward_storage_errors_total";
/// `keyward_meter_dropped_rows_total`.
pub const METER_DROPPED_ROWS: &str = "keyward_meter_dropped_rows_total";
/// `keyward_meter_flushed_rows_total`.
pub const METER_FLUSHED_ROWS: &str = "keyward_meter_flushed_rows_total";
/// `keyward_meter_flush_failures_total`.
pub const METER_FLUSH_FAILURES: &str = "keyward_meter_flush_failures_total";
/// `keyward_meter_flush_seconds`.
pub const METER_FLUSH_DURATION: &str = "keyward_meter_flush_seconds";
/// `keyward_meter_queue_depth`.
pub const METER_QUEUE_DEPTH: &str = "keyward_meter_queue_depth";

/// The `cache` label of the key cache (digest → key record).
pub const CACHE_KEY: &str = "key";
/// The `cache` label of the listing cache (account → its keys).
pub const CACHE_LISTING: &str = "listing";

/// The `kind` label of a storage error: the database could not be reached.
pub const STORAGE_UNAVAILABLE: &str = "unavailable";
/// The `kind` label of any other storage error (a bug or a corrupt row).
pub const STORAGE_OTHER: &str = "other";

/// Every family keyward itself emits (the process metrics, `process_*`, are described
/// by their collector).
pub const FAMILIES: &[Family] = &[
    Family {
        name: BUILD_INFO,
        kind: Kind::Gauge,
        labels: &["version", "commit"],
        help: "Always 1; the labels name the running build.",
        at_zero: &[],
    },
    Family {
        name: HTTP_REQUESTS,
        kind: Kind::Counter,
        labels: &["method", "route", "status"],
        help: "HTTP requests answered, by method, route template and status.",
        at_zero: &[],
    },
    Family {
        name: HTTP_REQUEST_DURATION,
        kind: Kind::Histogram,
        labels: &["method", "route"],
        help: "Time from a request's arrival to its response's headers, in seconds.",
        at_zero: &[],
    },
    Family {
        name: UPSTREAM_RESPONSES,
        kind: Kind::Counter,
        labels: &["method", "route", "class"],
        help: "Requests the gateway forwarded, by method, route template of the routes file and outcome: the upstream status class (1xx to 5xx), unreachable (502) or timeout (504).",
        at_zero: &[],
    },
    Family {
        name: UPSTREAM_DURATION,
        kind: Kind::Histogram,
        labels: &["method", "route"],
        help: "Time from forwarding a request to the upstream's response headers (or its failure), in seconds.",
        at_zero: &[],
    },
    Family {
        name: HTTP_OPEN_CONNECTIONS,
        kind: Kind::Gauge,
        labels: &[],
        help: "HTTP connections open now (at most --max-connections).",
        at_zero: &[&[]],
    },
    Family {
        name: HTTP_CONNECTION_TIMEOUTS,
        kind: Kind::Counter,
        labels: &["timeout"],
        help: "Connections closed by a timeout: header, body or idle.",
        at_zero: &[
            &[("timeout", "header")],
            &[("timeout", "body")],
            &[("timeout", "idle")],
        ],
    },
    Family {
        name: AUTH_FAILURES,
        kind: Kind::Counter,
        labels: &["reason"],
        help: "Requests whose API key did not authenticate, by reason.",
        at_zero: &[],
    },
    Family {
        name: RATE_LIMITED,
        kind: Kind::Counter,
        labels: &[],
        help: "Requests refused with 429 by a plan's rate limit.",
        at_zero: &[&[]],
    },
    Family {
        name: RATELIMIT_REDIS_FAILURES,
        kind: Kind::Counter,
        labels: &[],
        help: "Calls to Redis for a rate-limit decision that failed (error, timeout or bad reply).",
        at_zero: &[&[]],
    },
    Family {
        name: RATELIMIT_REDIS_FALLBACK,
        kind: Kind::Counter,
        labels: &[],
        help: "Rate-limit decisions counted on this node alone because Redis was unavailable (fail open).",
        at_zero: &[&[]],
    },
    Family {
        name: CACHE_HITS,
        kind: Kind::Counter,
        labels: &["cache"],
        help: "Cache lookups answered from memory, by cache (key, listing).",
        at_zero: &[&[("cache", CACHE_KEY)], &[("cache", CACHE_LISTING)]],
    },
    Family {
        name: CACHE_MISSES,
        kind: Kind::Counter,
        labels: &["cache"],
        help: "Cache lookups that read storage, by cache (key, listing).",
        at_zero: &[&[("cache", CACHE_KEY)], &[("cache", CACHE_LISTING)]],
    },
    Family {
        name: CACHE_BYPASSED,
        kind: Kind::Counter,
        labels: &["cache"],
        help: "Cache lookups sent to storage because the change feed was down, by cache.",
        at_zero: &[&[("cache", CACHE_KEY)], &[("cache", CACHE_LISTING)]],
    },
    Family {
        name: STORAGE_ERRORS,
        kind: Kind::Counter,
        labels: &["kind"],
        help: "Storage errors a request met: unavailable (the database could not be reached) or other.",
        at_zero: &[&[("kind", STORAGE_UNAVAILABLE)], &[("kind", STORAGE_OTHER)]],
    },
    Family {
        name: METER_DROPPED_ROWS,
        kind: Kind::Counter,
        labels: &[],
        help: "Request-history rows dropped because the metering queue was full (usage still counted).",
        at_zero: &[&[]],
    },
    Family {
        name: METER_FLUSHED_ROWS,
        kind: Kind::Counter,
        labels: &[],
        help: "Request-history rows written to storage.",
        at_zero: &[&[]],
    },
    Family {
        name: METER_FLUSH_FAILURES,
        kind: Kind::Counter,
        labels: &[],
        help: "Metering batches storage refused (kept and retried).",
        at_zero: &[&[]],
    },
    Family {
        name: METER_FLUSH_DURATION,
        kind: Kind::Histogram,
        labels: &[],
        help: "Time one metering batch took to write, in seconds.",
        at_zero: &[],
    },
    Family {
        name: METER_QUEUE_DEPTH,
        kind: Kind::Gauge,
        labels: &[],
        help: "Request-history rows waiting to be written (at most --meter-capacity).",
        at_zero: &[&[]],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_follow_prometheus_naming() {
        let mut seen = std::collections::HashSet::new();
        for f in FAMILIES {
            assert!(seen.insert(f.name), "{} listed twice", f.name);
            assert!(f.name.starts_with("keyward_"), "{}", f.name);
            assert_eq!(
                f.kind == Kind::Counter,
                f.name.ends_with("_total"),
                "{}: counters, and only counters, end in _total",
                f.name
            );
            assert!(!f.help.is_empty());
            for set in f.at_zero {
                let names: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
                assert_eq!(
                    names, f.labels,
                    "{}: a zero series names every label",
                    f.name
                );
            }
        }
    }
}
