//! The gateway binary: configuration from the environment, logging and trace export, then
//! [`gateway::run`], then the last spans flushed.
//! Exit codes: 0 after a drain, 64 for bad configuration, 69 when a dependency is unreachable
//! at start, 1 otherwise.

use std::process::ExitCode;

fn main() -> ExitCode {
    let config = match gateway::Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("gateway: {}", wire::settings::redact(&error.to_string()));
            return ExitCode::from(64);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(serve(config)),
        Err(error) => {
            eprintln!("gateway: cannot start the runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: gateway::Config) -> ExitCode {
    let telemetry = match gateway::telemetry::install(&config) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("gateway: {error}");
            return ExitCode::from(64);
        }
    };
    // URLs in the configuration are masked (`redis://:***@host`); `redact` also masks the ones
    // held as plain strings (NATS servers, the OTLP endpoint).
    let shown = wire::settings::redact(&format!("{config:?}"));
    tracing::info!(config = %shown, traces = %wire::settings::redact(&config.otel.summary()), "starting");
    let listener = match gateway::listener::bind(config.listen_addr) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(addr = %config.listen_addr, %error, "cannot listen (is GATEWAY_LISTEN_ADDR free?)");
            return ExitCode::from(69);
        }
    };
    let shutdown = gateway::shutdown::on_signal();
    let result = gateway::run(config, listener, shutdown).await;
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(
            error @ (gateway::StartError::Nats(_)
            | gateway::StartError::Redis(_)
            | gateway::StartError::AdminListen(..)),
        ) => {
            tracing::error!(error = %wire::settings::redact(&error.to_string()), "cannot start");
            ExitCode::from(69)
        }
        Err(error) => {
            tracing::error!(error = %wire::settings::redact(&error.to_string()), "stopped");
            ExitCode::FAILURE
        }
    }
}
