//! The routes file of `--routes FILE` (API.md §Gateway): TOML read once at start, every
//! error reported with its line, and compiled into one `matchit` router per method, so
//! that matching a request allocates nothing.
//!
//! A template is a path whose segments are each a literal or `{name}` (one segment).
//! Of two routes of one method that some path matches both, the one within the other
//! serves it (`/v1/videos/latest` before `/v1/videos/{id}`); two that are the same but
//! for their parameters' names, or that cross (`/a/{x}/c` and `/a/b/{y}`), are refused.
//! So is a route that some path of keyward's own matches ([`KEYWARD_PATHS`]): keyward
//! serves those itself.

use std::sync::OnceLock;

use axum::http::Method;
use keyward_core::Scope;
use metrics::{Counter, Histogram};
use serde::Deserialize;
use toml::Spanned;

/// The paths keyward serves itself, each with everything under it. A route that a path
/// of one of them matches is refused (API.md §Gateway). A unit test holds this list to
/// every path of the OpenAPI document.
pub const KEYWARD_PATHS: &[&str] = &[
    "/v1/api-keys",
    "/v1/request-history",
    "/v1/usage",
    "/v1/audit-log",
    "/v1/webhooks",
    "/operator",
    "/authorize",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/console",
    "/secret-scanning",
];

/// The methods a route may name: the standard ones whose requests carry on to an API.
const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Most credits one request of a route may cost.
pub const MAX_COST: u32 = 1_000_000;

/// A routes file that cannot be served, with the line at fault (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutesError {
    /// The line at fault (0 when the file could not be read).
    pub line: usize,
    /// What is wrong there.
    pub message: String,
}

impl std::fmt::Display for RoutesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for RoutesError {}

/// One route of the file.
#[derive(Debug)]
pub struct Route {
    /// Its method.
    pub method: Method,
    /// Its path template as written, e.g. `/v1/videos/{video_id}`: the name under
    /// which history, usage and metrics record its requests. Made `'static` once at
    /// start (the file is read once per process), as the envelope's route names are.
    pub template: &'static str,
    /// The scopes a key needs, all of them.
    pub scopes: Vec<String>,
    /// The credits one request takes.
    pub cost: u32,
    /// Its line in the file.
    pub line: usize,
    /// `keyward_upstream_responses_total` of each [`UpstreamOutcome`], made on first use.
    outcomes: [OnceLock<Counter>; UpstreamOutcome::ALL.len()],
    /// `keyward_upstream_duration_seconds`, made on first use.
    duration: OnceLock<Histogram>,
}

/// How a forwarded request ended, as the `class` label of the upstream metrics says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// The upstream answered with a status of this class (1 to 5).
    Class(u8),
    /// The upstream could not be reached, or broke its response (a `502`).
    Unreachable,
    /// The upstream sent no response head in time (a `504`).
    TimedOut,
}

impl UpstreamOutcome {
    const ALL: [Self; 7] = [
        Self::Class(1),
        Self::Class(2),
        Self::Class(3),
        Self::Class(4),
        Self::Class(5),
        Self::Unreachable,
        Self::TimedOut,
    ];

    /// The outcome of an upstream's status.
    #[must_use]
    pub fn of_status(status: u16) -> Self {
        // hyper only hands over statuses from 100 to 999; 6xx and up count as 5xx.
        Self::Class(u8::try_from(status / 100).unwrap_or(5).clamp(1, 5))
    }

    /// The `class` label.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Class(1) => "1xx",
            Self::Class(2) => "2xx",
            Self::Class(3) => "3xx",
            Self::Class(4) => "4xx",
            Self::Class(_) => "5xx",
            Self::Unreachable => "unreachable",
            Self::TimedOut => "timeout",
        }
    }

    fn slot(self) -> usize {
        match self {
            Self::Class(c) => usize::from(c.clamp(1, 5) - 1),
            Self::Unreachable => 5,
            Self::TimedOut => 6,
        }
    }
}

