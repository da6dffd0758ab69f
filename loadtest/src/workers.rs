//! The parent's side of the worker processes: splits the slots into ranges of at most
//! `per_worker`, re-executes this binary as `loadtest worker` for each (so no process holds
//! more sockets than its open-files limit), and aggregates what they report on their stdout
//! pipes: counters, latency, the connect phase and the final tallies.

use crate::hist;
use crate::messages::{ConnectPhase, Counters, Final, ToParent, ToWorker, WorkerSpec};
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// Splits `0..n` into `ceil(n / per_worker)` nearly equal ranges.
pub fn split(n: u64, per_worker: u64) -> Vec<std::ops::Range<u64>> {
    let workers = n.div_ceil(per_worker.max(1)).max(1);
    (0..workers).map(|w| (n * w / workers)..(n * (w + 1) / workers)).collect()
}

#[derive(Default)]
struct State {
    counters: Vec<Counters>,
    ready: Vec<Option<ConnectPhase>>,
    finals: Vec<Option<Final>>,
    /// Latency reported since the last [`Fleet::take_latency`].
    latency: Option<Histogram<u64>>,
    failures: Vec<String>,
}

pub struct Fleet {
    children: Mutex<Vec<Child>>,
    stdins: tokio::sync::Mutex<Vec<ChildStdin>>,
    state: Arc<Mutex<State>>,
}

impl Fleet {
    pub async fn spawn(specs: Vec<WorkerSpec>) -> anyhow::Result<Fleet> {
        let exe = std::env::current_exe().context("locate the loadtest binary")?;
        let n = specs.len();
        let state = Arc::new(Mutex::new(State {
            counters: vec![Counters::default(); n],
            ready: vec![None; n],
            finals: (0..n).map(|_| None).collect(),
            latency: Some(hist::new()),
            failures: Vec::new(),
        }));
        let (mut children, mut stdins) = (Vec::new(), Vec::new());
        for spec in specs {
            let index = spec.index;
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("spawn a worker process")?;
            let mut stdin = child.stdin.take().expect("piped stdin");
            let mut line = serde_json::to_vec(&spec)?;
            line.push(b'\n');
            stdin.write_all(&line).await.context("send the worker its spec")?;
            let stdout = child.stdout.take().expect("piped stdout");
            tokio::spawn(read_reports(index, BufReader::new(stdout), state.clone()));
            children.push(child);
            stdins.push(stdin);
        }
        Ok(Fleet { children: Mutex::new(children), stdins: tokio::sync::Mutex::new(stdins), state })
    }

    pub async fn send(&self, command: &ToWorker) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(command)?;
        line.push(b'\n');
        for stdin in self.stdins.lock().await.iter_mut() {
            stdin.write_all(&line).await.context("write to a worker")?;
            stdin.flush().await?;
        }
        Ok(())
    }

    /// Waits until every worker finished its connect phase; the phases merged.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<ConnectPhase> {
        self.wait("the connect phase", timeout, |s| s.ready.iter().all(Option::is_some)).await?;
        let state = self.state.lock().expect("fleet lock");
        let mut merged = ConnectPhase { first_start_us: u64::MAX, ..ConnectPhase::default() };
        let mut handshake = hist::new();
        for phase in state.ready.iter().flatten() {
            merged.attempted += phase.attempted;
            merged.connected += phase.connected;
            merged.failed += phase.failed;
            merged.first_start_us = merged.first_start_us.min(phase.first_start_us);
            merged.last_done_us = merged.last_done_us.max(phase.last_done_us);
            hist::merge(&mut handshake, &phase.handshake);
        }
        merged.handshake = hist::buckets(&handshake);
        Ok(merged)
    }

    pub async fn wait_final(&self, timeout: Duration) -> anyhow::Result<Vec<Final>> {
        self.wait("the final reports", timeout, |s| s.finals.iter().all(Option::is_some)).await?;
        let finals =
            self.state.lock().expect("fleet lock").finals.iter_mut().map(|f| f.take().expect("checked")).collect();
        for child in self.children.lock().expect("fleet lock").iter_mut() {
            let _ = child.start_kill();
        }
        Ok(finals)
    }

    async fn wait(&self, what: &str, timeout: Duration, done: impl Fn(&State) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let state = self.state.lock().expect("fleet lock");
                if let Some(failure) = state.failures.first() {
                    bail!("a worker failed: {failure}");
                }
                if done(&state) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("workers did not finish {what} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Counters summed over workers.
    pub fn counters(&self) -> Counters {
        let state = self.state.lock().expect("fleet lock");
        let mut sum = Counters::default();
        for c in &state.counters {
            sum.open += c.open;
            sum.received += c.received;
            sum.foreign += c.foreign;
            sum.connects += c.connects;
            sum.connect_failures += c.connect_failures;
            sum.server_closes += c.server_closes;
            sum.recycles += c.recycles;
            sum.resumed += c.resumed;
            sum.resume_gaps += c.resume_gaps;
        }
        sum
    }

    /// Latency reported since the last call.
    pub fn take_latency(&self) -> Histogram<u64> {
        self.state.lock().expect("fleet lock").latency.replace(hist::new()).expect("always some")
    }
}

async fn read_reports(index: usize, stdout: BufReader<tokio::process::ChildStdout>, state: Arc<Mutex<State>>) {
    let mut lines = stdout.lines();
    let mut finished = false;
    while let Ok(Some(line)) = lines.next_line().await {
        let msg: ToParent = match serde_json::from_str(&line) {
            Ok(msg) => msg,
            Err(e) => {
                state
                    .lock()
                    .expect("fleet lock")
                    .failures
                    .push(format!("worker {index}: unreadable report ({e}): {line:.200}"));
                continue;
            }
        };
        let mut state = state.lock().expect("fleet lock");
        match msg {
            ToParent::Ready(phase) => state.ready[index] = Some(phase),
            ToParent::Progress { counters, latency } => {
                state.counters[index] = counters;
                hist::merge(state.latency.as_mut().expect("always some"), &latency);
            }
            ToParent::Final(fin) => {
                state.counters[index] = fin.counters.clone();
                hist::merge(state.latency.as_mut().expect("always some"), &fin.latency);
                state.finals[index] = Some(*fin);
                finished = true;
            }
            ToParent::Failed { error } => state.failures.push(format!("worker {index}: {error}")),
        }
    }
    if !finished {
        state.lock().expect("fleet lock").failures.push(format!("worker {index} exited without a final report"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_every_slot_once_within_the_limit() {
        for (n, per) in [(0, 8000), (1, 8000), (8000, 8000), (8001, 8000), (20_000, 8000), (45_000, 7000)] {
            let ranges = split(n, per);
            assert_eq!(ranges.first().unwrap().start, 0);
            assert_eq!(ranges.last().unwrap().end, n);
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
            assert!(ranges.iter().all(|r| r.end - r.start <= per), "{n} {per} {ranges:?}");
        }
        assert_eq!(split(20_000, 8000).len(), 3);
    }
}
