//! What a [`super::ClusterStack`] needs from the machine before it starts: the exclusive lock
//! (one cluster at a time) and the `publisher-bridge` binary, built with cargo when missing or
//! older than its sources.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{Flock, FlockArg};

use super::super::repo_root;

/// How long a `cargo build -p publisher-bridge` may take on a slow CI machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// One stack at a time per machine (see the module documentation).
pub(super) async fn exclusive_lock() -> Flock<File> {
    let path = std::env::temp_dir().join("testkit-cluster.lock");
    let mut told = false;
    let started = Instant::now();
    loop {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("testkit: open {}: {e}", path.display()));
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                if told {
                    eprintln!("testkit: waited {:.1} s for the other ClusterStack", started.elapsed().as_secs_f64());
                }
                return lock;
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                if !told {
                    eprintln!(
                        "testkit: another ClusterStack runs on this machine; waiting for it ({})",
                        path.display()
                    );
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err((_, errno)) => panic!("testkit: flock {}: {errno}", path.display()),
        }
    }
}

/// `publisher-bridge` in the same directory as `gateway_bin` (same target dir and profile),
/// built with cargo first when it is missing or older than the sources it is built from.
pub(super) fn bridge_binary(gateway_bin: &Path) -> PathBuf {
    let dir =
        gateway_bin.parent().unwrap_or_else(|| panic!("testkit: {} has no parent directory", gateway_bin.display()));
    let bin = dir.join("publisher-bridge");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let root = repo_root();
    let sources = ["publisher-bridge/src", "publisher-bridge/Cargo.toml", "wire/src", "wire/Cargo.toml", "Cargo.lock"];
    let newest = sources.iter().filter_map(|s| newest_mtime(&root.join(s))).max();
    let fresh = matches!((built, newest), (Some(b), Some(n)) if b >= n);
    if fresh {
        return bin;
    }
    let why = if built.is_none() { "missing" } else { "older than its sources" };
    let mut cmd = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&root).args(["build", "-p", "publisher-bridge", "--bin", "publisher-bridge"]);
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
        None => {}
    }
    if let Some(target) = dir.parent() {
        cmd.arg("--target-dir").arg(target);
    }
    eprintln!("testkit: {} is {why}: running {cmd:?} (the cluster tests run the real bridge binary)", bin.display());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("testkit: cannot run cargo to build publisher-bridge: {e}"));
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if started.elapsed() > BUILD_TIMEOUT {
            let _ = child.kill();
            panic!("testkit: `cargo build -p publisher-bridge` took more than {BUILD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "testkit: `cargo build -p publisher-bridge` failed ({status}); build it by hand to see why"
    );
    assert!(bin.is_file(), "testkit: the build produced no {}", bin.display());
    bin
}

/// The newest modification time of a file, or of any file under a directory.
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path).ok()?.filter_map(|e| e.ok()).filter_map(|e| newest_mtime(&e.path())).max()
}
