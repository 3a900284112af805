//! `cargo xtask chaos`: the chaos run at full size (`CHAOS_CONVERSATIONS`, default 10,000;
//! `CHAOS_RATE` conversations started per second, default 6; `CHAOS_KILL_EVERY_MS`, default
//! 5,000). Prints the report; exits non-zero when a promise broke.

use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let report = e2e_tests::chaos::run(e2e_tests::chaos::Settings {
        conversations: env("CHAOS_CONVERSATIONS", 10_000) as usize,
        rate: env("CHAOS_RATE", 6) as f64,
        concurrency: env("CHAOS_CONCURRENCY", 256) as usize,
        kill_every: Duration::from_millis(env("CHAOS_KILL_EVERY_MS", 5_000)),
    })
    .await?;
    println!("{report}");
    Ok(if report.broken.is_empty() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}
