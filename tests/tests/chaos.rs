//! The short chaos run of `cargo xtask test`: services and the broker SIGKILLed and restarted
//! while conversations flow; every promise must hold (`cargo xtask chaos` runs a longer one).

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_the_broker_killed_at_random_keep_every_promise() {
    let conversations = std::env::var("CHAOS_CONVERSATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let report = e2e_tests::chaos::run(e2e_tests::chaos::Settings {
        conversations,
        rate: 5.0,
        concurrency: 64,
        kill_every: Duration::from_secs(4),
    })
    .await
    .expect("the chaos run ran");
    eprintln!("{report}");
    assert!(report.kills.values().sum::<usize>() >= 3, "too few kills to mean anything: {report}");
    assert!(report.broken.is_empty(), "{report}");
}