impl Route {
    /// Counts one forwarded request of this route that ended in `outcome` after
    /// `seconds` (to the upstream's response head, or to the failure).
    pub fn record_upstream(&self, outcome: UpstreamOutcome, seconds: f64) {
        let method = static_name(&self.method);
        self.outcomes[outcome.slot()]
            .get_or_init(|| {
                metrics::counter!(
                    keyward_core::metric::UPSTREAM_RESPONSES,
                    "method" => method, "route" => self.template, "class" => outcome.label()
                )
            })
            .increment(1);
        self.duration
            .get_or_init(|| {
                metrics::histogram!(
                    keyward_core::metric::UPSTREAM_DURATION,
                    "method" => method, "route" => self.template
                )
            })
            .record(seconds);
    }
}

/// The routes of a file, matched by method and path.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// One router per method that has routes, to an index of `routes`.
    by_method: Vec<(Method, matchit::Router<usize>)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    method: Spanned<String>,
    path: Spanned<String>,
    #[serde(default)]
    scopes: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    cost: Option<Spanned<i64>>,
}

/// One segment of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment<'a> {
    Literal(&'a str),
    Param,
}

impl Segment<'_> {
    /// Whether some path segment matches both.
    fn overlaps(self, other: Self) -> bool {
        match (self, other) {
            (Self::Literal(a), Self::Literal(b)) => a == b,
            _ => true,
        }
    }
}

impl RouteTable {
    /// Reads the file at `path`.
    ///
    /// # Errors
    /// The file cannot be read (line 0), or [`RouteTable::parse`]'s.
    pub fn load(path: &std::path::Path) -> Result<Self, RoutesError> {
        let text = std::fs::read_to_string(path).map_err(|e| RoutesError {
            line: 0,
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text)
    }

    /// Parses and checks a routes file.
    ///
    /// # Errors
    /// The first fault, with its line: TOML syntax, an unknown or missing field, a bad
    /// method, template, scope or cost, no route at all, two routes that overlap, or a
    /// route over one of keyward's own paths.
    pub fn parse(text: &str) -> Result<Self, RoutesError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let at = |span: std::ops::Range<usize>, message: String| RoutesError {
            line: line_of(span.start),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| RoutesError {
            line: e.span().map_or(1, |s| line_of(s.start)),
            message: e.message().trim().to_owned(),
        })?;
        if raw.route.is_empty() {
            return Err(RoutesError {
                line: 1,
                message: "no [[route]]: the file declares no route".to_owned(),
            });
        }
        let mut routes: Vec<Route> = Vec::with_capacity(raw.route.len());
        for spanned in raw.route {
            let line = line_of(spanned.span().start);
            let raw = spanned.into_inner();
            let method =
                parse_method(raw.method.get_ref()).map_err(|m| at(raw.method.span(), m))?;
            let template = raw.path.get_ref();
            let segments = parse_template(template).map_err(|m| at(raw.path.span(), m))?;
            if let Some(own) = KEYWARD_PATHS
                .iter()
                .find(|own| reaches_keyward_path(&segments, own))
            {
                return Err(at(
                    raw.path.span(),
                    format!("`{template}` reaches {own}, which keyward serves itself"),
                ));
            }
            for earlier in routes.iter().filter(|r| r.method == method) {
                let theirs = parse_template(earlier.template).unwrap_or_default();
                let (narrower, wider) = (within(&segments, &theirs), within(&theirs, &segments));
                // One strictly within the other is served by the narrower one (a literal
                // segment wins over a parameter, as in keyward's own router).
                if narrower != wider || !overlap(&segments, &theirs) {
                    continue;
                }
                {
                    let how = if narrower {
                        "duplicates"
                    } else {
                        "overlaps, with neither within the other,"
                    };
                    return Err(at(
                        raw.path.span(),
                        format!(
                            "{method} {template} {how} the route {method} {} of line {}",
                            earlier.template, earlier.line
                        ),
                    ));
                }
            }
            let scopes = match raw.scopes {
                None => Vec::new(),
                Some(scopes) => {
                    let span = scopes.span();
                    let scopes = scopes.into_inner();
                    for (i, scope) in scopes.iter().enumerate() {
                        Scope::parse(scope).map_err(|e| {
                            at(
                                span.clone(),
                                format!("scopes: `{scope}` is not a scope: {e}"),
                            )
                        })?;
                        if scopes[..i].contains(scope) {
                            return Err(at(span, format!("scopes: `{scope}` is listed twice")));
                        }
                    }
                    scopes
                }
            };
            let cost = match raw.cost {
                None => 1,
                Some(cost) => u32::try_from(*cost.get_ref())
                    .ok()
                    .filter(|c| *c <= MAX_COST)
                    .ok_or_else(|| {
                        at(
                            cost.span(),
                            format!("cost: must be a whole number from 0 to {MAX_COST}"),
                        )
                    })?,
            };
            routes.push(Route {
                method,
                template: Box::leak(template.clone().into_boxed_str()),
                scopes,
                cost,
                line,
                outcomes: std::array::from_fn(|_| OnceLock::new()),
                duration: OnceLock::new(),
            });
        }
        let mut by_method: Vec<(Method, matchit::Router<usize>)> = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            let slot = match by_method.iter().position(|(m, _)| *m == route.method) {
                Some(slot) => slot,
                None => {
                    by_method.push((route.method.clone(), matchit::Router::new()));
                    by_method.len() - 1
                }
            };
            // Parameters renamed by position: their names do not matter to the match,
            // and matchit refuses two names for one position.
            let mut n = 0;
            let normalised: Vec<String> = parse_template(route.template)
                .unwrap_or_default()
                .into_iter()
                .map(|s| match s {
                    Segment::Literal(l) => l.to_owned(),
                    Segment::Param => {
                        n += 1;
                        format!("{{p{n}}}")
                    }
                })
                .collect();
            by_method[slot]
                .1
                .insert(format!("/{}", normalised.join("/")), index)
                .map_err(|e| RoutesError {
                    line: route.line,
                    message: format!("{} {}: {e}", route.method, route.template),
                })?;
        }
        Ok(Self { routes, by_method })
    }

    /// The route of a request, if any. Allocates nothing. A path with a `.` or `..`
    /// segment (plain or percent-encoded) matches none: an upstream that resolves them
    /// would serve another path than the one authorized.
    #[must_use]
    pub fn find(&self, method: &Method, path: &str) -> Option<&Route> {
        if has_dot_segment(path) {
            return None;
        }
        let (_, router) = self.by_method.iter().find(|(m, _)| m == method)?;
        let found = router.at(path).ok()?;
        self.routes.get(*found.value)
    }

    /// Every route, in file order.
    #[must_use]
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// The name of one of [`METHODS`], for a metric label.
fn static_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OPTIONS",
    }
}

