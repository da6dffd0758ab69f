//! Spawning, watching and reaping one server process: log capture, parent-death signal, the
//! optional switch to another user, and the readiness loop. It knows nothing about which server
//! it runs.

use std::fs::OpenOptions;
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid};

/// How to start a server again: restarts reuse the same spec (same ports, same dirs).
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
    /// uid and gid to switch to before exec (PostgreSQL refuses to run as root).
    pub run_as: Option<(Uid, Gid)>,
    pub cwd: Option<PathBuf>,
    /// Variables added to the inherited environment.
    pub env: Vec<(String, String)>,
}

impl Spec {
    pub fn new(program: impl Into<PathBuf>, log: impl Into<PathBuf>) -> Spec {
        Spec { program: program.into(), args: Vec::new(), log: log.into(), run_as: None, cwd: None, env: Vec::new() }
    }

    pub fn arg(mut self, arg: impl ToString) -> Spec {
        self.args.push(arg.to_string());
        self
    }

    pub fn env(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Spec {
        self.env.extend(vars);
        self
    }

    pub fn spawn(&self) -> Child {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("testkit: open {}: {e}", self.log.display()));
        let log_err = log.try_clone().expect("testkit: clone log fd");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        let run_as = self.run_as;
        let parent = Pid::this();
        // SAFETY: only async-signal-safe syscalls run between fork and exec. The workspace denies
        // unsafe code; this fixture-only block is its one exception.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || {
                if let Some((uid, gid)) = run_as {
                    nix::unistd::setgroups(&[gid])?;
                    nix::unistd::setgid(gid)?;
                    nix::unistd::setuid(uid)?;
                }
                // After the credential change, which would clear it.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::other("parent exited before exec"));
                }
                Ok(())
            });
        }
        cmd.spawn().unwrap_or_else(|e| panic!("testkit: spawn {}: {e}", self.program.display()))
    }
}

/// What the readiness loop saw.
pub(crate) enum Wait {
    Ready,
    Exited(ExitStatus),
    TimedOut,
}

/// Polls `probe` every 50 ms until it answers true, the child exits, or `deadline` passes.
pub(crate) async fn wait_ready<F, Fut>(child: &mut Child, deadline: Instant, mut probe: F) -> Wait
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Wait::Exited(status);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Wait::TimedOut;
        }
        if let Ok(true) = tokio::time::timeout(left.min(Duration::from_secs(2)), probe()).await {
            return Wait::Ready;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGKILL and reap; nothing if already gone.
pub(crate) fn kill_now(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Sends `signal`, waits up to `grace` for the child to exit, then SIGKILLs it.
pub(crate) fn stop(child: &mut Option<Child>, signal: Signal, grace: Duration) {
    if let Some(c) = child.as_mut() {
        if let Ok(None) = c.try_wait() {
            let _ = kill(Pid::from_raw(c.id() as i32), signal);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    kill_now(child);
}

/// The last 40 lines of a log file, for panic messages.
pub(crate) fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            format!("--- tail of {} ---\n{tail}\n---", path.display())
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

/// A server a fixture starts: how to tell it is ready, and where it logs.
pub(crate) trait Server {
    async fn wait_until_ready(&mut self, deadline: Instant) -> Wait;
    fn log(&self) -> &Path;
}

/// Spawns with `spawn` (fresh ports each time) until one start is ready within `timeout`; a
/// server that exited at start (someone took its port in between) is spawned again, up to
/// [`crate::START_ATTEMPTS`] times. Panics naming `what` otherwise.
pub(crate) async fn start<T: Server>(what: &str, timeout: Duration, mut spawn: impl FnMut() -> T) -> T {
    for attempt in 1..=crate::START_ATTEMPTS {
        let mut server = spawn();
        match server.wait_until_ready(Instant::now() + timeout).await {
            Wait::Ready => return server,
            Wait::Exited(_) if attempt < crate::START_ATTEMPTS => continue,
            outcome => fail(what, &outcome, server.log()),
        }
    }
    unreachable!("the last attempt either returns or panics")
}

/// How many times a server restarted on its old port tries again when the port is taken.
const RESTART_ATTEMPTS: usize = 20;
/// The pause between those tries.
const RESTART_PAUSE: Duration = Duration::from_millis(250);

/// Kills `child` and starts `spec` again in its place (same ports) until `probe` answers
/// true, as [`wait_ready`] polls it; while a start fails because its port was taken meanwhile
/// ([`port_was_taken`]), it tries again. Panics naming `what` on any other failure.
pub(crate) async fn restart<F, Fut>(what: &str, child: &mut Option<Child>, spec: &Spec, timeout: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    kill_now(child);
    for attempt in 1..=RESTART_ATTEMPTS {
        let started = child.insert(spec.spawn());
        match wait_ready(started, Instant::now() + timeout, &mut probe).await {
            Wait::Ready => return,
            Wait::Exited(_) if attempt < RESTART_ATTEMPTS && port_was_taken(&spec.log) => {
                tokio::time::sleep(RESTART_PAUSE).await
            }
            outcome => fail(what, &outcome, &spec.log),
        }
    }
}

/// Whether a server that exited at start did so because its port was taken while it was down:
/// ports handed out by the kernel for `127.0.0.1:0` come from the ephemeral range, where another
/// test's server or the source port of some outgoing connection may hold it for a moment. Read
/// from the last lines of its log (the log is appended to, so they are this start's).
pub(crate) fn port_was_taken(log: &Path) -> bool {
    let tail = log_tail(log).to_ascii_lowercase();
    tail.lines().rev().take(5).any(|line| line.contains("address already in use"))
}

/// Panics with what went wrong and the log tail.
pub(crate) fn fail(what: &str, outcome: &Wait, log: &Path) -> ! {
    let how = match outcome {
        Wait::Exited(status) => format!("exited with {status}"),
        Wait::TimedOut => "did not become ready in time".to_string(),
        Wait::Ready => "is ready".to_string(),
    };
    panic!("testkit: {what} {how}\n{}", log_tail(log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_read_from_the_last_start_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let nats = "[9410] [FTL] Error listening on port: 127.0.0.1:43689, \"listen tcp 127.0.0.1:43689: bind: address already in use\"\n";
        let redis = "1:M 02 Dec 2026 19:00:00.000 # Could not create server TCP listening socket 127.0.0.1:6380: bind: Address already in use\n";
        for line in [nats, redis] {
            std::fs::write(&log, line).unwrap();
            assert!(port_was_taken(&log), "{line}");
        }
        let mut later = String::from(nats);
        later.push_str(&"[9500] [INF] Server is ready\n".repeat(10));
        std::fs::write(&log, later).unwrap();
        assert!(!port_was_taken(&log), "an old start's failure does not count");
        assert!(!port_was_taken(&dir.path().join("missing.log")));
    }
}
