//! `cargo test -p apiary-chaos`: a short schedule of faults against five real nodes in network
//! namespaces (root only), failing on any violation. APIARY_CHAOS_MINUTES=60 makes it a soak;
//! APIARY_CHAOS_SEED replays a run's schedule.

use std::time::Duration;

use apiary_chaos::hosts::root;
use apiary_chaos::run::{run, Plan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_stays_linearizable_under_faults() {
    if !root() {
        eprintln!("skipped: the chaos suite needs root (network namespaces and iptables)");
        return;
    }
    let minutes: Option<f64> = std::env::var("APIARY_CHAOS_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok());
    let plan = Plan {
        seed: Plan::seed_from_env(),
        duration: minutes.map_or(Duration::from_secs(90), |m| {
            Duration::from_secs_f64(m * 60.0)
        }),
        fault_for: (Duration::from_secs(2), Duration::from_secs(6)),
        quiet_for: (Duration::from_secs(1), Duration::from_secs(3)),
        writers: 3,
        local_readers: 2,
        linearizable_readers: 2,
        apps: true,
    };
    let report = run(&plan).await.expect("the chaos run");
    println!("{report}");
    assert_eq!(report.violations(), 0, "{report}");
}
