//! Reading typed settings from environment-style variables, shared by the gateway and the
//! bridge: a [`Parser`] over a lookup function (tests pass a map) that records every problem
//! instead of stopping at the first, a [`Secret`] type that never prints, and [`SecretUrl`] /
//! [`mask_url`] for connection URLs that carry passwords. It knows no variable names; each
//! service declares its own.

use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

/// A secret value whose `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<[u8]>);

impl Secret {
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Secret(value.into().into_boxed_slice())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text (it was read from a UTF-8 environment variable).
    pub fn expose_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(*** {} bytes)", self.0.len())
    }
}

/// A connection URL that may carry credentials (`redis://:password@host`,
/// `postgres://user:password@host/db?password=...`): `Debug` and `Display` print it masked by
/// [`mask_url`]; only [`SecretUrl::expose`] gives the URL itself, to hand to a client library.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(Box<str>);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into().into_boxed_str())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its credentials masked, for logs, health answers and error messages.
    pub fn masked(&self) -> String {
        mask_url(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.masked())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Query parameters whose value is masked: any name containing one of these (ASCII case
/// ignored), e.g. PostgreSQL's `password` and `sslpassword`.
const SECRET_PARAMS: [&str; 4] = ["pass", "secret", "token", "key"];

/// `url` safe to print: the password of the user info masked (`redis://user:***@host`), a user
/// info without `:` masked whole (NATS reads `nats://<token>@host` as a token:
/// `nats://***@host`), and the values of query parameters such as `password=` masked. Several
/// URLs separated by commas (`NATS_URL`) are masked one by one. Text that is not a URL is
/// returned as is: it holds no user info to mask.
pub fn mask_url(url: &str) -> String {
    url.split(',').map(mask_one).collect::<Vec<_>>().join(",")
}

fn mask_one(url: &str) -> String {
    let (base, fragment) = match url.find('#') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let (base, query) = match base.find('?') {
        Some(i) => (&base[..i], Some(&base[i + 1..])),
        None => (base, None),
    };
    let mut out = String::with_capacity(url.len());
    match base.find("://") {
        // The last `@` before the query ends the user info: a password may hold a raw `@`.
        Some(scheme_end) if base[scheme_end + 3..].contains('@') => {
            let rest = &base[scheme_end + 3..];
            let at = rest.rfind('@').expect("checked above");
            let userinfo = &rest[..at];
            out.push_str(&base[..scheme_end + 3]);
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str("***"),
            }
            out.push_str(&rest[at..]);
        }
        _ => out.push_str(base),
    }
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret_param(name) => format!("{name}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out.push_str(fragment);
    out
}

/// `text` (a log line, an error message) with every URL in it masked as [`mask_url`] does, and
/// the `password: Some("...")` of a parsed URL's `Debug` form (async-nats logs its server
/// addresses so at debug level): the last line of defence for messages that carry a URL from
/// somewhere else (a NATS connect error naming the servers, a configuration dump). A URL ends at
/// white space, a quote or a bracket.
pub fn redact(text: &str) -> String {
    mask_debug_passwords(&redact_urls(text))
}

/// Whether [`redact`] may change `text` (cheap test before the work).
pub fn may_hold_secret(text: &str) -> bool {
    text.contains("://") || text.contains(DEBUG_PASSWORD) || text.contains(DEBUG_USERNAME)
}

const DEBUG_PASSWORD: &str = "password: Some(";
const DEBUG_USERNAME: &str = "username: ";

/// In the `Debug` form of a parsed URL: `password: Some("secret")` → `password: Some("***")`,
/// and a `username` followed by `password: None` (a token, for NATS) → `username: "***"`; also
/// JSON-escaped (`\"secret\"`).
fn mask_debug_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let next = [DEBUG_PASSWORD, DEBUG_USERNAME]
            .into_iter()
            .filter_map(|field| rest.find(field).map(|at| (at, field)))
            .min_by_key(|(at, _)| *at);
        let Some((at, field)) = next else { break };
        let after = at + field.len();
        out.push_str(&rest[..after]);
        rest = &rest[after..];
        let quote = if rest.starts_with("\\\"") { "\\\"" } else { "\"" };
        let Some(value) = rest.strip_prefix(quote) else { continue };
        let end = value.find(quote).unwrap_or(value.len());
        let secret = field == DEBUG_PASSWORD || value[end..].trim_start_matches(quote).starts_with(", password: None");
        out.push_str(quote);
        out.push_str(if secret { "***" } else { &value[..end] });
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

fn redact_urls(text: &str) -> String {
    let is_scheme = |c: char| c.is_ascii_alphanumeric() || "+.-".contains(c);
    let ends_url = |c: char| c.is_whitespace() || "\"'`<>()[]{},;|\\".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(sep) = rest.find("://") {
        let start = rest[..sep]
            .rfind(|c: char| !is_scheme(c))
            .map_or(0, |i| i + rest[i..].chars().next().map_or(1, char::len_utf8));
        let end = rest[sep + 3..].find(ends_url).map_or(rest.len(), |i| sep + 3 + i);
        out.push_str(&rest[..start]);
        out.push_str(&mask_one(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| name.contains(s))
}

/// One bad variable and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub var: &'static str,
    pub message: String,
}

/// Every problem found in one reading of the environment.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  {}: {}", p.var, p.message)).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<ConfigProblem>);

impl ConfigError {
    /// Whether `var` is among the problems (tests).
    pub fn names(&self, var: &str) -> bool {
        self.0.iter().any(|p| p.var == var)
    }
}

/// Reads variables through `lookup`, recording a problem for each bad value and returning the
/// default in its place, so that one run reports every bad variable.
pub struct Parser<F> {
    lookup: F,
    problems: Vec<ConfigProblem>,
}

impl<F: Fn(&str) -> Option<String>> Parser<F> {
    pub fn new(lookup: F) -> Self {
        Parser { lookup, problems: Vec::new() }
    }

    pub fn problem(&mut self, var: &'static str, message: impl Into<String>) {
        self.problems.push(ConfigProblem { var, message: message.into() });
    }

    /// The raw value, `None` when unset or blank.
    pub fn raw(&self, var: &str) -> Option<String> {
        (self.lookup)(var).filter(|v| !v.trim().is_empty())
    }

    pub fn string(&self, var: &str) -> Option<String> {
        self.raw(var).map(|v| v.trim().to_string())
    }

    pub fn string_or(&self, var: &str, default: &str) -> String {
        self.string(var).unwrap_or_else(|| default.to_string())
    }

    /// A required secret; `what` tells the operator what the value is.
    pub fn required_secret(&mut self, var: &'static str, what: &str) -> Secret {
        match (self.lookup)(var) {
            Some(v) if !v.is_empty() => Secret::new(v),
            _ => {
                self.problem(var, format!("is required ({what})"));
                Secret::new(Vec::new())
            }
        }
    }

    pub fn optional_secret(&self, var: &str) -> Option<Secret> {
        self.raw(var).map(Secret::new)
    }

    pub fn bool(&mut self, var: &'static str, default: bool) -> bool {
        match self.string(var).map(|v| v.to_ascii_lowercase()) {
            None => default,
            Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => true,
            Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => false,
            Some(v) => {
                self.problem(var, format!("'{v}' is not a boolean (use true or false)"));
                default
            }
        }
    }

    pub fn number<N>(&mut self, var: &'static str, default: N, range: RangeInclusive<N>) -> N
    where
        N: FromStr + PartialOrd + Copy + fmt::Display,
    {
        let Some(v) = self.string(var) else { return default };
        match v.parse::<N>() {
            Ok(n) if range.contains(&n) => n,
            _ => {
                self.problem(var, format!("'{v}' is not a whole number from {} to {}", range.start(), range.end()));
                default
            }
        }
    }

    /// Plain numbers are seconds (`60`, `0.5`); units `ms`, `s`, `m`, `h` are accepted.
    pub fn duration(&mut self, var: &'static str, default: Duration) -> Duration {
        let Some(v) = self.string(var) else { return default };
        match parse_duration(&v) {
            Some(d) if !d.is_zero() => d,
            _ => {
                self.problem(var, format!("'{v}' is not a positive duration (examples: 60, 1.5, 500ms, 30s, 5m, 1h)"));
                default
            }
        }
    }

    /// Comma-separated values, trimmed, trailing `/` removed, empties dropped.
    pub fn list(&self, var: &str) -> Option<Vec<String>> {
        self.string(var).map(|v| {
            v.split(',').map(|s| s.trim().trim_end_matches('/').to_string()).filter(|s| !s.is_empty()).collect()
        })
    }

    pub fn socket_addr(&mut self, var: &'static str, default: &str) -> SocketAddr {
        let v = self.string_or(var, default);
        v.parse().unwrap_or_else(|_| {
            self.problem(var, format!("'{v}' is not an address like 0.0.0.0:8001"));
            default.parse().expect("default address parses")
        })
    }

    /// Records `result`'s error as a problem of `var`.
    pub fn check<T>(&mut self, var: &'static str, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.problem(var, message)).ok()
    }

    pub fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError(self.problems))
        }
    }
}

pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().ok()?;
    (value.is_finite() && value >= 0.0 && value * scale < 1e9).then(|| Duration::from_secs_f64(value * scale))
}

