//! The publisher-bridge binary: configuration from the environment (exit 64 listing every
//! problem), logging and trace export, signals, then [`publisher_bridge::run`], then the last
//! spans flushed.

use std::process::ExitCode;

use anyhow::Context;
use publisher_bridge::{shutdown, telemetry, Config};
use tokio_util::sync::CancellationToken;

/// Every event allocates a few small buffers that live until its acknowledgement; glibc's
/// allocator spent a third of the bridge's CPU on them under load (`perf`), mimalloc a fraction.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(problems) => {
            eprintln!("publisher-bridge: {}", wire::settings::redact(&problems.to_string()));
            return ExitCode::from(64);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("publisher-bridge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = match runtime.block_on(async { telemetry::install(&config) }) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("publisher-bridge: {e}");
            return ExitCode::from(64);
        }
    };
    let result = runtime.block_on(serve(config));
    runtime.block_on(telemetry.shutdown());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A NATS connect error names the servers, with whatever credentials their URLs carry.
            tracing::error!("publisher-bridge failed: {}", wire::settings::redact(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    let stop = CancellationToken::new();
    shutdown::cancel_on_signal(stop.clone()).context("cannot install signal handlers")?;
    publisher_bridge::run(config, listener, stop).await?;
    Ok(())
}
