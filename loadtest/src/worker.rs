//! The hidden `worker` subcommand: one process holding a range of connection slots. It reads its
//! [`WorkerSpec`] and commands from stdin, reports progress every second and its final tally on
//! stdout (JSON lines), and exits when told to finish or when its parent goes away.

use crate::client::{self, Ctx, Dialer};
use crate::events::Generator;
use crate::expectations::{self, Index};
use crate::hist;
use crate::messages::{Final, ToParent, ToWorker, WorkerSpec};
use crate::population::Population;
use crate::recovery;
use crate::stats::Stats;
use crate::tokens::Secrets;
use anyhow::{bail, Context};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub async fn main() -> anyhow::Result<()> {
    let (out, writer) = stdout_writer();
    let result = run(out.clone()).await;
    if let Err(error) = &result {
        let _ = out.send(ToParent::Failed { error: format!("{error:#}") });
    }
    drop(out);
    let _ = writer.await;
    result
}

/// A task owning stdout, so lines from several tasks never interleave.
fn stdout_writer() -> (mpsc::UnboundedSender<ToParent>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<ToParent>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(msg) = rx.recv().await {
            let mut line = serde_json::to_vec(&msg).expect("messages serialize");
            line.push(b'\n');
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    (tx, writer)
}

async fn run(out: mpsc::UnboundedSender<ToParent>) -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let spec: WorkerSpec =
        serde_json::from_str(&lines.next_line().await?.context("no worker spec on stdin")?).context("worker spec")?;
    let pop = Population::new(spec.population.clone())?;
    let mut gateways = Vec::new();
    for url in &spec.urls {
        gateways.push((url.clone(), client::resolve(url).await?));
    }
    let ctx = Arc::new(Ctx {
        run: spec.run,
        dialer: Dialer {
            gateways,
            origin: spec.origin.clone(),
            source_ips: spec.source_ips,
            secrets: Secrets { jwt: spec.jwt_secret.clone(), table: spec.table_secret.clone() },
        },
        connect_timeout: Duration::from_millis(spec.connect_timeout_ms),
        ping_interval: Duration::from_millis(spec.ping_interval_ms.max(100)),
        connect_permits: Semaphore::new(spec.connect_concurrency.max(1)),
        finish: CancellationToken::new(),
        stats: Stats::new(),
        resume: spec.resume,
        backoff: spec.backoff,
        kill_us: AtomicU64::new(0),
    });

    let slots = spec.first_slot..spec.end_slot;
    let total = slots.end - slots.start;
    let recycles: Vec<Arc<Notify>> = slots.clone().map(|_| Arc::new(Notify::new())).collect();
    let ready_sent = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for slot in slots.clone() {
        let (ctx2, out2, ready_sent) = (ctx.clone(), out.clone(), ready_sent.clone());
        let on_first = move |ok: bool| {
            let done = ctx2.stats.first_attempt_done(ok, wire::clock::now_micros());
            if done == total && !ready_sent.swap(true, Relaxed) {
                let _ = out2.send(ToParent::Ready(ctx2.stats.connect_phase()));
            }
        };
        tasks.spawn(client::run_slot(
            ctx.clone(),
            pop.member(slot),
            recycles[(slot - slots.start) as usize].clone(),
            on_first,
        ));
    }
    if total == 0 {
        let _ = out.send(ToParent::Ready(ctx.stats.connect_phase()));
    }
    let progress = tokio::spawn(report_progress(ctx.clone(), out.clone()));

    let sent_us = loop {
        let Some(line) = lines.next_line().await? else {
            bail!("the parent closed the command pipe");
        };
        match serde_json::from_str::<ToWorker>(&line).context("worker command")? {
            ToWorker::Go => {
                if spec.churn_rate > 0.0 {
                    tokio::spawn(churn(ctx.finish.clone(), recycles.clone(), spec.churn_rate));
                }
            }
            ToWorker::Killing { at_us } => ctx.kill_us.store(at_us, Relaxed),
            ToWorker::Finish { sent_us } => break sent_us,
        }
    };
    ctx.finish.cancel();
    progress.abort();
    let mut incarnations = Vec::new();
    while let Some(held) = tasks.join_next().await {
        incarnations.extend(held.context("a connection task panicked")?);
    }
    let connected: std::collections::HashSet<u64> = incarnations.iter().map(|i| i.slot).collect();
    let kill_us = ctx.kill_us.load(Relaxed);
    let recovery = (kill_us != 0).then(|| recovery::measure(&incarnations, kill_us));
    let index = Index::build(&pop, slots.clone());
    let generator = Generator::new(spec.traffic, pop, spec.seed);
    let tally = expectations::tally(&generator, &index, incarnations, &sent_us, spec.churn_grace_ms * 1000);
    let stats = &ctx.stats;
    let _ = out.send(ToParent::Final(Box::new(Final {
        counters: stats.counters(),
        tally,
        never_connected: total - connected.len() as u64,
        failure_reasons: stats.failure_reasons(),
        close_codes: stats.close_codes(),
        gap_reasons: stats.gap_reasons(),
        latency: hist::buckets(&stats.latency.take()),
        handshake: hist::buckets(&stats.handshake.take()),
        cpu_s: crate::rss::cpu_seconds(std::process::id() as i32).unwrap_or(0.0),
        recovery,
    })));
    Ok(())
}

async fn report_progress(ctx: Arc<Ctx>, out: mpsc::UnboundedSender<ToParent>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let latency = hist::buckets(&ctx.stats.latency.take());
        if out.send(ToParent::Progress { counters: ctx.stats.counters(), latency }).is_err() {
            return;
        }
    }
}

/// Recycles slots round robin at `rate` per second until the run finishes.
async fn churn(finish: CancellationToken, slots: Vec<Arc<Notify>>, rate: f64) {
    if slots.is_empty() {
        return;
    }
    let mut pacer = crate::pacing::Pacer::new(rate, 1000, u64::MAX);
    let start = tokio::time::Instant::now();
    let mut next = 0usize;
    loop {
        let due = pacer.take(start.elapsed());
        for _ in 0..due {
            slots[next % slots.len()].notify_waiters();
            next += 1;
        }
        let wait = pacer.next_due().saturating_sub(start.elapsed()).max(Duration::from_millis(5));
        tokio::select! {
            _ = finish.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