/// Unit tests' settings: runs `read` on a parser over `pairs` and finishes it.
#[cfg(test)]
pub(crate) fn read_pairs<T>(
    pairs: &[(&str, &str)],
    read: impl FnOnce(&mut Parser<Box<dyn Fn(&str) -> Option<String>>>) -> T,
) -> Result<T, ConfigError> {
    let map: std::collections::HashMap<String, String> =
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut p = Parser::new(Box::new(move |k: &str| map.get(k).cloned()) as Box<dyn Fn(&str) -> Option<String>>);
    let value = read(&mut p);
    p.finish(value)
}

/// `LOG_FORMAT`: human-readable text (default) or one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl<F: Fn(&str) -> Option<String>> Parser<F> {
    pub fn log_format(&mut self, var: &'static str) -> LogFormat {
        match self.string(var).map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                self.problem(var, format!("'{other}' is not a log format (text or json)"));
                LogFormat::Text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser(pairs: &[(&str, &str)]) -> Parser<impl Fn(&str) -> Option<String>> {
        let map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Parser::new(move |k: &str| map.get(k).cloned())
    }

    #[test]
    fn durations_accept_seconds_and_units() {
        for (text, ms) in
            [("60", 60_000), ("1.5", 1_500), ("500ms", 500), ("30s", 30_000), ("5m", 300_000), ("1h", 3_600_000)]
        {
            assert_eq!(parse_duration(text), Some(Duration::from_millis(ms)), "{text}");
        }
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("-1"), None);
    }

    #[test]
    fn collects_every_problem() {
        let mut p = parser(&[("A", "x"), ("B", "maybe"), ("C", "0")]);
        assert_eq!(p.number("A", 3u32, 1..=10), 3);
        assert!(p.bool("B", true));
        assert_eq!(p.duration("C", Duration::from_secs(1)), Duration::from_secs(1));
        let _ = p.required_secret("D", "a key");
        let err = p.finish(()).unwrap_err();
        assert_eq!(err.0.len(), 4);
        assert!(err.to_string().contains("D: is required (a key)"));
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(*** 7 bytes)");
    }

    #[test]
    fn urls_are_masked() {
        for (url, masked) in [
            ("redis://u:secret@h:1/0", "redis://u:***@h:1/0"),
            ("redis://:secret@h:6379", "redis://:***@h:6379"),
            ("rediss://default:s3cr%40t@h", "rediss://default:***@h"),
            ("redis://u:p@ss@h/2", "redis://u:***@h/2"),
            ("nats://tok3n@h:4222", "nats://***@h:4222"),
            ("postgres://app:pw@db:5432/menu", "postgres://app:***@db:5432/menu"),
            (
                "postgresql+psycopg://app:pw@db/menu?sslmode=require",
                "postgresql+psycopg://app:***@db/menu?sslmode=require",
            ),
            (
                "postgres://db/menu?user=app&password=pw&SSLPASSWORD=x",
                "postgres://db/menu?user=app&password=***&SSLPASSWORD=***",
            ),
            ("nats://a:pw1@h1:4222,nats://b:pw2@h2:4222", "nats://a:***@h1:4222,nats://b:***@h2:4222"),
            ("redis://h:1", "redis://h:1"),
            ("redis://h:1/0#frag", "redis://h:1/0#frag"),
            ("", ""),
            ("not a url", "not a url"),
        ] {
            assert_eq!(mask_url(url), masked, "{url}");
        }
    }

    #[test]
    fn urls_inside_text_are_masked() {
        let text = r#"cannot connect to NATS at nats://u:pw1@h1:4222,nats://t0k@h2 within 10s; Config { redis: "redis://:pw2@r:6379/0", otel: Some("http://a:pw3@c:4318"), plain: "x://y" }"#;
        let redacted = redact(text);
        for secret in ["pw1", "t0k", "pw2", "pw3"] {
            assert!(!redacted.contains(secret), "{secret} in {redacted}");
        }
        assert!(redacted.contains("nats://u:***@h1:4222,nats://***@h2 within 10s"), "{redacted}");
        assert!(redacted.contains(r#""redis://:***@r:6379/0""#), "{redacted}");
        assert!(redacted.ends_with(r#"plain: "x://y" }"#), "{redacted}");
        assert_eq!(redact("no url here, ://"), "no url here, ://");
        assert_eq!(redact("é→redis://:pw@h"), "é→redis://:***@h");
        let debug = r#"server=ServerAddr(Url { scheme: "nats", username: "gw", password: Some("pw4"), host: Some(Domain("h")) })"#;
        assert_eq!(
            redact(debug),
            r#"server=ServerAddr(Url { scheme: "nats", username: "gw", password: Some("***"), host: Some(Domain("h")) })"#
        );
        let json = r#"{"server":"Url { password: Some(\"pw5\"), port: Some(4222) }"}"#;
        assert_eq!(redact(json), r#"{"server":"Url { password: Some(\"***\"), port: Some(4222) }"}"#);
        assert_eq!(redact("password: None, password: Some(x"), "password: None, password: Some(x");
        let token = r#"Url { username: "t0ken", password: None, host: Some(Domain("h")) }"#;
        assert_eq!(redact(token), r#"Url { username: "***", password: None, host: Some(Domain("h")) }"#);
        let user = r#"Url { username: "gw", password: Some("pw6") }"#;
        assert_eq!(redact(user), r#"Url { username: "gw", password: Some("***") }"#);
        assert_eq!(redact(r#"{"username": "x"}"#), r#"{"username": "x"}"#);
        assert!(may_hold_secret(debug) && may_hold_secret("a://b") && !may_hold_secret("plain line"));
    }

    #[test]
    fn secret_urls_print_masked() {
        let url = SecretUrl::new("redis://:hunter2@h:6379/0");
        assert_eq!(url.expose(), "redis://:hunter2@h:6379/0");
        assert_eq!(url.to_string(), "redis://:***@h:6379/0");
        assert!(!format!("{url:?} {:?}", Some(&url)).contains("hunter2"));
    }
}
