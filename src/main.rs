//! Binary entry point: parse the command line, set up logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use confluence_auth_operator::config::{Cli, Command};
use confluence_auth_operator::{crd, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Crd { out_dir: None } => {
            print!("{}", crd::render_all());
            Ok(())
        }
        Command::Crd { out_dir: Some(dir) } => crd::write_files(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "command failed");
            ExitCode::FAILURE
        }
    }
}
