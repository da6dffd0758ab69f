//! One `gateway` or `publisher-bridge` process of a [`super::ClusterStack`]: spawn through
//! `env -i` with exactly the variables given, readiness on `/readyz`, SIGKILL, SIGTERM with a
//! deadline, restart on the same port. It knows nothing about what the process is.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::super::http_get;
use super::super::process::{kill_now, log_tail, wait_ready, Spec, Wait};
use super::START_TIMEOUT;

/// One `gateway` or `publisher-bridge` process on a fixed loopback port (kept across restarts,
/// so HAProxy's configuration stays valid), started through `env -i` with exactly the
/// variables it was given, its output appended to a log in the stack's tempdir.
pub struct Service {
    name: String,
    addr: SocketAddr,
    spec: Spec,
    child: Option<Child>,
}

impl Service {
    pub(super) fn new(name: &str, program: &Path, addr: SocketAddr, env: &[(String, String)], dir: &Path) -> Service {
        let mut spec = Spec::new("env", dir.join(format!("{name}.log"))).arg("-i");
        for (key, value) in env {
            spec = spec.arg(format!("{key}={value}"));
        }
        let spec = spec.arg(program.display());
        Service { name: name.into(), addr, spec, child: None }
    }

    /// `gw-1`, `bridge-2`, ...: also the instance id it runs with.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`, straight to this process (not through HAProxy).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive (reaps it when it has exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Spawns it if it is not running, without waiting.
    pub fn spawn(&mut self) {
        if !self.is_running() {
            self.child = Some(self.spec.spawn());
        }
    }

    /// Spawns it (if not running) and waits until `/readyz` answers 200.
    pub async fn start(&mut self) {
        self.spawn();
        self.wait_ready(START_TIMEOUT).await;
    }

    /// Waits until `/readyz` answers 200; panics with the log tail if it exits or `within` passes.
    pub async fn wait_ready(&mut self, within: Duration) {
        let url = self.url("/readyz");
        let Some(child) = self.child.as_mut() else { panic!("testkit: {} is not running", self.name) };
        let outcome = wait_ready(child, Instant::now() + within, || {
            let url = url.clone();
            async move { matches!(http_get(&url).await, Ok((200, _))) }
        })
        .await;
        match outcome {
            Wait::Ready => {}
            Wait::Exited(status) => {
                panic!("testkit: {} exited with {status} during start-up\n{}", self.name, self.log_tail())
            }
            Wait::TimedOut => panic!("testkit: {} not ready after {within:?}\n{}", self.name, self.log_tail()),
        }
    }

    /// SIGKILL and reap; nothing if it is not running.
    pub fn kill(&mut self) {
        kill_now(&mut self.child);
    }

    /// Sends SIGTERM and waits for the exit status; after `within` it is SIGKILLed and this panics.
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        let Some(child) = self.child.as_mut() else { panic!("testkit: {} is not running", self.name) };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!("testkit: {} still running {within:?} after SIGTERM\n{}", self.name, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.spec.log)
    }

    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}
