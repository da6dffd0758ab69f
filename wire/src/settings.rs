//! Reading typed settings from environment-style variables, shared by the gateway and the
//! bridge: a [`Parser`] over a lookup function (tests pass a map) that records every problem
//! instead of stopping at the first, and a [`Secret`] type that never prints. It knows no
//! variable names; each service declares its own.

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
}
