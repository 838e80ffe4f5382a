//! The `kiln` binary: parse, set up logging, run, report.

use std::process::ExitCode;

use clap::Parser;

use kiln::cli::Exit;

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(e) = kiln::cli::logging::init() {
        eprintln!("kiln: {e}");
        return Exit::Usage.into();
    }
    match kiln::cli::run(kiln::cli::Cli::parse()).await {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("kiln: {e:#}");
            Exit::Error.into()
        }
    }
}
