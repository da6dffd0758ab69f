//! The HTTP/1.1 listener loop both services serve their routers with (the gateway's public and
//! admin ports, the bridge's port), bounded in time and memory: a connection must deliver a
//! complete request head within the header timeout — a slowloris client and an idle keep-alive
//! connection alike are closed when it runs out —, a request head may use at most
//! [`HttpLimits::max_head_bytes`], and at most [`HttpLimits::max_unfinished`] connections may be
//! waiting for their first request head at once (a new one past the cap is closed at once and
//! counted). Cleartext HTTP/2 is not spoken. Upgraded connections (WebSockets) leave these bounds
//! behind: their own task bounds them.
//!
//! It owns the accept loop and the per-connection HTTP state machine (hyper), not the routes.

use crate::settings::Parser;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time a connection has to deliver a complete request head, from its accept or from the end
    /// of its previous response (so it is the keep-alive idle timeout too).
    pub header_timeout: Duration,
    /// Connections accepted but without a complete first request head yet.
    pub max_unfinished: usize,
    /// Bytes a connection may buffer while reading a request head (at least 8 KiB).
    pub max_head_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { header_timeout: Duration::from_secs(10), max_unfinished: 1024, max_head_bytes: 32 * 1024 }
    }
}

/// The variable names of one service's [`HttpLimits`].
pub struct HttpVars {
    pub header_timeout: &'static str,
    pub max_unfinished: &'static str,
    pub max_head_bytes: &'static str,
}

impl HttpVars {
    pub fn all(&self) -> [&'static str; 3] {
        [self.header_timeout, self.max_unfinished, self.max_head_bytes]
    }
}

impl HttpLimits {
    /// Reads the limits named by `vars`, defaults as [`HttpLimits::default`].
    pub fn read<F: Fn(&str) -> Option<String>>(p: &mut Parser<F>, vars: &HttpVars) -> HttpLimits {
        let d = HttpLimits::default();
        HttpLimits {
            header_timeout: p.duration(vars.header_timeout, d.header_timeout),
            max_unfinished: p.number(vars.max_unfinished, d.max_unfinished, 1..=1_000_000),
            max_head_bytes: p.number(vars.max_head_bytes, d.max_head_bytes, 8192..=1 << 20),
        }
    }
}

/// What a listener counts; register them in the service's metrics registry.
#[derive(Debug, Clone, Default)]
pub struct HttpCounters {
    /// Connections closed at accept because [`HttpLimits::max_unfinished`] were waiting.
    pub refused_unfinished: Counter,
    /// Connections closed because no complete request head came within the header timeout.
    pub header_timeouts: Counter,
}

/// Serves `router` on `listener` until `stop` is cancelled, then stops accepting, lets requests
/// in progress finish, and returns once every plain HTTP connection ended (callers bound the
/// wait). Each request carries the peer as `axum::extract::ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    counters: HttpCounters,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let unfinished = Arc::new(Semaphore::new(limits.max_unfinished));
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = unfinished.clone().try_acquire_owned() else {
            counters.refused_unfinished.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let counters = counters.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            // The permit is given back when the first request head is complete.
            let permit = std::sync::Mutex::new(Some(permit));
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                permit.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
                request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                let mut router = router.clone();
                async move { Ok::<_, Infallible>(router.call(request).await.unwrap_or_else(|never| match never {})) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_head_bytes)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                if error.is_timeout() {
                    counters.header_timeouts.inc();
                }
                tracing::debug!(%error, %peer, "HTTP connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const VARS: HttpVars = HttpVars { header_timeout: "T", max_unfinished: "U", max_head_bytes: "H" };

    fn read(pairs: &[(&str, &str)]) -> Result<HttpLimits, Vec<&'static str>> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut p = Parser::new(|k: &str| map.get(k).cloned());
        let limits = HttpLimits::read(&mut p, &VARS);
        p.finish(limits).map_err(|e| e.0.iter().map(|p| p.var).collect())
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(read(&[]), Ok(HttpLimits::default()));
        let set = read(&[("T", "3s"), ("U", "10"), ("H", "16384")]).unwrap();
        assert_eq!(
            set,
            HttpLimits { header_timeout: Duration::from_secs(3), max_unfinished: 10, max_head_bytes: 16384 }
        );
    }

    #[test]
    fn out_of_range_values_are_named() {
        assert_eq!(read(&[("T", "0"), ("U", "0"), ("H", "100")]), Err(vec!["T", "U", "H"]));
    }
}
