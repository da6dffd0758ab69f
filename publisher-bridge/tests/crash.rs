//! Crash safety with the real binary: 10,000 `events:critical` entries written while the bridge
//! is killed with SIGKILL and restarted several times. At the end every entry is in JetStream
//! exactly once (read back from the stream) and the consumer group has nothing pending (XPENDING).
//! The last instance is stopped with SIGTERM and exits 0.

#[path = "support/bridge.rs"]
mod support;

use std::time::Duration;

use anyhow::Result;
use support::*;
use testkit::{NatsServer, NatsUser, Redis};

const ENTRIES: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_entries_survive_repeated_sigkill() -> Result<()> {
    let redis_server = Redis::start().await;
    let nats = NatsServer::start().await;
    let env = env(&redis_server.url(), &nats.env(NatsUser::Bridge), "crash-bridge", &[]);
    let log = log_path("crash");
    let mut bridge = Binary::start(env.clone(), log.clone()).await?;
    let js = jetstream(nats.connect(NatsUser::Operator).await).await?;
    let conn = redis(&redis_server.url()).await?;

    // The writer spreads the entries over a few seconds so that the kills land mid-stream.
    let writer = {
        let mut conn = conn.clone();
        tokio::spawn(async move {
            let all: Vec<String> = (0..ENTRIES).map(|n| event(n, "ROUND_READY", 1 + n % 3, Some(1 + n % 5))).collect();
            for chunk in all.chunks(500) {
                xadd_all(&mut conn, "events:critical", "data", chunk).await?;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            anyhow::Ok(())
        })
    };
    let mut killed_with_pending = 0;
    let mut probe = conn.clone();
    for round in 0..5u64 {
        // Let it make some progress, then kill it without warning, preferably while entries are
        // delivered to it but not yet acknowledged.
        // Progress since the last restart, unless the writer is done and everything is stored.
        let before = count(&js, "EVENTS").await;
        eventually(20, "progress before the kill", || async {
            let now = count(&js, "EVENTS").await;
            (now > before + 300 + round * 50 || now == ENTRIES).then_some(())
        })
        .await?;
        let pending = within(5, "pending before the kill", async {
            for _ in 0..500 {
                let n = xpending(&mut probe, "events:critical", "publisher_bridge").await.unwrap_or(0);
                if n > 0 {
                    return n;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            0
        })
        .await?;
        bridge.sigkill();
        killed_with_pending += (pending > 0) as u32;
        bridge = Binary::start(env.clone(), log.clone()).await?;
    }
    within(60, "writer", writer).await???;
    wait_count(&js, "EVENTS", ENTRIES, 60).await?;
    let mut conn = conn.clone();
    eventually(30, "consumer group has nothing pending", || {
        let mut conn = conn.clone();
        async move { (xpending(&mut conn, "events:critical", "publisher_bridge").await.ok()? == 0).then_some(()) }
    })
    .await?;
    let stored = read_all(&js, "EVENTS").await?;
    assert_exactly_once(&stored, ENTRIES);
    assert_eq!(xpending(&mut conn, "events:critical", "publisher_bridge").await?, 0);
    assert_eq!(count(&js, "EVENTS_DLQ").await, 0);
    assert!(killed_with_pending > 0, "no kill landed while entries were delivered but not acknowledged");
    let code = bridge.sigterm(15).await?;
    assert_eq!(code, Some(0), "SIGTERM exits 0\n{}", bridge.log_tail());
    let republished = std::fs::read_to_string(&log)?.matches("re-publishing own pending").count();
    eprintln!("kills: 5 ({killed_with_pending} with entries pending), restarts that re-published pending entries: {republished}");
    assert!(republished >= 1, "at least one restart re-published its pending entries");
    let _ = std::fs::remove_file(&log);
    Ok(())
}
