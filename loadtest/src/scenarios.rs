//! The scenarios: [`clients`] runs the WebSocket scenarios (idle, fanout, steady, churn, and
//! failover with the gateway kill of [`failover`]), which differ in their event mix, rate,
//! churn and kill; [`replay`] times resumed clients catching up; [`bridge`] measures the bridge
//! alone. This module holds what they share: the scenario names and defaults, and the verdict.

pub mod bridge;
pub mod clients;
pub mod failover;
pub mod plan;
pub mod replay;

use crate::cli::Output;
use crate::events::Traffic;
use crate::report::{self, Report};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Idle,
    Fanout,
    Steady,
    Churn,
    Failover,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Fanout => "fanout",
            Scenario::Steady => "steady",
            Scenario::Churn => "churn",
            Scenario::Failover => "failover",
        }
    }

    pub fn traffic(self) -> Traffic {
        match self {
            Scenario::Idle => Traffic::Probe,
            Scenario::Fanout => Traffic::Fanout,
            Scenario::Steady | Scenario::Churn | Scenario::Failover => Traffic::Steady,
        }
    }

    pub fn default_rate(self) -> f64 {
        match self {
            Scenario::Idle => 1000.0,
            Scenario::Fanout => 200.0,
            Scenario::Steady | Scenario::Failover => 500.0,
            Scenario::Churn => 200.0,
        }
    }

    /// Seconds of traffic (of holding, for idle) unless --duration says otherwise: failover
    /// leaves time for the kill and the recovery.
    pub fn default_duration(self) -> f64 {
        match self {
            Scenario::Failover => 15.0,
            _ => DEFAULT_DURATION_S,
        }
    }
}

pub const DEFAULT_DURATION_S: f64 = 10.0;

/// Prints the table, writes the files and returns whether the run passed.
pub fn finish(mut report: Report, output: &Output) -> anyhow::Result<bool> {
    if output.expect_zero_loss {
        report.problems.extend(report.loss_problems());
    }
    print!("{}", report::table::render(&report));
    if let Some(path) = &output.report_json {
        report::json::write(&report, path)?;
        eprintln!("loadtest: JSON report written to {}", path.display());
    }
    if let Some(path) = &output.report_svg {
        report::svg::write(&report, path)?;
        eprintln!("loadtest: SVG report written to {}", path.display());
    }
    Ok(report.problems.is_empty())
}

/// The command line for the report, without secret values.
pub fn command_line() -> Vec<String> {
    without_secrets(std::env::args())
}

fn without_secrets(argv: impl Iterator<Item = String>) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut hide_next = false;
    for arg in argv {
        if hide_next {
            args.push("****".into());
            hide_next = false;
            continue;
        }
        let secret = arg.starts_with("--jwt-secret") || arg.starts_with("--table-secret");
        if secret && !arg.contains('=') {
            hide_next = true;
            args.push(arg);
        } else if secret {
            args.push(format!("{}=****", arg.split('=').next().unwrap_or_default()));
        } else {
            args.push(arg);
        }
    }
    args
}

/// A run id that differs between runs, so a late event of an earlier run is never counted.
pub fn run_id() -> u64 {
    wire::clock::now_micros() ^ ((std::process::id() as u64) << 40)
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_never_reach_the_report() {
        let argv = ["loadtest", "steady", "--jwt-secret", "s3cret", "--table-secret=t0p", "-n", "5"].map(String::from);
        assert_eq!(
            super::without_secrets(argv.into_iter()),
            ["loadtest", "steady", "--jwt-secret", "****", "--table-secret=****", "-n", "5"]
        );
    }
}
