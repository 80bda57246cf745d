//! What every binary of the workspace shares around its command: the object-store
//! flags ([`StoreFlags`]), `-q`/`-v` ([`OutputFlags`]), logging to stderr, and the
//! exit code the README documents (2 on error, after printing the error with its
//! causes).

use std::process::ExitCode;

mod output_flags;
mod store_flags;

pub use output_flags::OutputFlags;
pub use store_flags::StoreFlags;

/// Logs to stderr, filtered by `RUST_LOG`, else by `-q`/`-v` (default `warn`).
pub fn init_logging(output: &OutputFlags) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| output.log_filter().into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The command's own code, or 2 with `error: …` and its causes, each said once (a
/// cause whose text the one before it already holds is dropped).
pub fn exit_code<E: Into<Box<dyn std::error::Error + Send + Sync>>>(outcome: Result<ExitCode, E>) -> ExitCode {
    outcome.unwrap_or_else(|e| {
        let e: Box<dyn std::error::Error + Send + Sync> = e.into();
        eprintln!("error: {}", crate::verify::error_chain(e.as_ref()));
        ExitCode::from(crate::exit::ERROR)
    })
}
