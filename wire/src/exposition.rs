//! Which text format a metrics scrape gets (protocol section 7): Prometheus text 0.0.4 by
//! default, which the old gateway served and every scraper reads, and OpenMetrics 1.0 only when
//! the scraper lists `application/openmetrics-text` in `Accept`. Both services' registries encode
//! OpenMetrics; [`negotiate`] rewrites it for the others. Pure text handling, no registry.

/// `Content-Type` of Prometheus text 0.0.4.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics 1.0.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type and body for a scrape with this `Accept` header, from the registry's
/// OpenMetrics encoding.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    if wants_openmetrics(accept.unwrap_or_default()) {
        (OPENMETRICS_TEXT, openmetrics)
    } else {
        (PROMETHEUS_TEXT, to_prometheus_text(&openmetrics))
    }
}

/// Whether `accept` names OpenMetrics with a non-zero quality.
fn wants_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let refused = parts.any(|p| p.strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()) == Some(0.0));
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

/// OpenMetrics text as Prometheus text 0.0.4: counter families are named with their `_total`
/// samples' name in `# HELP`/`# TYPE`, `# UNIT` lines and the `# EOF` terminator are dropped.
fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line.strip_prefix("# TYPE ").and_then(|rest| rest.strip_suffix(" counter")) {
            counters.insert(name);
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) && !name.ends_with("_total") { "_total" } else { "" };
                out.push_str(format!("{prefix}{name}{suffix} {tail}").trim_end());
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "# HELP wsgateway_events_processed Legacy: events processed.\n\
        # TYPE wsgateway_events_processed counter\n\
        wsgateway_events_processed_total 3\n\
        # HELP gateway_connections Open WebSocket connections.\n\
        # TYPE gateway_connections gauge\n\
        gateway_connections{endpoint=\"waiter\"} 1\n\
        # HELP gateway_fanout_seconds Time.\n\
        # TYPE gateway_fanout_seconds histogram\n\
        # UNIT gateway_fanout_seconds seconds\n\
        gateway_fanout_seconds_bucket{le=\"0.1\"} 1\n\
        gateway_fanout_seconds_sum 0.05\n\
        gateway_fanout_seconds_count 1\n\
        # EOF\n";

    #[test]
    fn prometheus_text_by_default() {
        for accept in [None, Some("*/*"), Some("text/plain"), Some("application/openmetrics-text;q=0,text/plain")] {
            let (content_type, body) = negotiate(accept, OPENMETRICS.to_string());
            assert_eq!(content_type, PROMETHEUS_TEXT, "{accept:?}");
            assert_eq!(
                body,
                "# HELP wsgateway_events_processed_total Legacy: events processed.\n\
                 # TYPE wsgateway_events_processed_total counter\n\
                 wsgateway_events_processed_total 3\n\
                 # HELP gateway_connections Open WebSocket connections.\n\
                 # TYPE gateway_connections gauge\n\
                 gateway_connections{endpoint=\"waiter\"} 1\n\
                 # HELP gateway_fanout_seconds Time.\n\
                 # TYPE gateway_fanout_seconds histogram\n\
                 gateway_fanout_seconds_bucket{le=\"0.1\"} 1\n\
                 gateway_fanout_seconds_sum 0.05\n\
                 gateway_fanout_seconds_count 1\n"
            );
        }
    }

    #[test]
    fn openmetrics_when_asked_for() {
        // Prometheus' own scrape Accept header.
        let prometheus =
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                          text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for accept in [prometheus, "application/openmetrics-text", "Application/OpenMetrics-Text; version=1.0.0"] {
            assert_eq!(negotiate(Some(accept), OPENMETRICS.to_string()), (OPENMETRICS_TEXT, OPENMETRICS.to_string()));
        }
    }
}
