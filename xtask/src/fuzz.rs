//! `cargo xtask fuzz [seconds]`: runs the cargo-fuzz target of the webhook parsers and signature
//! code (`tests/fuzz`) for a bounded time; `cargo xtask test` runs it after the tests.
//!
//! It runs on the stable toolchain (`--sanitizer none`: libFuzzer's coverage guidance without
//! AddressSanitizer, which needs nightly; the code under test forbids `unsafe`). New inputs go
//! to `target/fuzz-corpus/`, a crash to `tests/fuzz/artifacts/`, and the run fails.

use std::process::ExitCode;

use anyhow::Context as _;
use tokio::process::Command;

use crate::broker::{cargo_bin_dir, installed_version};

const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// How long `cargo xtask test` fuzzes unless `FUZZ_SECONDS` says otherwise (0 skips).
pub(crate) const DEFAULT_SECONDS: u64 = 30;

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    command.current_dir(crate::channel::root());
    command
}

async fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let binary = cargo_bin_dir().join("cargo-fuzz");
    if installed_version(&binary).await.is_some_and(|version| version.contains(CARGO_FUZZ_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (once per machine, under a minute)");
    let status = cargo()
        .args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION])
        .status()
        .await
        .context("running cargo install cargo-fuzz")?;
    anyhow::ensure!(status.success(), "cargo install cargo-fuzz failed ({status})");
    Ok(())
}

/// Fuzzes the webhook target for `seconds`.
pub(crate) async fn run(seconds: u64) -> anyhow::Result<ExitCode> {
    ensure_cargo_fuzz().await?;
    let root = crate::channel::root();
    let corpus = root.join("target/fuzz-corpus/webhook");
    std::fs::create_dir_all(&corpus)?;
    // libFuzzer's progress goes to a log, so the end of a CI log stays the test summary.
    let log_path = root.join("target/fuzz-webhook.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    eprintln!("xtask: fuzzing the webhook parsers and signatures for {seconds} s (log: {})", log_path.display());
    let status = cargo()
        .args(["fuzz", "run", "--fuzz-dir", "tests/fuzz", "--sanitizer", "none", "--target-dir", "target/fuzz"])
        .arg("webhook")
        .arg(&corpus)
        .arg(root.join("tests/fuzz/seeds/webhook"))
        .args(["--", &format!("-max_total_time={seconds}"), "-print_final_stats=1"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .await
        .context("running cargo fuzz")?;
    if status.success() {
        println!("fuzz: webhook target ran {seconds} s without a crash");
        Ok(ExitCode::SUCCESS)
    } else {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[lines.len().saturating_sub(40)..] {
            println!("  {line}");
        }
        println!("fuzz: webhook target failed ({status}); the input is in tests/fuzz/artifacts/webhook/");
        Ok(ExitCode::FAILURE)
    }
}
