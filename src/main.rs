//! The `tokensync` binary: parses flags, sets up logging and hands over to
//! the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tokensync::cli::Cli::parse();
    tokensync::cli::run(cli)
}
