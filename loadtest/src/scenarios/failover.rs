//! The failover scenario's own parts around the steady flow of [`super::clients`]: which gateway
//! process to kill (given, or found by the port of `--kill-url`), the kill itself (announced to
//! the workers just before the SIGKILL, so every connection can time its recovery from it),
//! waiting for the dead replica's clients to be back, and the report section built from the
//! workers' [`Recovery`] measurements.

use crate::backoff::Policy;
use crate::cli::Kill;
use crate::hist;
use crate::messages::{Final, ToWorker};
use crate::progress::Progress;
use crate::recovery::Recovery;
use crate::report::{percentiles, Failover};
use crate::workers::Fleet;
use anyhow::{bail, ensure, Context};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};
use wire::clock::now_micros;

/// How long the dead replica's clients get to be connected again after the traffic.
const RECONNECT_BUDGET: Duration = Duration::from_secs(60);

/// The kill, resolved before any connection opens.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pid: i32,
    pub after: Duration,
    pub backoff_base: Duration,
}

impl Plan {
    /// Finds the process to kill and checks it exists; `duration` is the traffic's length.
    pub fn resolve(kill: &Kill, gateway_bin: &str, duration: f64) -> anyhow::Result<Plan> {
        ensure!(
            kill.kill_after > 0.0 && kill.kill_after < duration,
            "--kill-after {} must fall within the traffic (--duration {duration})",
            kill.kill_after
        );
        ensure!(kill.backoff_base > 0.0, "--backoff-base must be positive");
        let pid = match (kill.kill_pid, &kill.kill_url) {
            (Some(pid), _) => pid,
            (None, Some(url)) => {
                let port = *super::clients::ports(std::slice::from_ref(url))
                    .first()
                    .with_context(|| format!("--kill-url {url} has no port"))?;
                match crate::rss::discover(gateway_bin, &[port]).as_slice() {
                    [pid] => *pid,
                    [] => bail!(
                        "no process named {gateway_bin} listens on port {port} (--kill-url {url}): give --kill-pid"
                    ),
                    many => {
                        bail!("several processes named {gateway_bin} listen on port {port} ({many:?}): give --kill-pid")
                    }
                }
            }
            (None, None) => bail!("give --kill-pid or --kill-url"),
        };
        signal::kill(Pid::from_raw(pid), None).with_context(|| format!("gateway pid {pid}"))?;
        Ok(Plan {
            pid,
            after: Duration::from_secs_f64(kill.kill_after),
            backoff_base: Duration::from_secs_f64(kill.backoff_base),
        })
    }

    /// The clients reconnect like the browser apps.
    pub fn backoff(&self) -> Policy {
        Policy::Browser { base_ms: self.backoff_base.as_millis().max(1) as u64 }
    }
}

/// Waits `plan.after` from now (the start of the traffic), tells the workers, SIGKILLs the
/// gateway; the kill time, unix µs.
pub async fn kill(plan: &Plan, fleet: &Fleet, progress: &Progress) -> anyhow::Result<u64> {
    tokio::time::sleep(plan.after).await;
    let at_us = now_micros();
    fleet.send(&ToWorker::Killing { at_us }).await?;
    signal::kill(Pid::from_raw(plan.pid), Signal::SIGKILL)
        .with_context(|| format!("SIGKILL gateway pid {}", plan.pid))?;
    progress.phase("killed");
    Ok(at_us)
}

/// Waits until `want` connections are open again, at most [`RECONNECT_BUDGET`]: a slot still
/// away at the end would be owed everything since the kill.
pub async fn wait_reconnected(fleet: &Fleet, want: u64) {
    let deadline = Instant::now() + RECONNECT_BUDGET;
    while fleet.counters().open < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The report's section, and the problems that make the measurement void.
pub fn section(plan: &Plan, kill_us: u64, finals: &[Final]) -> (Failover, Vec<String>) {
    let mut r = Recovery::default();
    for recovery in finals.iter().filter_map(|f| f.recovery.as_ref()) {
        r.add(recovery);
    }
    let (mut live, mut back, mut first) = (hist::new(), hist::new(), hist::new());
    hist::merge(&mut live, &r.live_again);
    hist::merge(&mut back, &r.reconnected);
    hist::merge(&mut first, &r.first_event);
    let mut problems = Vec::new();
    if r.killed == 0 {
        problems.push(format!("the kill closed no connection: is pid {} a gateway behind --url?", plan.pid));
    }
    if r.not_reconnected > 0 {
        problems.push(format!(
            "{} of the dead replica's {} clients were not connected again by the end",
            r.not_reconnected, r.killed
        ));
    }
    let failover = Failover {
        killed_pid: plan.pid,
        kill_after_s: plan.after.as_secs_f64(),
        killed_at: crate::events::iso8601_micros(kill_us),
        backoff_base_s: plan.backoff_base.as_secs_f64(),
        killed_connections: r.killed,
        without_cursor: r.without_cursor,
        not_reconnected: r.not_reconnected,
        not_live_again: r.not_live_again,
        reconnected: hist::summary(&back),
        live_again: hist::summary(&live),
        live_again_percentiles: percentiles(&live),
        first_event: hist::summary(&first),
    };
    (failover, problems)
}