fn parse_method(raw: &str) -> Result<Method, String> {
    let upper = raw.to_ascii_uppercase();
    METHODS
        .iter()
        .find(|m| m.as_str() == upper)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = METHODS.iter().map(Method::as_str).collect();
            format!("method: `{raw}` is not one of {}", names.join(", "))
        })
}

/// The segments of a template, or why it is not one.
fn parse_template(template: &str) -> Result<Vec<Segment<'_>>, String> {
    let Some(rest) = template.strip_prefix('/') else {
        return Err(format!("path: `{template}` must start with /"));
    };
    let mut names: Vec<&str> = Vec::new();
    let mut segments = Vec::new();
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err(format!(
                "path: `{template}` has an empty segment (`//` or a trailing /)"
            ));
        }
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let mut chars = name.chars();
            let good = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !good {
                return Err(format!(
                    "path: `{{{name}}}` in `{template}` is not a parameter: a name of letters, digits and _"
                ));
            }
            if names.contains(&name) {
                return Err(format!("path: `{{{name}}}` appears twice in `{template}`"));
            }
            names.push(name);
            segments.push(Segment::Param);
        } else if segment == "." || segment == ".." {
            return Err(format!("path: `{template}` has a . or .. segment"));
        } else if let Some(bad) = segment.chars().find(|c| {
            !c.is_ascii_graphic()
                || matches!(
                    c,
                    '{' | '}' | '?' | '#' | '\\' | '`' | '"' | '<' | '>' | '^' | '|'
                )
        }) {
            return Err(format!(
                "path: `{template}` holds {bad:?}; a segment is a literal or a whole {{name}}"
            ));
        } else {
            segments.push(Segment::Literal(segment));
        }
    }
    Ok(segments)
}

/// Whether every path `a` matches is one `b` matches too.
fn within(a: &[Segment<'_>], b: &[Segment<'_>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (_, Segment::Param) => true,
            (Segment::Literal(p), Segment::Literal(q)) => p == q,
            (Segment::Param, Segment::Literal(_)) => false,
        })
}

