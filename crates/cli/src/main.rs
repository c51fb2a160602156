//! `ragmeshctl`: parse the command line (usage errors exit 64), run the command, print the
//! error and exit 1 (or 64 for configuration errors) when it fails.

use std::process::ExitCode;

use clap::Parser as _;
use ragmeshctl::args::Cli;
use ragmeshctl::error::{EXIT_OK, EXIT_USAGE, exit_code};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are "errors" printed to stdout; both are successes.
            let code = if err.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    match ragmeshctl::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ragmeshctl: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}
