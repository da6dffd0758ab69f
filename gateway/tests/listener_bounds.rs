//! Every listener is bounded in time and memory, over raw sockets: a slowloris client and an idle
//! TCP connection are closed by the header timeout, so is an idle keep-alive connection after its
//! answer; connections waiting for their first request head are capped (one more is closed at
//! accept and counted); an oversized request head is refused; HTTP/2 is not spoken; the admin
//! port has the same bounds and takes the bearer scheme in any case.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
/// Far above the 1 s header timeout these tests set: only a missing bound fails them.
const CLOSED_WITHIN: Duration = Duration::from_secs(15);

/// Reads until the server closes the connection; the bytes it sent, or a panic after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration, what: &str) -> Vec<u8> {
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: still open after {within:?}");
    seen
}

async fn bounded_gateway(stack: &Stack, extra: &[(&str, &str)]) -> (Gateway, String) {
    let admin = format!("127.0.0.1:{}", testkit::free_port());
    let mut vars = vec![
        ("GATEWAY_HTTP_HEADER_TIMEOUT", "1s"),
        ("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN),
        ("GATEWAY_ADMIN_LISTEN_ADDR", admin.as_str()),
    ];
    vars.extend_from_slice(extra);
    (stack.gateway_with(&vars).await, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_closed_by_the_header_timeout() {
    let stack = Stack::start().await;
    let (gw, admin) = bounded_gateway(&stack, &[]).await;

    for (port, addr) in [("public", gw.addr.to_string()), ("admin", admin.clone())] {
        // Slowloris: a request head that never ends, one header line per 300 ms.
        let mut slow = TcpStream::connect(&addr).await.unwrap();
        slow.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let started = Instant::now();
        let trickle = async {
            for i in 0.. {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if slow.write_all(format!("X-Slow-{i}: y\r\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        };
        let trickled = tokio::time::timeout(CLOSED_WITHIN, trickle).await;
        assert!(trickled.is_ok(), "{port}: a slowloris client is still being read after {CLOSED_WITHIN:?}");
        assert!(started.elapsed() >= Duration::from_millis(900), "{port}: not before the timeout");

        let mut idle = TcpStream::connect(&addr).await.unwrap();
        read_until_closed(&mut idle, CLOSED_WITHIN, &format!("{port}: a connection that sends nothing")).await;

        let mut keep_alive = TcpStream::connect(&addr).await.unwrap();
        keep_alive.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let answer = read_until_closed(&mut keep_alive, CLOSED_WITHIN, &format!("{port}: an idle keep-alive")).await;
        assert!(answer.starts_with(b"HTTP/1.1 "), "{port}: the request was answered before the close");
    }
    assert!(gw.metric("gateway_http_header_timeouts_total").await >= 2.0, "the timeouts are counted");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_waiting_for_their_request_head_are_capped() {
    let stack = Stack::start().await;
    let (gw, _) =
        bounded_gateway(&stack, &[("GATEWAY_HTTP_HEADER_TIMEOUT", "30s"), ("GATEWAY_HTTP_MAX_UNFINISHED", "4")]).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(b"GET /livez HTTP/1.1\r\n").await.unwrap();
        held.push(stream);
    }
    // The four are accepted in order; the next one finds the cap full and is closed at once.
    wait_until("a fifth unfinished connection is refused", || async {
        let Ok(mut fifth) = TcpStream::connect(gw.addr).await else { return false };
        let _ = fifth.write_all(b"GET /livez HTTP/1.1\r\n").await;
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(Duration::from_secs(2), fifth.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    })
    .await;
    for stream in &mut held {
        stream.write_all(b"Host: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let answer = read_until_closed(stream, CLOSED_WITHIN, "a held connection that finished its head").await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    }
    assert_eq!(gw.get("/livez").await.0, 200, "finished heads free their places");
    assert!(gw.metric("gateway_http_refused_unfinished_total").await >= 1.0, "the refusals are counted");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_http2_are_refused_and_the_admin_bearer_is_case_insensitive() {
    let stack = Stack::start().await;
    let (gw, admin) = bounded_gateway(&stack, &[("GATEWAY_HTTP_MAX_HEAD_BYTES", "8192")]).await;

    let mut big = TcpStream::connect(gw.addr).await.unwrap();
    let filler = "a".repeat(16 * 1024);
    big.write_all(format!("GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: {filler}\r\n\r\n").as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut big, CLOSED_WITHIN, "an oversized head").await;
    assert!(answer.starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&answer));

    // Prior-knowledge cleartext HTTP/2: not spoken (no SETTINGS frame comes back).
    let mut h2 = TcpStream::connect(gw.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    let answer = read_until_closed(&mut h2, CLOSED_WITHIN, "an HTTP/2 preface").await;
    assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 4"), "{}", String::from_utf8_lossy(&answer));

    let url = format!("http://{admin}/admin/connections");
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {ADMIN_TOKEN}");
        let (status, _) =
            tokio::time::timeout(SOON, testkit::http_request("GET", &url, &[("Authorization", &auth)], None))
                .await
                .expect("admin answer in time")
                .expect("admin request");
        assert_eq!(status, 200, "scheme {scheme}");
    }
    gw.stop().await;
}
