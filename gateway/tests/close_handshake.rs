//! RFC 6455 on raw sockets: a client's close frame is answered with the same code before the TCP
//! connection ends (a clean close, not 1006); a frame that breaks the protocol is answered with
//! 1002 and a text frame that is not UTF-8 with 1007, each counted under its close label; a
//! handshake with a malformed or duplicated `Sec-WebSocket-Key` is no handshake (400).

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A raw client: the upgrade request, then frames written byte by byte.
struct Raw {
    stream: TcpStream,
}

impl Raw {
    /// Sends the upgrade request with `keys` and returns the connection and the answer's head.
    async fn upgrade(gw: &Gateway, path: &str, keys: &[&str]) -> (Raw, String) {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\n",
            gw.addr
        );
        for key in keys {
            request.push_str(&format!("Sec-WebSocket-Key: {key}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        tokio::time::timeout(SOON, async {
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).await.unwrap() == 0 {
                    break;
                }
                head.push(byte[0]);
            }
        })
        .await
        .expect("answer head in time");
        (Raw { stream }, String::from_utf8_lossy(&head).into_owned())
    }

    /// Writes one masked frame (FIN set unless `fin` is false).
    async fn frame(&mut self, opcode: u8, payload: &[u8], fin: bool) {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        assert!(payload.len() < 126);
        out.push(0x80 | payload.len() as u8);
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out).await.unwrap();
    }

    /// Reads frames until a close frame: its code and reason; then asserts the server ends the TCP
    /// connection.
    async fn close_frame(&mut self) -> (u16, String) {
        let mut data = Vec::new();
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(SOON, async {
            loop {
                // Unmasked server frames with short payloads: [opcode, len, payload...].
                while data.len() >= 2 && data.len() >= 2 + (data[1] & 0x7f) as usize {
                    let len = (data[1] & 0x7f) as usize;
                    let frame: Vec<u8> = data.drain(..2 + len).collect();
                    if frame[0] & 0x0f == 0x8 {
                        let code = u16::from_be_bytes([frame[2], frame[3]]);
                        return (code, String::from_utf8_lossy(&frame[4..]).into_owned());
                    }
                }
                let n = self.stream.read(&mut buf).await.unwrap();
                assert_ne!(n, 0, "the server dropped TCP without a close frame");
                data.extend_from_slice(&buf[..n]);
            }
        });
        let close = read.await.expect("a close frame in time");
        let eof = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf)).await;
        assert!(matches!(eof, Ok(Ok(0) | Err(_))), "the server ends TCP after its close frame: {eof:?}");
        close
    }
}

fn waiter_path() -> String {
    format!("/ws/waiter?token={}", staff_token(2, 1, &[10], &["WAITER"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_with_its_own_code() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    for (code, reason) in [(1000u16, "bye"), (4000, "app going away")] {
        let (mut raw, head) = Raw::upgrade(&gw, &waiter_path(), &[KEY]).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        raw.frame(0x8, &payload, true).await;
        assert_eq!(raw.close_frame().await.0, code, "the echo carries the client's code");
    }
    let closed = r#"gateway_connections_closed_total{endpoint="waiter",reason="client_closed"}"#;
    wait_until("both client closes are counted", || async { gw.metric(closed).await == 2.0 }).await;

    // The same through a WebSocket library: a clean close with the client's code.
    let mut client = gw.staff("waiter", &staff_token(3, 1, &[10], &["WAITER"])).await;
    let frame = tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "done".into(),
    };
    client.ws.close(Some(frame)).await.expect("close sent");
    assert_eq!(client.next().await, Seen::Close(1000, "done".into()), "the server echoes 1000");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_get_1002_and_invalid_utf8_gets_1007() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let cases: [(&str, u8, &[u8], bool, u16); 5] = [
        ("reserved opcode 3", 0x3, b"x", true, 1002),
        ("continuation without a start", 0x0, b"x", true, 1002),
        ("fragmented ping", 0x9, b"x", false, 1002),
        ("text that is not UTF-8", 0x1, &[0x66, 0x6f, 0xff, 0xfe], true, 1007),
        ("a truncated UTF-8 sequence", 0x1, &[0xe2, 0x82], true, 1007),
    ];
    for (what, opcode, payload, fin, code) in cases {
        let (mut raw, head) = Raw::upgrade(&gw, &waiter_path(), &[KEY]).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{what}: {head}");
        raw.frame(opcode, payload, fin).await;
        let (got, reason) = raw.close_frame().await;
        assert_eq!(got, code, "{what}: {reason}");
    }
    for (label, n) in [("protocol_error", 3.0), ("invalid_utf8", 2.0)] {
        let series = format!(r#"gateway_connections_closed_total{{endpoint="waiter",reason="{label}"}}"#);
        wait_until(&format!("{label} counted"), || async { gw.metric(&series).await == n }).await;
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_duplicated_key_is_no_handshake() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    for (what, keys) in [
        ("a key of 5 bytes", vec!["aGVsbG8="]),
        ("not base64", vec!["not a key at all!!!!!!=="]),
        ("two keys", vec![KEY, KEY]),
    ] {
        let (_, head) = Raw::upgrade(&gw, &waiter_path(), &keys).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{what}: {head}");
    }
    let (_, head) = Raw::upgrade(&gw, &waiter_path(), &[KEY]).await;
    assert!(head.starts_with("HTTP/1.1 101"), "the same request with one good key: {head}");
    assert_eq!(gw.metric(r#"wsgateway_connections_rejected_total{reason="bad_handshake"}"#).await, 3.0);
    gw.stop().await;
}
