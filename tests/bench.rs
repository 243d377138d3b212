//! `service-mgr-bench --quick` (bench/) against this build's `service-mgr`:
//! every figure measured, complete, with positive numbers.

use crate::util::{bin, with_timeout};
use clap::Parser;
use service_mgr_bench::{proc_kib, BenchArgs, Figure, Stats, Target};
use std::path::Path;

#[test]
fn quick_bench_reports_every_figure_complete() {
    with_timeout(60, || {
        let args = BenchArgs::try_parse_from([
            "service-mgr-bench",
            "--quick",
            "--sizes",
            "1,10",
            "--reps",
            "3",
            "--runs",
            "1",
            "--duration",
            "0.3",
            // Cold start, restart and drop of a small fleet: the code path,
            // not the figures (the real ones take 10,000 agents).
            "--fleet",
            "20",
            "--json",
        ])
        .unwrap();
        let report = service_mgr_bench::measure(&args, Path::new(bin())).unwrap();
        let doc = report.to_json();
        assert!(!report.failed(), "bench failed: {doc:#}");
        assert_eq!(
            doc["config"]["security"]
                .as_str()
                .map(|s| s.starts_with("on")),
            Some(true)
        );
        let figures = doc["figures"].as_array().expect("a list of figures");
        let ids: Vec<&str> = figures.iter().filter_map(|f| f["id"].as_str()).collect();
        for id in [
            "broadcast_1",
            "broadcast_10",
            "throughput_1_client",
            "throughput_32_clients",
            "client_exit",
            "rss_manager_idle",
            "rss_agent_idle",
            "rss_manager_10_agents",
            "stop_manager_10_agents",
            "jobstore_lazy",
            "jobstore_durable",
            "fleet_20_cold_start",
            "fleet_20_restart",
            "fleet_20_restart_status",
            "fleet_20_drop_lost",
            "fleet_20_drop_status",
        ] {
            assert!(ids.contains(&id), "no figure {id} in {ids:?}");
        }
        for f in figures {
            assert_eq!(f["errors"], 0, "{f:#}");
            assert!(f["runs"].as_u64().unwrap_or(0) > 0, "{f:#}");
            for k in ["median", "p99", "min", "max"] {
                assert!(f[k].as_f64().unwrap_or(0.0) > 0.0, "{k} of {f:#}");
            }
            if let Some(expected) = f.get("results_expected") {
                assert!(expected.as_u64().unwrap_or(0) > 0, "{f:#}");
                assert_eq!(f["results_received"], *expected, "{f:#}");
            }
        }
    });
}

// The bench's own arithmetic, here so that a plain `cargo test` runs it.

#[test]
fn median_and_nearest_rank_p99() {
    let s = Stats::of(&[3.0, 1.0, 2.0], false).unwrap();
    assert_eq!((s.median, s.p99, s.min, s.max), (2.0, 3.0, 1.0, 3.0));
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    let s = Stats::of(&v, false).unwrap();
    assert_eq!((s.median, s.p99), (50.5, 99.0));
    let s = Stats::of(&v, true).unwrap();
    assert_eq!(s.p99, 1.0, "for rates the tail is the low end");
    assert!(Stats::of(&[], false).is_none());
}

#[test]
fn proc_lines_in_kib() {
    let text = "Name:\tx\nVmRSS:\t    4321 kB\nPss:  12 kB\n";
    assert_eq!(proc_kib(text, "VmRSS:"), Some(4321));
    assert_eq!(proc_kib(text, "Pss:"), Some(12));
    assert_eq!(proc_kib(text, "VmHWM:"), None);
}

#[test]
fn a_missed_run_fails_the_target() {
    let mut f = Figure::new("x", "x", "ms").target(Target::Below(10.0));
    f.samples = vec![1.0, 2.0];
    assert_eq!(f.met(), Some(true));
    f.failed(&anyhow::anyhow!("2 of 3 answered"));
    assert_eq!(f.met(), Some(false));
    assert_eq!(f.to_json()["errors"], 1);
}
