use clap::Parser;

/// aim: serve LLMs on Kubernetes with demand-based autoscaling.
#[derive(Parser)]
#[command(name = "aim", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
