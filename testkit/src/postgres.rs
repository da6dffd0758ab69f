//! PostgreSQL fixture: a throw-away cluster copied from a cached `initdb` template, trust auth,
//! durability off, run as the `postgres` system user when the tests run as root. It owns no
//! PostgreSQL client.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use nix::unistd::{chown, Gid, Uid, User};
use tempfile::TempDir;
use tokio::net::TcpStream;

use super::process::{fail, log_tail, stop, wait_ready, Spec, Wait};
use super::{fixture_dir, free_port, repo_root, START_ATTEMPTS};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const SUPERUSER: &str = "postgres";

/// One PostgreSQL server on 127.0.0.1 with its data dir in a tempdir. Fast shutdown on drop.
pub struct Postgres {
    child: Option<Child>,
    port: u16,
    // Last: removed after `Drop::drop` has stopped the server.
    _dir: TempDir,
}

impl Postgres {
    /// Waits until the port accepts TCP and the log says it is ready.
    pub async fn start() -> Postgres {
        let (bin, major) = bin_dir();
        let run_as = run_as();
        let template = {
            let bin = bin.clone();
            tokio::task::spawn_blocking(move || ensure_template(&bin, &major, run_as))
                .await
                .expect("testkit: initdb task panicked")
        };
        for attempt in 1..=START_ATTEMPTS {
            let dir = fixture_dir("pg");
            let data = dir.path().join("data");
            let sock = dir.path().join("sock");
            std::fs::create_dir(&sock).expect("testkit: create socket dir");
            give_to(run_as, &[dir.path(), &sock]);
            copy_dir(&template, &data);
            let port = free_port();
            let mut spec = Spec::new(bin.join("postgres"), dir.path().join("postgres.log"))
                .arg("-D")
                .arg(data.display())
                .arg("-p")
                .arg(port)
                .arg("-k")
                .arg(sock.display());
            for setting in ["listen_addresses=127.0.0.1", "fsync=off", "synchronous_commit=off", "full_page_writes=off"]
            {
                spec = spec.arg("-c").arg(setting);
            }
            spec.run_as = run_as;
            spec.cwd = Some(dir.path().to_path_buf());
            let mut child = spec.spawn();
            let log = spec.log.clone();
            let outcome = wait_ready(&mut child, Instant::now() + START_TIMEOUT, || async {
                TcpStream::connect(("127.0.0.1", port)).await.is_ok()
                    && std::fs::read_to_string(&log).is_ok_and(|l| l.contains("ready to accept connections"))
            })
            .await;
            let mut pg = Postgres { child: Some(child), port, _dir: dir };
            match outcome {
                Wait::Ready => return pg,
                Wait::Exited(_) if attempt < START_ATTEMPTS => continue,
                outcome => {
                    pg.stop();
                    fail("postgres", &outcome, &log)
                }
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (trust auth, no password).
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Fast shutdown (SIGINT), then SIGKILL if it takes too long.
    fn stop(&mut self) {
        stop(&mut self.child, Signal::SIGINT, SHUTDOWN_GRACE);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `bin` dir of the highest PostgreSQL version under /usr/lib/postgresql, and that version.
fn bin_dir() -> (PathBuf, String) {
    let base = Path::new("/usr/lib/postgresql");
    let best = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version: f64 = name.parse().ok()?;
            e.path().join("bin/postgres").is_file().then_some((version, name))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, name)) => (base.join(&name).join("bin"), name),
        None => panic!("testkit: no PostgreSQL under {}: run deploy/install-deps.sh", base.display()),
    }
}

/// The `postgres` user's uid and gid when running as root (PostgreSQL refuses root), else none.
fn run_as() -> Option<(Uid, Gid)> {
    if !Uid::effective().is_root() {
        return None;
    }
    match User::from_name(SUPERUSER) {
        Ok(Some(user)) => Some((user.uid, user.gid)),
        _ => panic!("testkit: running as root but there is no `postgres` user to run PostgreSQL as"),
    }
}

fn give_to(run_as: Option<(Uid, Gid)>, paths: &[&Path]) {
    if let Some((uid, gid)) = run_as {
        for path in paths {
            chown(*path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("testkit: chown {}: {e}", path.display()));
        }
    }
}

/// `cp -a from to`: keeps owner and modes, which PostgreSQL checks on its data dir.
fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().expect("testkit: run cp");
    assert!(status.success(), "testkit: cp -a {} {} failed", from.display(), to.display());
}

/// `<repo>/target/testkit/pg-template-<major>`, created once by `initdb` under a file lock.
fn ensure_template(bin: &Path, major: &str, run_as: Option<(Uid, Gid)>) -> PathBuf {
    let root = repo_root().join("target/testkit");
    let template = root.join(format!("pg-template-{major}"));
    if template.join("PG_VERSION").is_file() {
        return template;
    }
    std::fs::create_dir_all(&root).expect("testkit: create target/testkit");
    let lock_file = File::create(root.join(format!("pg-template-{major}.lock"))).expect("testkit: create lock file");
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| e).expect("testkit: flock");
    if template.join("PG_VERSION").is_file() {
        return template; // another test process made it while we waited
    }
    let work = fixture_dir("pg-initdb");
    give_to(run_as, &[work.path()]);
    let data = work.path().join("data");
    let mut spec = Spec::new(bin.join("initdb"), work.path().join("initdb.log"))
        .arg("-D")
        .arg(data.display())
        .arg("-U")
        .arg(SUPERUSER)
        .arg("--auth=trust")
        .arg("--no-locale")
        .arg("--encoding=UTF8")
        .arg("--no-sync");
    spec.run_as = run_as;
    spec.cwd = Some(work.path().to_path_buf());
    let status = spec.spawn().wait().expect("testkit: wait for initdb");
    assert!(status.success(), "testkit: initdb exited with {status}\n{}", log_tail(&spec.log));
    // Copy then rename, so the template path only ever holds a complete cluster.
    let partial = root.join(format!("pg-template-{major}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    copy_dir(&data, &partial);
    std::fs::rename(&partial, &template).expect("testkit: rename template into place");
    template
}
