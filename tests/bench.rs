//! `service-mgr bench --quick`: every figure measured, complete, with positive numbers.

use crate::util::{bin, with_timeout};
use serde_json::Value;
use std::process::{Command, Stdio};

#[test]
fn quick_bench_reports_every_figure_complete() {
    with_timeout(60, || {
        let out = Command::new(bin())
            .args([
                "bench",
                "--quick",
                "--sizes",
                "1,10",
                "--reps",
                "3",
                "--runs",
                "1",
                "--duration",
                "0.3",
                "--json",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "bench output is not JSON ({e}):\n{}\n{stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert!(out.status.success(), "bench failed: {doc:#}\n{stderr}");
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
