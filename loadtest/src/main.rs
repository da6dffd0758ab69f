//! `loadtest`: see `loadtest --help`. This file only parses the command line, raises the
//! open-files limit and dispatches; every part lives in a module named for what it owns.

mod backoff;
mod bridge_probe;
mod cli;
mod client;
mod events;
mod events_stream;
mod expectations;
mod floor;
mod hist;
mod messages;
mod nats;
mod pacing;
mod population;
mod progress;
mod publisher;
mod recovery;
mod report;
mod resume;
mod rss;
mod scenarios;
mod stats;
mod tokens;
mod worker;
mod workers;

use clap::Parser;
use cli::{Cli, Command, TokenCommand};
use scenarios::Scenario;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_open_files_limit();
    match cli.command {
        Command::Token(token) => {
            println!("{}", mint(token));
            return ExitCode::SUCCESS;
        }
        Command::FloorReader { addr, sockets, source_ips, frame_bytes } => {
            return exit(floor::read_all(addr, sockets, source_ips, frame_bytes).map(|()| true))
        }
        Command::Floor(args) => return exit(floor::run(&args).map(|()| true)),
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Worker => worker::main().await.map(|()| true),
            Command::Idle(a) => run_clients(Scenario::Idle, a, None).await,
            Command::Fanout(a) => run_clients(Scenario::Fanout, a, None).await,
            Command::Steady(a) => run_clients(Scenario::Steady, a, None).await,
            Command::Churn(a) => run_clients(Scenario::Churn, a, None).await,
            Command::Failover(a) => run_clients(Scenario::Failover, a.run, Some(a.kill)).await,
            Command::Replay(a) => {
                let output = a.output.clone();
                scenarios::finish(scenarios::replay::run(a).await?, &output)
            }
            Command::Bridge(a) => {
                let output = a.output.clone();
                scenarios::finish(scenarios::bridge::run(a).await?, &output)
            }
            Command::Token(_) | Command::Floor(_) | Command::FloorReader { .. } => unreachable!("handled above"),
        }
    });
    exit(result)
}

fn exit(result: anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("loadtest: FAILED (see PROBLEM lines above)");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("loadtest: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_clients(scenario: Scenario, args: cli::RunArgs, kill: Option<cli::Kill>) -> anyhow::Result<bool> {
    if args.dry_run {
        print!("{}", scenarios::plan::render(scenario, &args)?);
        return Ok(true);
    }
    let output = args.output.clone();
    scenarios::finish(scenarios::clients::run(scenario, args, kill).await?, &output)
}

/// Raises the soft open-files limit to the hard one (each process holds up to `--per-worker`
/// sockets; the hard limit here is 20,000).
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

fn mint(command: TokenCommand) -> String {
    match command {
        TokenCommand::Staff { jwt_secret, user, tenant, branches, roles, ttl, url, endpoint } => {
            let token = tokens::staff(&jwt_secret, user, tenant, &branches, &roles, ttl);
            match url {
                None => token,
                Some(base) => {
                    let endpoint =
                        endpoint.unwrap_or_else(|| match roles.first().map(|r| r.to_ascii_uppercase()).as_deref() {
                            Some("KITCHEN") => "kitchen".into(),
                            Some("ADMIN" | "MANAGER") => "admin".into(),
                            _ => "waiter".into(),
                        });
                    format!("{}/ws/{endpoint}?token={token}", base.trim_end_matches('/'))
                }
            }
        }
        TokenCommand::Table { table_secret, tenant, branch, table, session, ttl, legacy, url } => {
            let token = tokens::table(&table_secret, tenant, branch, table, session, ttl, legacy);
            match url {
                None => token,
                Some(base) => format!("{}/ws/diner?table_token={token}", base.trim_end_matches('/')),
            }
        }
    }
}
