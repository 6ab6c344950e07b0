//! `reel bench …`: runs the `reel-bench` binary built beside this one, so the shipped binary
//! links none of the benchmarks' dependencies. Every argument after `bench` goes to it.

use std::ffi::OsString;

use anyhow::{Context, Result};
use clap::Args;

use crate::exit::InvalidInput;
use crate::Cli;

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct BenchArgs {
    /// The bench and its options, e.g. `append --events 100000` (`reel bench --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

pub async fn run(cli: &Cli, args: &BenchArgs) -> Result<()> {
    let binary = match std::env::var_os("REEL_BENCH_BIN") {
        Some(path) => path.into(),
        None => std::env::current_exe().context("locating the reel binary")?.with_file_name("reel-bench"),
    };
    if !binary.exists() {
        anyhow::bail!(InvalidInput(format!(
            "{} is not built; build it with `cargo build --release -p reel-bench` (or set REEL_BENCH_BIN)",
            binary.display()
        )));
    }
    let reel = std::env::current_exe().context("locating the reel binary")?;
    let status = tokio::process::Command::new(&binary)
        .arg("--store")
        .arg(&cli.store)
        .args(&args.args)
        .env("REEL_BIN", reel)
        .status()
        .await
        .with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        anyhow::bail!("the bench failed ({status})");
    }
    Ok(())
}
