//! `keyward`: parses the command line and runs it.

use clap::Parser;

// Why: under load glibc malloc's arena locks showed up as the most frequent syscall (futex,
// about one per three requests): buffers allocated on one Tokio worker are freed on
// another or in the metering task. mimalloc frees across threads without a shared lock.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
