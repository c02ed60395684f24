//! `testbed serve --kubeconfig PATH`: the test control plane as a process. Starts the
//! Kubernetes API server and the Atlassian stand-in (demo world) on free loopback ports, writes
//! the kubeconfig, prints one JSON line `{"apiserver", "atlassian", "kubeconfig"}` and runs
//! until killed.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use testbed::apiserver::ApiServer;
use testbed::atlassian::StandIn;

#[derive(Parser)]
#[command(
    name = "testbed",
    about = "Test control plane: Kubernetes API server and Atlassian stand-in"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve both until killed.
    Serve {
        /// Where to write the kubeconfig.
        #[arg(long)]
        kubeconfig: PathBuf,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let Command::Serve { kubeconfig } = Cli::parse().command;
    let started = async {
        let apiserver = ApiServer::start().await?;
        apiserver.write_kubeconfig(&kubeconfig)?;
        let atlassian = StandIn::demo_world().await?;
        Ok::<_, std::io::Error>((apiserver, atlassian))
    };
    match started.await {
        Ok((apiserver, atlassian)) => {
            let line = serde_json::json!({"apiserver": apiserver.url(), "atlassian": atlassian.url(), "kubeconfig": kubeconfig});
            println!("{line}");
            let _ = tokio::signal::ctrl_c().await;
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("testbed: could not start: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
