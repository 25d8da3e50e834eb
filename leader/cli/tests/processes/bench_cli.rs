//! `meridian bench` end to end: the real binary starts two regions, runs every phase briefly,
//! and leaves a JSON report and a PNG chart.

use std::process::Command;

use crate::harness::{meridian, one_at_a_time};

#[test]
fn bench_runs_every_phase_and_writes_json_and_chart() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let json_path = dir.path().join("bench.json");
    let png_path = dir.path().join("bench.png");
    let out = Command::new(meridian())
        .current_dir(dir.path())
        .args([
            "bench",
            "--regions",
            "2",
            "--keys",
            "500",
            "--key-dist",
            "zipfian",
            "--conflict-share",
            "0.1",
            "--concurrency",
            "8",
            "--duration-secs",
            "1",
            "--latency-secs",
            "1",
            "--latency-rate",
            "50",
            "--lag-secs",
            "1",
            "--lag-rate",
            "100",
            "--backlog",
            "2000",
            "--backlog-concurrency",
            "32",
        ])
        .arg("--out")
        .arg(&json_path)
        .arg("--chart")
        .arg(&png_path)
        .output()
        .expect("run meridian bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed:\n{stderr}\n{stdout}");
    assert!(stdout.contains("sustained writes/s"), "{stdout}");

    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("the JSON report"))
            .expect("valid JSON");
    let s = &doc["summary"];
    for key in [
        "regions",
        "sustained_writes_per_sec",
        "total_writes_per_sec",
        "lag_p50_ms",
        "lag_p99_ms",
        "lag_max_ms",
        "catchup_ms",
        "catchup_writes_per_sec",
        "bytes_per_replicated_write",
        "converged",
    ] {
        assert!(s.get(key).is_some(), "summary lacks {key}: {s}");
    }
    assert_eq!(s["regions"], 2);
    assert_eq!(s["converged"], true, "{s}");
    assert!(s["total_writes_per_sec"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["catchup_ms"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["catchup_writes_per_sec"].as_f64().unwrap() > 0.0, "{s}");
    assert!(
        s["bytes_per_replicated_write"].as_f64().unwrap() > 0.0,
        "{s}"
    );
    assert_eq!(doc["catchup"]["missing_writes"], 2000, "{}", doc["catchup"]);
    let pairs = doc["lag"]["pairs"].as_object().expect("lag pairs");
    for pair in ["r0 -> r1", "r1 -> r0"] {
        assert!(
            pairs[pair]["count"].as_u64().unwrap() > 0,
            "{pair}: {pairs:?}"
        );
    }
    let levels: Vec<&str> = doc["latency"]
        .as_array()
        .expect("latency levels")
        .iter()
        .map(|l| l["durability"].as_str().unwrap())
        .collect();
    assert_eq!(levels, ["local", "one", "quorum", "all"]);
    assert!(doc["timeseries"].as_array().unwrap().len() > 4);

    let png = std::fs::read(&png_path).expect("the chart");
    assert!(png.len() > 1000, "{} bytes", png.len());
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
}

#[test]
fn bad_flag_combinations_fail_with_advice() {
    let out = Command::new(meridian())
        .args(["bench", "--phases", "lag"])
        .output()
        .expect("run meridian bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("add throughput to --phases"), "{stderr}");
}

/// The wan phase: closed-loop load over links with latency and jitter, sampled every second,
/// with `--lag-rate auto` taken from it when there is no throughput phase.
#[test]
fn the_wan_phase_reports_throughput_over_time_lag_and_relays() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let json_path = dir.path().join("bench.json");
    let out = Command::new(meridian())
        .current_dir(dir.path())
        .args([
            "bench",
            "--regions",
            "3",
            "--latency-ms",
            "5",
            "--jitter-ms",
            "1",
            "--phases",
            "wan,lag",
            "--wan-secs",
            "4",
            "--concurrency",
            "6",
            "--keys",
            "200",
            "--lag-secs",
            "1",
        ])
        .arg("--out")
        .arg(&json_path)
        .output()
        .expect("run meridian bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed:\n{stderr}\n{stdout}");
    assert!(stdout.contains("wan writes/s over time"), "{stdout}");
    assert!(stdout.contains("wan writes relayed"), "{stdout}");

    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("the JSON report"))
            .expect("valid JSON");
    assert_eq!(doc["args"]["jitter_ms"], 1, "{}", doc["args"]);
    let wan = &doc["wan"];
    assert_eq!(
        (
            wan["injected_one_way_ms"].as_u64(),
            wan["jitter_ms"].as_u64()
        ),
        (Some(5), Some(1))
    );
    assert!(wan["writes"].as_u64().unwrap() > 0, "{wan}");
    let samples = wan["samples"].as_array().expect("samples");
    assert!(
        (3..=5).contains(&samples.len()),
        "one a second: {}",
        samples.len()
    );
    for s in samples {
        assert_eq!(
            s["region_writes_per_sec"].as_array().unwrap().len(),
            3,
            "{s}"
        );
        assert_eq!(
            s["lag_ms"].as_object().unwrap().len(),
            6,
            "every ordered pair: {s}"
        );
    }
    for key in [
        "relayed",
        "relayed_per_client_write",
        "resyncs",
        "trend_pct_per_min",
        "drain_secs",
    ] {
        assert!(
            wan.get(key).is_some_and(|v| !v.is_null()),
            "wan lacks {key}: {wan}"
        );
    }
    assert!(wan["lag"]["count"].as_u64().unwrap() > 0, "{wan}");
    let s = &doc["summary"];
    assert_eq!(s["converged"], true, "{s}");
    assert!(s["wan_writes_per_sec"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["wan_relayed_per_client_write"].is_f64(), "{s}");
    assert_eq!(doc["lag"]["rate_source"], "auto", "{}", doc["lag"]);
    assert!(
        (doc["lag"]["rate_per_sec"].as_f64().unwrap()
            - wan["writes_per_sec"].as_f64().unwrap() / 2.0)
            .abs()
            < 1.0,
        "auto is half the wan rate: {} vs {}",
        doc["lag"]["rate_per_sec"],
        wan["writes_per_sec"]
    );
}
