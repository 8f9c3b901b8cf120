//! `keyward`: parses the command line and runs it.

use clap::Parser;

// Why: buffers allocated on one Tokio worker are freed on another or in the metering task,
// and glibc's malloc serialises that on its arena locks (under load, 2.5 times as many
// futex calls per request as mimalloc). mimalloc frees across threads without a shared
// lock (docs/BENCHMARKS.md, "Why the code is as it is").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One TLS stack: rustls on ring, for PostgreSQL (sqlx) and Redis alike. sqlx names its
    // provider itself, but the Redis client builds its TLS configuration from the process
    // default, which rustls can only guess when exactly one provider is compiled in; set it
    // before anything connects. `Err` means one is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = keyward::cli::Cli::parse();
    match keyward::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            keyward::report_error(&e);
            std::process::ExitCode::FAILURE
        }
    }
}
