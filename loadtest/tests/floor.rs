//! `loadtest floor` on its own: the real binary, its reader process and loopback sockets.

use serde_json::Value;
use std::process::Command;

fn floor(args: &[&str], report: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("floor")
        .args(args)
        .arg("--report-json")
        .arg(report)
        .output()
        .expect("run loadtest floor")
}

#[test]
fn spaced_sockets_are_measured_and_reported() {
    let report = std::env::temp_dir().join(format!("loadtest-floor-{}.json", std::process::id()));
    let out =
        floor(&["--sockets", "60", "--fanout", "5", "--stride", "10", "--rate", "1000", "--duration", "0.5"], &report);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("sockets 10 apart"), "{stdout}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let _ = std::fs::remove_file(&report);
    let f = &json["floor"][0];
    assert_eq!(
        (f["stride"].as_u64(), f["fanout"].as_u64(), f["sockets"].as_u64()),
        (Some(10), Some(5), Some(60)),
        "{f}"
    );
    // 1,000 frames/s for half a second: 100 events of five frames.
    assert_eq!(f["deliveries"], 500, "{f}");
    assert!(f["cpu_us_per_delivery"].as_f64().unwrap() > 0.0, "{f}");
    assert_eq!(f["run_recipients"], false, "{f}");
    // Every frame carried its event's time, and the reader read it back.
    assert_eq!(f["latency"]["count"], 500, "{f}");
    let (p50, max) = (f["latency"]["p50_us"].as_u64().unwrap(), f["latency"]["max_us"].as_u64().unwrap());
    assert!(0 < p50 && p50 <= max && max < 60_000_000, "{f}");
    assert!(stdout.contains("write to read p50"), "{stdout}");
}

#[test]
fn a_fan_out_that_cannot_be_spaced_is_refused() {
    let report = std::env::temp_dir().join(format!("loadtest-floor-refused-{}.json", std::process::id()));
    // Six sockets ten apart need more than the fifty there are: one would be written twice.
    let out = floor(&["--sockets", "50", "--fanout", "6", "--stride", "10", "--duration", "0.2"], &report);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("a fan-out of 6 with sockets 10 apart needs more than 50 sockets"), "{stderr}");
    assert!(!report.exists(), "no report for a refused measurement");
}
