//! Tests of the real-process fixtures themselves: each server starts, answers, dies and comes back.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use testkit::{free_port, http_get, repo_root, NatsCluster, NatsServer, NatsUser, Postgres, Redis};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Every await in these tests goes through here.
async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s: {what}"))
}

/// The first line a NATS server sends on connect.
async fn nats_info(port: u16) -> std::io::Result<String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
    Ok(line)
}

/// One inline Redis command and the first reply chunk.
async fn redis_cmd(port: u16, cmd: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(format!("{cmd}\r\n").as_bytes()).await?;
    let mut buf = vec![0u8; 256];
    let n = stream.read(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn repo_root_holds_the_lockfile_and_ports_are_free() {
    assert!(repo_root().join("Cargo.lock").is_file());
    let port = free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
}

#[tokio::test]
async fn nats_answers_and_survives_kill_and_restart() {
    let mut nats = within(30, "nats start", NatsServer::start()).await;
    assert!(nats.url().ends_with(&format!(":{}", nats.port())));
    let info = within(5, "INFO", nats_info(nats.port())).await.unwrap();
    assert!(info.starts_with("INFO {"), "{info}");

    let (status, body) = within(5, "varz", http_get(&format!("{}/varz", nats.monitor_url()))).await.unwrap();
    assert_eq!(status, 200, "{body}");
    // Its users are deploy/nats/auth.conf's: an anonymous client is refused.
    let refused = within(10, "anonymous connect", async_nats::connect(nats.url())).await;
    assert!(refused.is_err(), "an anonymous client must be refused");
    let client = nats.connect(NatsUser::Operator).await;
    let _sub = within(5, "subscribe", client.subscribe("testkit.sub")).await.unwrap();
    within(5, "flush", client.flush()).await.unwrap();
    // The monitoring view lags the protocol a little: poll until the subscription shows.
    within(10, "subscription in /connz", async {
        loop {
            let connz = nats.connz_subs().await;
            if connz["connections"][0]["subscriptions_list"].to_string().contains("testkit.sub") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    let js = jetstream::new(client);
    let config = stream::Config { name: "KEEP".into(), subjects: vec!["keep.>".into()], ..Default::default() };
    within(10, "create stream", js.create_stream(config)).await.unwrap();

    nats.kill();
    nats.kill(); // idempotent
    assert!(within(5, "connect to dead", nats_info(nats.port())).await.is_err());
    within(30, "restart", nats.restart()).await;
    let info = within(5, "INFO again", nats_info(nats.port())).await.unwrap();
    assert!(info.starts_with("INFO {"), "{info}");

    // Same store dir: the stream is still there.
    let client = nats.connect(NatsUser::Operator).await;
    within(10, "get stream", jetstream::new(client).get_stream("KEEP")).await.unwrap();
}

#[tokio::test]
async fn cluster_elects_a_meta_leader_and_reports_stream_leaders() {
    let mut cluster = within(60, "cluster start", NatsCluster::start(3)).await;
    assert_eq!(cluster.urls().split(',').count(), 3);
    for (i, node) in cluster.nodes.iter().enumerate() {
        assert_eq!(node.server_name(), Some(format!("n{i}").as_str()));
    }
    let client = cluster.connect(NatsUser::Operator).await;
    let js = jetstream::new(client);
    let config =
        stream::Config { name: "R3".into(), subjects: vec!["r3.>".into()], num_replicas: 3, ..Default::default() };
    within(20, "create R3 stream", js.create_stream(config)).await.unwrap();

    let leader = within(20, "stream leader", async {
        loop {
            if let Some(i) = cluster.leader_of_stream("R3").await {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(cluster.leader_of_stream("NOPE").await, None);

    cluster.nodes[leader].kill();
    let next = within(30, "new stream leader", async {
        loop {
            match cluster.leader_of_stream("R3").await {
                Some(i) if i != leader => return i,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await;
    assert_ne!(next, leader);
}

#[tokio::test]
async fn redis_pings_and_survives_kill_and_restart() {
    let mut redis = within(30, "redis start", Redis::start()).await;
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert!(within(5, "PING", redis_cmd(redis.port(), "PING")).await.unwrap().starts_with("+PONG"));
    within(5, "SET", redis_cmd(redis.port(), "SET k v")).await.unwrap();

    redis.kill();
    redis.kill();
    assert!(within(5, "PING dead", redis_cmd(redis.port(), "PING")).await.is_err());
    within(30, "restart", redis.restart()).await;
    assert!(within(5, "PING", redis_cmd(redis.port(), "PING")).await.unwrap().starts_with("+PONG"));
    // No persistence by default.
    assert!(within(5, "GET", redis_cmd(redis.port(), "GET k")).await.unwrap().starts_with("$-1"));
}

#[tokio::test]
async fn redis_with_append_only_file_keeps_data_across_restart() {
    let mut redis =
        within(30, "redis start", Redis::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"])).await;
    within(5, "SET", redis_cmd(redis.port(), "SET k kept")).await.unwrap();
    within(30, "restart", redis.restart()).await;
    let got = within(5, "GET", redis_cmd(redis.port(), "GET k")).await.unwrap();
    assert!(got.contains("kept"), "{got}");
}

#[tokio::test]
async fn postgres_answers_select_1_twice_in_parallel() {
    let (a, b) = within(90, "two postgres", async { tokio::join!(Postgres::start(), Postgres::start()) }).await;
    assert_ne!(a.port(), b.port());
    for pg in [&a, &b] {
        let (client, conn) =
            within(10, "connect", tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)).await.unwrap();
        let conn = tokio::spawn(conn);
        let row = within(10, "SELECT 1", client.query_one("SELECT 1", &[])).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
        drop(client);
        within(10, "connection end", conn).await.unwrap().unwrap();
    }
    let port = a.port();
    drop(a);
    assert!(within(5, "connect to stopped", TcpStream::connect(("127.0.0.1", port))).await.is_err());
}

#[test]
fn undocumented_series_names_what_the_table_lacks() {
    let exposition = "# HELP a_x A.\n# TYPE a_x counter\na_x_total 1\n# TYPE b_y gauge\nb_y 0\n# TYPE c histogram\n";
    let readme = "| series | type |\n|---|---|\n| `a_x_total` | counter |\n| `c` | histogram |\n| `b_y` | counter |\n";
    assert_eq!(
        testkit::undocumented_series(exposition, readme),
        vec!["b_y (gauge)".to_string()],
        "a wrong type does not count"
    );
}
