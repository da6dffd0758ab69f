//! Holding the publisher-bridge still while a backlog builds up in Redis (`loadtest bridge
//! --backlog`): SIGSTOP to each of its processes, SIGCONT when the run releases them. A stopped
//! bridge must never outlive the run, so they are also continued when the guard is dropped (an
//! error, a panic) and on SIGINT, SIGTERM or SIGHUP, before loadtest exits. Only a SIGKILL of
//! loadtest itself leaves them stopped (`kill -CONT <pid>` then). Linux only.

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::sync::{Arc, Mutex};
use tokio::signal::unix::{signal, SignalKind};

/// Executable name of the bridge, as [`crate::rss::discover`] matches it.
pub const BRIDGE_BIN: &str = "publisher-bridge";

/// The bridge processes to stop: `pids` when given, else every process named [`BRIDGE_BIN`].
pub fn bridge_pids(pids: &[i32]) -> anyhow::Result<Vec<i32>> {
    if !pids.is_empty() {
        return Ok(pids.to_vec());
    }
    let found = crate::rss::discover(BRIDGE_BIN, &[]);
    anyhow::ensure!(
        !found.is_empty(),
        "--backlog: no process named {BRIDGE_BIN} on this machine to stop (a bridge in a container or on another host cannot be paused; give --bridge-pid if it runs under another name)"
    );
    Ok(found)
}

/// Processes stopped with SIGSTOP, continued with SIGCONT by [`Paused::resume`] or on drop.
pub struct Paused {
    /// Still stopped; shared with the signal watcher, which continues them on its way out.
    stopped: Arc<Mutex<Vec<i32>>>,
}

impl Paused {
    /// Stops every one of `pids`. The signal watcher is in place before the first SIGSTOP; if one
    /// cannot be stopped, those already stopped are continued and the error returned.
    pub fn stop(pids: &[i32]) -> anyhow::Result<Paused> {
        let paused = Paused { stopped: Arc::default() };
        watch_signals(paused.stopped.clone())?;
        for &pid in pids {
            kill(Pid::from_raw(pid), Signal::SIGSTOP).with_context(|| format!("SIGSTOP {BRIDGE_BIN} pid {pid}"))?;
            lock(&paused.stopped).push(pid);
        }
        Ok(paused)
    }

    /// SIGCONT to every process still stopped (none the second time).
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let pids = std::mem::take(&mut *lock(&self.stopped));
        continue_all(&pids)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Err(error) = self.resume() {
            eprintln!("loadtest: {error:#}");
        }
    }
}

fn lock(pids: &Mutex<Vec<i32>>) -> std::sync::MutexGuard<'_, Vec<i32>> {
    // A panic while holding it left a plain list behind: still usable.
    pids.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// SIGCONT to each of `pids`, trying all of them; a process gone in the meantime is no error.
fn continue_all(pids: &[i32]) -> anyhow::Result<()> {
    let failed: Vec<String> = pids
        .iter()
        .filter_map(|&pid| match kill(Pid::from_raw(pid), Signal::SIGCONT) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => None,
            Err(errno) => Some(format!("pid {pid}: {errno}")),
        })
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "SIGCONT {BRIDGE_BIN} failed ({}): continue it by hand with `kill -CONT <pid>`",
        failed.join(", ")
    );
    Ok(())
}

/// From now on, SIGINT, SIGTERM and SIGHUP continue what is still stopped, then end loadtest
/// with the shell's status for the signal. Installed for the rest of the process: once tokio
/// handles a signal its default action (ending the process) is gone, so the watcher must stay to
/// keep Ctrl-C working after the bridges run again.
fn watch_signals(stopped: Arc<Mutex<Vec<i32>>>) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("handle SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("handle SIGHUP")?;
    tokio::spawn(async move {
        let (name, status) = tokio::select! {
            _ = interrupt.recv() => ("SIGINT", 130),
            _ = terminate.recv() => ("SIGTERM", 143),
            _ = hangup.recv() => ("SIGHUP", 129),
        };
        let pids = std::mem::take(&mut *lock(&stopped));
        if !pids.is_empty() {
            match continue_all(&pids) {
                Ok(()) => eprintln!("\nloadtest: {name}: continued {BRIDGE_BIN} pids {pids:?} (SIGCONT)"),
                Err(error) => eprintln!("\nloadtest: {name}: {error:#}"),
            }
        }
        std::process::exit(status);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// The process state letter of `/proc/<pid>/stat` (`T` when stopped).
    fn state(pid: i32) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        stat[stat.rfind(')').expect("comm") + 2..].chars().next().expect("state")
    }

    fn wait_for(pid: i32, want: char) -> bool {
        (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            state(pid) == want
        })
    }

    #[tokio::test]
    async fn stopped_processes_are_continued_by_resume_and_on_drop() {
        let mut child = Command::new("sleep").arg("30").stdin(Stdio::null()).spawn().expect("spawn sleep");
        let pid = child.id() as i32;
        let mut paused = Paused::stop(&[pid]).unwrap();
        assert!(wait_for(pid, 'T'), "stopped");
        paused.resume().unwrap();
        assert!(wait_for(pid, 'S'), "continued");
        paused.resume().unwrap();

        let paused = Paused::stop(&[pid]).unwrap();
        assert!(wait_for(pid, 'T'), "stopped again");
        drop(paused);
        assert!(wait_for(pid, 'S'), "continued on drop");

        assert!(Paused::stop(&[pid, i32::MAX]).is_err(), "no such process");
        assert!(wait_for(pid, 'S'), "the first one was continued when the second failed");
        let _ = child.kill();
        let _ = child.wait();
        assert!(continue_all(&[pid]).is_ok(), "a process gone is no error");
    }

    #[test]
    fn given_pids_are_taken_as_they_are() {
        assert_eq!(bridge_pids(&[7, 9]).unwrap(), [7, 9]);
    }
}
