//! The gateway binary: configuration from the environment, logging, then [`gateway::run`].
//! Exit codes: 0 after a drain, 64 for bad configuration, 69 when a dependency is unreachable
//! at start, 1 otherwise.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match gateway::Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("gateway: {error}");
            return ExitCode::from(64);
        }
    };
    gateway::telemetry::init(config.log_format);
    tracing::info!(?config, "starting");
    let listener = match tokio::net::TcpListener::bind(config.listen_addr).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(addr = %config.listen_addr, %error, "cannot listen (is GATEWAY_LISTEN_ADDR free?)");
            return ExitCode::from(69);
        }
    };
    let shutdown = gateway::shutdown::on_signal();
    match gateway::run(config, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ (gateway::StartError::Nats(_) | gateway::StartError::Redis(_))) => {
            tracing::error!(%error, "cannot start");
            ExitCode::from(69)
        }
        Err(error) => {
            tracing::error!(%error, "stopped");
            ExitCode::FAILURE
        }
    }
}
