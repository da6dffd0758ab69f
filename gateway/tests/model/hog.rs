//! A CPU hog for the model test: one busy-looping shell per core at `nice 5`, beside the stack
//! while the schedule runs, so that timing races (a replay against live events, a subscription
//! against the first event) get the chance to show. Stopped by `Drop`, also on panic; each loop
//! also ends by itself once the test process is gone (`kill -0 $PPID`).

use std::process::{Child, Command, Stdio};

pub struct CpuHog {
    children: Vec<Child>,
}

impl CpuHog {
    pub fn start() -> CpuHog {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let children = (0..cores)
            .map(|_| {
                Command::new("nice")
                    .args(["-n", "5", "sh", "-c", "while kill -0 $PPID 2>/dev/null; do :; done"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("model: start the CPU hog (nice, sh)")
            })
            .collect();
        CpuHog { children }
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        eprintln!("model: CPU hog stopped");
    }
}
