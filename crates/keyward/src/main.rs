//! `keyward`: parses the command line and runs it.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = keyward::cli::Cli::parse();
    match keyward::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyward: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
