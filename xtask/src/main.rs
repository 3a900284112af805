//! `cargo xtask`: the project's own scripts.
//!
//! - `cargo xtask up [--fresh]`: runs the whole channel locally: a tansu broker (installed on
//!   first use) with SQLite storage under `.local/`, the topics, the four services and the
//!   Twilio simulator. Ctrl-C stops everything cleanly.
//! - `cargo xtask test [-- <cargo test args>]`: starts a throwaway broker and runs every test.
//!   Then fuzzes the webhook parsers for `FUZZ_SECONDS` (default 30; 0 skips).
//! - `cargo xtask fuzz [seconds]`: only the fuzzing (default 60 s).
//! - `cargo xtask check`: only the deployment checks a full `test` ends with: alert rules and
//!   dashboard queries (promtool), Kubernetes manifests (kustomize, kubernetes-validate).
//! - `cargo xtask broker`: only the broker and topics, until Ctrl-C.
//! - `cargo xtask inbound --from <customer> --body <text>`: posts a webhook signed the way
//!   Twilio signs it to the running ingress, as a customer's WhatsApp message would arrive.
//! - `cargo xtask events <topic>`: prints every record of a topic, decoded with `schemas/`.
//! - `cargo xtask chaos`: the chaos run (`tests/src/chaos.rs`) at full size.
//! - `cargo xtask bench <name>`: the benchmarks (`docs/benchmarks.md`).
//!
//! With `KAFKA_BOOTSTRAP_SERVERS` set, that broker is used and no tansu is started.

mod broker;
mod channel;
mod fuzz;

use std::process::ExitCode;

fn usage() -> &'static str {
    "usage: cargo xtask <command>

commands:
  up [--fresh]                 run the whole channel locally (Ctrl-C stops it); --fresh wipes .local/
  test [-- <cargo test args>]  start a throwaway broker and run every test, then fuzz (FUZZ_SECONDS, default 30)
  fuzz [seconds]               fuzz the webhook parsers and signature code (default 60 s)
  check                        check the alert rules (promtool) and the Kubernetes manifests (kustomize, kubernetes-validate)
  broker                       run only the broker (with topics) until Ctrl-C
  inbound --from <addr> --body <text> [--to <addr>] [--sid <MessageSid>] [--url <ingress url>]
                               post a signed WhatsApp webhook to ingress, as Twilio would
  events <topic>               print a topic's records (e.g. wa.outbound.rejected.v1) as JSON lines
  chaos                        kill and restart services and the broker while 10,000 conversations flow, then
                               check every promise (CHAOS_CONVERSATIONS, CHAOS_RATE, CHAOS_KILL_EVERY_MS)
  bench templates              authorizations/s at 10,000 templates (release build)
  bench ingress                signed webhooks/s and latency vs a bare handler (release build)
  bench dispatch               sends/s per sender at 20 x 80/s against the simulator (release build)
  bench sessions               session-window rebuild rate and memory per conversation (release build)
  bench e2e                    the whole channel as processes under an open-loop CRM load (release builds;
                               BENCH_RATES, BENCH_SECONDS, BENCH_STORAGE=sqlite://tansu.db)

environment:
  KAFKA_BOOTSTRAP_SERVERS      use this broker instead of starting tansu
  TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN   credentials (local defaults otherwise)"
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("up") => channel::up(args.iter().any(|a| a == "--fresh")).await,
        Some("test") => channel::test(args.iter().skip_while(|a| *a != "--").skip(1).cloned().collect()).await,
        Some("broker") => channel::broker_only().await,
        Some("check") => channel::check_deployment().await,
        Some("fuzz") => match args.get(1).map(|s| s.parse::<u64>()).transpose() {
            Ok(seconds) => fuzz::run(seconds.unwrap_or(60)).await,
            Err(_) => {
                eprintln!("{}", usage());
                return ExitCode::from(2);
            }
        },
        Some("inbound") => channel::inbound(&args[1..]).await,
        Some("events") => channel::events(args.get(1).map(String::as_str)).await,
        Some("bench") => channel::bench(args.get(1).map(String::as_str)).await,
        Some("chaos") => channel::chaos().await,
        Some("help" | "--help" | "-h") => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{}", usage());
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}
