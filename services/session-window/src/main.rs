//! The session-window service, and `session-window rebuild [--since TIME] [--dry-run]`.

use std::io::{IsTerminal as _, Write as _};

use session_window::rebuild::{self, Options, Progress};

#[global_allocator]
static ALLOCATOR: wa_platform::Allocator = wa_platform::Allocator;

const USAGE: &str = "usage: session-window                      run the service
       session-window rebuild [--since TIME] [--dry-run]
                                          replay wa.inbound.v1 and wa.outbound.dispatched.v1 from their
                                          beginning (or from TIME: RFC 3339 or Unix millis), and the
                                          consent kept on wa.consent.v1 (always whole), into fresh
                                          state and rewrite wa.sessions.v1; stop the service first";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {
            let _telemetry = wa_platform::telemetry::init(session_window::SERVICE)?;
            let config = session_window::Config::from_env()?;
            session_window::run(config, wa_platform::shutdown::on_signal()).await
        }
        Some("rebuild") => {
            let _telemetry = wa_platform::telemetry::init_with(session_window::SERVICE, "warn", false)?;
            let options = parse_rebuild(&args[1..])?;
            run_rebuild(options).await
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => anyhow::bail!("unknown command {other:?}\n{USAGE}"),
    }
}

fn parse_rebuild(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dry-run" => options.dry_run = true,
            "--since" => {
                let value = args.next().ok_or_else(|| anyhow::anyhow!("--since needs a time\n{USAGE}"))?;
                options.since = Some(parse_time(value)?);
            }
            other => anyhow::bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    Ok(options)
}

fn parse_time(value: &str) -> anyhow::Result<i64> {
    if let Ok(millis) = value.parse::<i64>() {
        return Ok(millis);
    }
    chrono::DateTime::parse_from_rfc3339(value).map(|time| time.timestamp_millis()).map_err(|err| {
        anyhow::anyhow!("--since {value:?} is neither RFC 3339 (2026-11-20T00:00:00Z) nor Unix millis: {err}")
    })
}

/// A progress line: a bar on a terminal, a line every two seconds otherwise.
fn progress_printer() -> impl FnMut(&Progress) + Send + 'static {
    let terminal = std::io::stderr().is_terminal();
    let mut last_line = std::time::Instant::now();
    move |progress: &Progress| {
        let done = if progress.total == 0 { 1.0 } else { progress.events as f64 / progress.total as f64 };
        let filled = (done * 30.0).round() as usize;
        let line = format!(
            "[{}{}] {:>5.1}%  {} events  {:.0} events/s  lag {}",
            "#".repeat(filled.min(30)),
            " ".repeat(30 - filled.min(30)),
            done * 100.0,
            progress.events,
            progress.rate(),
            progress.lag()
        );
        if terminal {
            eprint!("\r{line}");
            let _ = std::io::stderr().flush();
        } else if last_line.elapsed().as_secs() >= 2 || progress.lag() == 0 {
            eprintln!("{line}");
            last_line = std::time::Instant::now();
        }
    }
}

async fn run_rebuild(options: Options) -> anyhow::Result<()> {
    let config = session_window::Config::from_env()?;
    wa_platform::kafka::wait_for_broker(&config.kafka, std::time::Duration::from_secs(30)).await?;
    let rebuilt =
        rebuild::rebuild(&config.kafka, &config.keywords, config.expiring_lead, &options, progress_printer()).await?;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    let s = &rebuilt.summary;
    println!(
        "rebuilt {} conversations ({} with an open window, {} opted out) from {} events in {:.1} s ({:.0} events/s); {} undecodable skipped",
        s.conversations,
        s.open_windows,
        s.opted_out,
        s.events,
        s.replay.as_secs_f64(),
        s.events as f64 / s.replay.as_secs_f64().max(1e-9),
        s.undecodable
    );
    if options.dry_run {
        println!("dry run: wa.sessions.v1 left as it was");
    } else {
        println!(
            "wrote {} snapshots and {} tombstones to wa.sessions.v1; {} consent facts added to wa.consent.v1; {:.1} s in all",
            s.snapshots,
            s.tombstones,
            s.consent_added,
            s.elapsed.as_secs_f64()
        );
    }
    Ok(())
}
