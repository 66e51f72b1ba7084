//! `aim gateway bench`: the time to first token the proxy adds.

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
