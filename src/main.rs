//! Binary entry point: parse the command line, set up logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use confluence_auth_operator::config::{Cli, Command};
#[cfg(feature = "demo")]
use confluence_auth_operator::demo;
use confluence_auth_operator::{api_client, consumer, crd, operator, telemetry};

/// mimalloc rather than glibc's malloc: a refresh is many small allocations, and glibc's cost
/// a quarter of the operator's CPU in benchmark 2 (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's own lines are the story; the operator's INFO lines only with `--operator-logs`.
    let default_filter = match &cli.command {
        #[cfg(feature = "demo")]
        Command::Demo(args) if !args.operator_logs => "warn",
        _ => "info",
    };
    telemetry::init(cli.log_format, default_filter);
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Crd { out_dir: None } => {
            print!("{}", crd::render_all());
            Ok(())
        }
        Command::Crd { out_dir: Some(dir) } => crd::write_files(&dir).map_err(Into::into),
        #[cfg(feature = "demo")]
        Command::Demo(args) => runtime().and_then(|rt| {
            rt.block_on(demo::run(args))
                .map_err(|e| e as Box<dyn std::error::Error>)
        }),
        Command::Proxy(args) => runtime().and_then(|rt| {
            rt.block_on(consumer::proxy::run(args, shutdown_signal()))
                .map_err(Into::into)
        }),
        Command::Gateway(args) => runtime().and_then(|rt| rt.block_on(consumer::gateway::run(args, shutdown_signal()))),
        Command::Authorize(args) => {
            runtime().and_then(|rt| rt.block_on(consumer::cli::authorize(args)).map_err(Into::into))
        }
        Command::Status(args) => runtime().and_then(|rt| rt.block_on(consumer::cli::status(args)).map_err(Into::into)),
        Command::Run(args) => runtime().and_then(|rt| {
            rt.block_on(async {
                let client = api_client::connect().await?;
                operator::run(*args, client, shutdown_signal(), |_| {}).await?;
                Ok(())
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "confluence-auth-operator failed");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Box<dyn std::error::Error>> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
