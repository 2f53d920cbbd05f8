//! The operator binary.
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ringstore_operator::run(ringstore_operator::Args::parse()).await
}
