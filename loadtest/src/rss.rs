//! Gateway memory: finds gateway processes (given pids, or every process whose executable is
//! named like the gateway binary and whose `GATEWAY_LISTEN_ADDR` port is one of the target URLs'
//! ports) and reads their resident set size from `/proc/<pid>/status`. Linux only.

use std::path::Path;

/// The gateway's default listen port when `GATEWAY_LISTEN_ADDR` is unset.
const DEFAULT_PORT: u16 = 8001;

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&status)
}

fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds used so far by `pid` (fields 14 and 15 of `/proc/<pid>/stat`).
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu(&stat)
}

fn parse_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    Some(ticks as f64 / hz)
}

/// Sum of [`cpu_seconds`] over `pids`.
pub fn total_cpu_seconds(pids: &[i32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p)).sum()
}

/// [`cpu_seconds`] of each of `pids`, `None` for those not found.
pub fn cpu_readings(pids: &[i32]) -> Vec<Option<f64>> {
    pids.iter().map(|p| cpu_seconds(*p)).collect()
}

/// CPU seconds `pids` used since `before` (their [`cpu_readings`]); a process that is gone now
/// (a killed gateway) counts for nothing.
pub fn cpu_used_since(pids: &[i32], before: &[Option<f64>]) -> f64 {
    pids.iter().zip(before).filter_map(|(pid, before)| Some(cpu_seconds(*pid)? - (*before)?)).sum()
}

/// Sum of `VmRSS` over `pids` (those that are gone count as 0).
pub fn total_kib(pids: &[i32]) -> u64 {
    pids.iter().filter_map(|p| rss_kib(*p)).sum()
}

/// Gateway processes named `bin_name` listening on one of `ports` (any port when empty).
pub fn discover(bin_name: &str, ports: &[u16]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let dir = Path::new("/proc").join(pid.to_string());
            let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
                return false;
            };
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            let name = Path::new(std::str::from_utf8(argv0).unwrap_or_default())
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name != bin_name {
                return false;
            }
            if ports.is_empty() {
                return true;
            }
            let environ = std::fs::read(dir.join("environ")).unwrap_or_default();
            ports.contains(&listen_port(&environ))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The port of `GATEWAY_LISTEN_ADDR` in a NUL-separated environment block.
fn listen_port(environ: &[u8]) -> u16 {
    environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("GATEWAY_LISTEN_ADDR="))
        .and_then(|addr| addr.rsplit(':').next()?.parse().ok())
        .unwrap_or(DEFAULT_PORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vmrss_and_listen_ports() {
        assert_eq!(parse_vmrss("Name:\tgateway\nVmPeak:\t  9 kB\nVmRSS:\t   12345 kB\n"), Some(12345));
        assert_eq!(parse_vmrss("Name: x\n"), None);
        assert_eq!(listen_port(b"A=1\0GATEWAY_LISTEN_ADDR=127.0.0.1:8002\0B=2"), 8002);
        assert_eq!(listen_port(b"A=1\0"), 8001);
        assert!(rss_kib(std::process::id() as i32).unwrap() > 0);
        assert_eq!(parse_cpu("42 (a b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0"), Some(300.0 / 100.0));
        assert!(cpu_seconds(std::process::id() as i32).is_some());
    }
}