/// Whether some path matches both templates.
fn overlap(a: &[Segment<'_>], b: &[Segment<'_>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.overlaps(*y))
}

/// Whether some path that `segments` matches is `own` or under it.
fn reaches_keyward_path(segments: &[Segment<'_>], own: &str) -> bool {
    let own: Vec<Segment<'_>> = own
        .trim_start_matches('/')
        .split('/')
        .map(Segment::Literal)
        .collect();
    segments.len() >= own.len() && segments.iter().zip(&own).all(|(x, y)| x.overlaps(*y))
}

/// Whether `path` has a `.` or `..` segment, plainly or percent-encoded (`%2e`).
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(is_dot_segment)
}

/// Whether a segment is `.` or `..`, each dot plain or percent-encoded (`%2e`, `%2E`).
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() && dots < 3 {
        rest = match rest {
            [b'.', after @ ..] => after,
            [b'%', b'2', b'e' | b'E', after @ ..] => after,
            _ => return false,
        };
        dots += 1;
    }
    rest.is_empty() && (dots == 1 || dots == 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> RoutesError {
        RouteTable::parse(text).expect_err("refused")
    }

    const GOOD: &str = r#"
[[route]]
method = "POST"
path = "/v1/videos"
scopes = ["videos:create"]
cost = 5

[[route]]
method = "GET"
path = "/v1/videos/{video_id}"
scopes = ["read"]

[[route]]
method = "GET"
path = "/v1/videos/latest"
"#;

    #[test]
    fn a_good_file_matches_by_method_and_template() {
        let table = RouteTable::parse(GOOD).unwrap();
        let post = table.find(&Method::POST, "/v1/videos").unwrap();
        assert_eq!((post.template, post.cost, post.line), ("/v1/videos", 5, 2));
        assert_eq!(post.scopes, ["videos:create"]);
        let get = table.find(&Method::GET, "/v1/videos/abc").unwrap();
        assert_eq!((get.template, get.cost), ("/v1/videos/{video_id}", 1));
        assert_eq!(
            table
                .find(&Method::GET, "/v1/videos/latest")
                .unwrap()
                .template,
            "/v1/videos/latest"
        );
        for (method, path) in [
            (Method::GET, "/v1/videos"),
            (Method::DELETE, "/v1/videos/abc"),
            (Method::GET, "/v1/videos/abc/more"),
            (Method::GET, "/v1/videos/"),
            (Method::POST, "/v1/videos/.."),
            (Method::GET, "/v1/videos/%2E%2e"),
            (Method::GET, "/other"),
        ] {
            assert!(table.find(&method, path).is_none(), "{method} {path}");
        }
    }

    #[test]
    fn dot_segments_are_one_or_two_dots_each_plain_or_percent_encoded() {
        for dots in [".", "..", "%2e", "%2E", "%2e%2E", ".%2e", "%2E."] {
            assert!(is_dot_segment(dots), "{dots}");
        }
        for other in [
            "",
            "...",
            "%2e%2e%2e",
            "a",
            ".a",
            "a.",
            "%2",
            "%2f",
            "%252e",
            "..%2e",
        ] {
            assert!(!is_dot_segment(other), "{other}");
        }
        assert!(has_dot_segment("/v1/%2E%2e/x"));
        assert!(!has_dot_segment("/v1/videos/v1.mp4"));
    }

    #[test]
    fn a_parameter_of_another_method_does_not_shadow_a_literal() {
        let table = RouteTable::parse(
            "[[route]]\nmethod = \"GET\"\npath = \"/a/new\"\n[[route]]\nmethod = \"POST\"\npath = \"/a/{id}\"\n[[route]]\nmethod = \"GET\"\npath = \"/b/{x}/c\"\n[[route]]\nmethod = \"PUT\"\npath = \"/b/{y}/c\"\n",
        )
        .unwrap();
        assert_eq!(
            table.find(&Method::POST, "/a/new").unwrap().template,
            "/a/{id}"
        );
        assert_eq!(
            table.find(&Method::PUT, "/b/1/c").unwrap().template,
            "/b/{y}/c"
        );
    }

    #[test]
    fn each_fault_is_reported_with_its_line() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "[[route]]\nmethod = \"GET\"\npath = \"/a\"\nscopes = [\"read\"\n",
                4,
                "",
            ),
            (
                "[[route]]\nmethod = \"GET\"\npath = \"/a\"\nweight = 3\n",
                4,
                "weight",
            ),
            ("[[route]]\nmethod = \"GET\"\n", 1, "path"),
            ("[[route]]\nmethod = \"BREW\"\npath = \"/a\"\n", 2, "method"),
            (
                "[[route]]\nmethod = \"GET\"\npath = \"a\"\n",
                3,
                "must start with /",
            ),
            (
                "[[route]]\nmethod = \"GET\"\npath = \"/a//b\"\n",
                3,
                "empty segment",
            ),
            (
                "[[route]]\nmethod = \"GET\"\npath = \"/a/{b-c}\"\n",
                3,
                "not a parameter",
            ),
            (
                "[[route]]\nmethod = \"GET\"\npath = \"/a/x{b}\"\n",
                3,
                "whole {name}",
            ),
            (
                "[[route]]\nmethod = \"GET\"\npath = \"/a/{b}/{b}\"\n",
                3,
                "twice",
            ),
            (
                "[[route]]\nmethod = \"GET\"\npath = \"/a\"\nscopes = [\"Bad\"]\n",
                4,
                "not a scope",
            ),
            (
                "[[route]]\nmethod = \"GET\"\npath = \"/a\"\nscopes = [\"x\", \"x\"]\n",
                4,
                "twice",
            ),
            (
                "[[route]]\nmethod = \"GET\"\npath = \"/a\"\ncost = -1\n",
                4,
                "cost",
            ),
            ("# nothing\n", 1, "no route"),
            (
                "[[route]]\nmethod = \"GET\"\npath = \"/a/{id}\"\n\n[[route]]\nmethod = \"GET\"\npath = \"/a/{other}\"\n",
                7,
                "duplicates the route GET /a/{id} of line 1",
            ),
            (
                "[[route]]\nmethod = \"GET\"\npath = \"/a/{x}/c\"\n[[route]]\nmethod = \"GET\"\npath = \"/a/b/{y}\"\n",
                6,
                "overlaps",
            ),
            (
                "[[route]]\nmethod = \"GET\"\npath = \"/v1/api-keys/{id}/x\"\n",
                3,
                "keyward serves itself",
            ),
            (
                "[[route]]\nmethod = \"POST\"\npath = \"/{version}/usage\"\n",
                3,
                "/v1/usage",
            ),
            (
                "[[route]]\nmethod = \"GET\"\npath = \"/{any}\"\n",
                3,
                "keyward serves itself",
            ),
            (
                "[[route]]\nmethod = \"GET\"\npath = \"/operator/v1/x\"\n",
                3,
                "/operator",
            ),
        ];
        for (text, line, words) in cases {
            let e = error_of(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.message.contains(words), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_route_within_another_serves_its_paths_and_the_wider_one_the_rest() {
        let table = RouteTable::parse(
            "[[route]]\nmethod = \"GET\"\npath = \"/a/{x}/{y}\"\n[[route]]\nmethod = \"GET\"\npath = \"/a/b/c\"\n[[route]]\nmethod = \"GET\"\npath = \"/a/b/{z}\"\n",
        )
        .unwrap();
        for (path, template) in [
            ("/a/b/c", "/a/b/c"),
            ("/a/b/d", "/a/b/{z}"),
            ("/a/q/c", "/a/{x}/{y}"),
            ("/a/bb/c", "/a/{x}/{y}"),
        ] {
            assert_eq!(
                table.find(&Method::GET, path).unwrap().template,
                template,
                "{path}"
            );
        }
    }

    #[test]
    fn the_same_template_under_two_methods_is_two_routes() {
        let table = RouteTable::parse(
            "[[route]]\nmethod = \"get\"\npath = \"/a/{id}\"\n[[route]]\nmethod = \"DELETE\"\npath = \"/a/{id}\"\n",
        )
        .unwrap();
        assert_eq!(table.routes().len(), 2);
        assert!(table.find(&Method::GET, "/a/1").is_some());
        assert!(table.find(&Method::DELETE, "/a/1").is_some());
    }
}
