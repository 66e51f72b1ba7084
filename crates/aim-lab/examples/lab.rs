//! `aim lab` without the `aim` binary: `cargo run --release -p aim-lab --example lab -- compare ...`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "lab")]
struct Cli {
    #[command(flatten)]
    lab: aim_lab::LabArgs,
}

fn main() -> std::process::ExitCode {
    match aim_lab::run(Cli::parse().lab) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
