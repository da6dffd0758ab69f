//! The physical floor of fan-out: what one bare write per recipient costs on this machine. A
//! sender thread writes one pre-encoded WebSocket text frame (server frames are unmasked, so
//! every recipient gets the same bytes) per recipient to loopback TCP sockets, `fanout`
//! recipients per event, events paced to the asked deliveries per second; another process (this
//! binary's hidden `floor-reader`) reads and discards everything. The sender thread's own CPU
//! time (`CLOCK_THREAD_CPUTIME_ID`, which also holds the kernel's loopback work done on its
//! behalf) divided by the frames written is the floor a gateway's CPU per delivery is compared
//! with. Sockets are set up like the gateway's (`TCP_NODELAY`), and the reader's come from the
//! same loopback source addresses as the clients of the run (`--source-ips`): writing to peers
//! spread over 16 addresses costs a sender a few per cent more than to one (3% for the floor, 5%
//! for the gateway, in alternating runs here).
//!
//! `loadtest floor` writes each event to `fanout` consecutive sockets. The scenarios write each
//! event to the sockets of its own recipients instead (`Params::recipients`: the slots the run's
//! clients expected it at, the reader's sockets connected in slot order as the clients' were).
//! That is the floor of the same workload: a branch's waiters are every tenth connection, and
//! writing to sockets whose kernel objects are not adjacent costs more here than writing to
//! consecutive ones (`--stride 10`: a median 3% more at 4.6k deliveries/s, 13% at 20k/s, nine
//! alternating pairs each, 2026-12-03).
//!
//! With `senders` above one it is the floor of a cluster: that many sender threads, each holding
//! an even share of the sockets and woken by every event, write the event's recipients between
//! them (an even share each), as replicas that all hold the tenant do. Each event then costs
//! every sender one wake-up, which a single sender pays once.
//!
//! It also measures the floor of latency: each event's frame carries the time its writes began
//! ([`stamp`]), and the reader records, for every frame, how long after that it read it. That is
//! what the host alone adds between a process writing a fan-out and the recipients reading it,
//! at the same moment as the run whose latency it is reported beside.

mod stamp;

use crate::hist::{self, fmt_us};
use anyhow::{bail, ensure, Context};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Params {
    /// Loopback sockets written to (the connections).
    pub sockets: usize,
    /// Recipients per event: consecutive sockets, the next event starting after the last (the
    /// mean of `recipients` when there are any).
    pub fanout: usize,
    /// The events to write in turn, each as the indexes of its recipients' sockets, instead of
    /// `fanout` consecutive sockets. With several senders, sender `g` writes the recipients whose
    /// index is `g` modulo the senders, as replica `g` holds slots `g` modulo the gateways.
    pub recipients: Option<std::sync::Arc<Vec<Vec<u32>>>>,
    /// Without `recipients`: an event's sockets are this far apart (1: consecutive, the next
    /// event starting after the last; 10: sockets `k, k+10, ...` for event `k`, as the waiters of
    /// one of ten branches are).
    pub stride: usize,
    /// Deliveries (frames) per second.
    pub deliveries_per_s: f64,
    pub duration: Duration,
    /// Size of the whole frame, header included.
    pub frame_bytes: usize,
    /// Sender threads, each woken by every event (at least one, at most `fanout`).
    pub senders: usize,
    /// The reader's sockets come from 127.0.0.1..=127.0.0.N in turn, as the clients' do (0: the
    /// kernel chooses).
    pub source_ips: u32,
}

/// The measurement.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Floor {
    pub sockets: usize,
    pub fanout: usize,
    pub senders: usize,
    pub source_ips: u32,
    /// Each event was written to the run's own recipients (not to consecutive sockets).
    pub run_recipients: bool,
    /// Sockets apart within an event, without the run's recipients (1: consecutive).
    pub stride: usize,
    pub frame_bytes: usize,
    pub asked_per_s: f64,
    pub deliveries: u64,
    /// Deliveries per second actually written (below `asked_per_s` if the sender fell behind).
    pub achieved_per_s: f64,
    pub sender_cpu_s: f64,
    /// The floor: sender CPU per frame written.
    pub cpu_us_per_delivery: f64,
    /// From the start of an event's writes to the reader's read of each of its frames (empty
    /// for frames too short to carry the time).
    pub latency: hist::Summary,
}

/// The floor measured on both sides of a run's traffic, with the same parameters. This host's
/// speed drifts by several per cent within minutes (the floor alone measured 7.1–8.9 µs within
/// an hour): a ratio against a floor taken at one end of the run moves with that drift. The
/// mean of both is the run's floor; their difference says how far the host moved meanwhile.
#[derive(Debug, Clone, Serialize)]
pub struct Bracket {
    pub before: Floor,
    pub after: Floor,
    /// The mean of both: what the run's CPU per delivery is compared with.
    pub cpu_us_per_delivery: f64,
    /// The floor after over the floor before, minus one.
    pub drift: f64,
}

impl Bracket {
    pub fn new(before: Floor, after: Floor) -> Bracket {
        let (b, a) = (before.cpu_us_per_delivery, after.cpu_us_per_delivery);
        Bracket { cpu_us_per_delivery: (a + b) / 2.0, drift: if b > 0.0 { a / b - 1.0 } else { 0.0 }, before, after }
    }

    /// For reports: `"10.44 µs per bare write (10.20 before the traffic, 10.68 after: +4.7%;
    /// 1000 sockets, fan-out 91, 401 bytes, 4572/s); write to read p50 412µs/398µs p99
    /// 1.20ms/1.31ms (before/after)"`.
    pub fn summary(&self) -> String {
        let f = &self.after;
        let mut summary = format!(
            "{:.2} µs per bare write ({:.2} before the traffic, {:.2} after: {:+.1}%; {} sockets, fan-out {}{}, {} bytes, {:.0}/s)",
            self.cpu_us_per_delivery,
            self.before.cpu_us_per_delivery,
            f.cpu_us_per_delivery,
            self.drift * 100.0,
            f.sockets,
            f.fanout,
            f.setup_note(),
            f.frame_bytes,
            f.achieved_per_s
        );
        let (b, a) = (&self.before.latency, &f.latency);
        if b.count > 0 && a.count > 0 {
            summary += &format!(
                "; write to read p50 {}/{} p99 {}/{} (before/after)",
                fmt_us(b.p50_us),
                fmt_us(a.p50_us),
                fmt_us(b.p99_us),
                fmt_us(a.p99_us)
            );
        }
        summary
    }
}

/// The header's share of a frame of `frame_bytes` bytes: 2 bytes with a 1-byte length (a payload
/// below 126), else 4 (a 2-byte length).
fn header_bytes(frame_bytes: usize) -> usize {
    if frame_bytes.saturating_sub(2) < 126 {
        2
    } else {
        4
    }
}

/// A server-to-client text frame of exactly `frame_bytes` bytes (RFC 6455 section 5.2: no mask,
/// a 1-byte length below 126, a 2-byte one up to 65535).
pub fn frame(frame_bytes: usize) -> anyhow::Result<Vec<u8>> {
    ensure!((2..=65_535 + 4).contains(&frame_bytes), "a frame of {frame_bytes} bytes is out of range (2..=65539)");
    let mut frame = vec![0x81];
    let payload = frame_bytes - header_bytes(frame_bytes);
    if header_bytes(frame_bytes) == 2 {
        frame.push(payload as u8);
    } else {
        ensure!(payload >= 126, "a frame of {frame_bytes} bytes has no valid length encoding");
        frame.push(126);
        frame.extend_from_slice(&(payload as u16).to_be_bytes());
    }
    // A JSON object, so that a reader could parse it: {"p":"xxxx...."}.
    let mut body = b"{\"p\":\"".to_vec();
    body.resize(payload.saturating_sub(2), b'x');
    body.extend_from_slice(b"\"}");
    body.truncate(payload);
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Measures the floor: starts the reader process, connects its sockets, writes for
/// `params.duration`, stops the reader. Blocking: call from a thread of its own.
pub fn measure(params: Params) -> anyhow::Result<Floor> {
    ensure!(params.sockets > 0 && params.fanout > 0, "the floor needs sockets and a fan-out");
    ensure!(params.fanout <= params.sockets, "a fan-out of {} over {} sockets", params.fanout, params.sockets);
    ensure!(params.deliveries_per_s > 0.0, "the floor needs a positive rate");
    ensure!(
        params.stride >= 1 && params.fanout.saturating_mul(params.stride) <= params.sockets,
        "a fan-out of {} with sockets {} apart needs more than {} sockets (each written once per event)",
        params.fanout,
        params.stride,
        params.sockets
    );
    ensure!(
        (1..=params.fanout).contains(&params.senders),
        "{} senders for a fan-out of {}: each sender writes at least one frame per event",
        params.senders,
        params.fanout
    );
    let frame = frame(params.frame_bytes)?;
    let listener = TcpListener::bind("127.0.0.1:0").context("bind the floor's listener")?;
    let addr = listener.local_addr()?;
    let mut reader = Reader::spawn(addr, params.sockets, params.source_ips, params.frame_bytes)?;
    let sockets = accept(&listener, params.sockets, &mut reader)?;
    let plans: Vec<(std::ops::Range<usize>, Plan)> = match &params.recipients {
        None => share(params.sockets, params.senders)
            .zip(share(params.fanout, params.senders).map(|r| Plan::Spaced { fanout: r.len(), stride: params.stride }))
            .collect(),
        Some(events) => (0..params.senders)
            .map(|g| (0..params.sockets, Plan::Events(own_recipients(events, g, params.senders, params.sockets))))
            .collect(),
    };
    let per_event = params.recipients.as_deref().map_or(params.fanout as f64, |events| mean_recipients(events));
    ensure!(per_event > 0.0, "the floor's events have no recipient");
    let events_per_s = params.deliveries_per_s / per_event;
    let sent = std::thread::scope(|scope| {
        let senders: Vec<_> = plans
            .iter()
            .map(|(range, plan)| {
                let (sockets, frame) = (&sockets[range.clone()], &frame);
                scope.spawn(move || send(sockets, frame, plan, events_per_s, params.duration))
            })
            .collect();
        senders.into_iter().map(|s| s.join().expect("a floor sender thread")).collect::<anyhow::Result<Vec<_>>>()
    })?;
    drop(sockets);
    let latency = reader.finish()?;
    let written: u64 = sent.iter().map(|s| s.0).sum();
    let elapsed = sent.iter().map(|s| s.1).max().unwrap_or_default();
    let cpu: Duration = sent.iter().map(|s| s.2).sum();
    Ok(Floor {
        sockets: params.sockets,
        fanout: params.fanout,
        senders: params.senders,
        source_ips: params.source_ips,
        run_recipients: params.recipients.is_some(),
        stride: params.stride,
        frame_bytes: params.frame_bytes,
        asked_per_s: params.deliveries_per_s,
        deliveries: written,
        achieved_per_s: written as f64 / elapsed.as_secs_f64().max(1e-9),
        sender_cpu_s: cpu.as_secs_f64(),
        cpu_us_per_delivery: cpu.as_secs_f64() * 1e6 / written.max(1) as f64,
        latency,
    })
}

/// The `floor` subcommand: one measurement per rate, a line each, and the JSON report.
pub fn run(args: &crate::cli::FloorArgs) -> anyhow::Result<()> {
    ensure!(args.duration > 0.0, "--duration must be positive");
    let mut floors = Vec::with_capacity(args.rates.len());
    for &rate in &args.rates {
        let floor = measure(Params {
            sockets: args.sockets,
            fanout: args.fanout,
            deliveries_per_s: rate,
            duration: Duration::from_secs_f64(args.duration),
            frame_bytes: args.frame_bytes,
            senders: args.senders,
            source_ips: args.source_ips,
            recipients: None,
            stride: args.stride,
        })?;
        println!("{}", floor.line());
        floors.push(floor);
    }
    if let Some(path) = &args.report_json {
        let json = serde_json::json!({ "command": crate::scenarios::command_line(), "floor": floors });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("loadtest: JSON report written to {}", path.display());
    }
    Ok(())
}

impl Floor {
    /// One line: the rate written, the floor and its latency.
    pub fn line(&self) -> String {
        let mut line = format!(
            "floor {:.2} µs CPU per delivery: {} frames of {} bytes to {} sockets (fan-out {}{}) at {:.0}/s ({:.0}/s asked), sender CPU {:.2} s",
            self.cpu_us_per_delivery,
            self.deliveries,
            self.frame_bytes,
            self.sockets,
            self.fanout,
            self.setup_note(),
            self.achieved_per_s,
            self.asked_per_s,
            self.sender_cpu_s
        );
        let l = &self.latency;
        if l.count > 0 {
            line += &format!(
                "; write to read p50 {} p99 {} max {} (n={})",
                fmt_us(l.p50_us),
                fmt_us(l.p99_us),
                fmt_us(l.max_us),
                l.count
            );
        }
        line
    }

    /// What sets this floor apart, if anything: `", 2 senders woken by every event"`,
    /// `", readers on 16 addresses"`.
    fn setup_note(&self) -> String {
        let mut note = String::new();
        if self.senders > 1 {
            note += &format!(", {} senders woken by every event", self.senders);
        }
        if self.source_ips > 1 {
            note += &format!(", readers on {} addresses", self.source_ips);
        }
        if self.run_recipients {
            note += ", the run's recipients";
        } else if self.stride > 1 {
            note += &format!(", sockets {} apart", self.stride);
        }
        note
    }
}

/// `total` split into `parts` consecutive ranges whose lengths differ by at most one.
fn share(total: usize, parts: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let (each, extra) = (total / parts, total % parts);
    (0..parts).scan(0, move |start, i| {
        let len = each + usize::from(i < extra);
        let range = *start..*start + len;
        *start += len;
        Some(range)
    })
}

/// Accepts the reader's sockets, set up like the gateway's.
fn accept(listener: &TcpListener, count: usize, reader: &mut Reader) -> anyhow::Result<Vec<TcpStream>> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sockets = Vec::with_capacity(count);
    while sockets.len() < count {
        match listener.accept() {
            Ok((socket, _)) => {
                socket.set_nonblocking(false)?;
                socket.set_nodelay(true)?;
                sockets.push(socket);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = reader.child.try_wait()? {
                    bail!("the floor's reader exited with {status} after {} connections", sockets.len());
                }
                ensure!(Instant::now() < deadline, "only {} of {count} floor sockets connected in 30 s", sockets.len());
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e).context("accept a floor socket"),
        }
    }
    Ok(sockets)
}

/// What one sender writes per event.
enum Plan {
    /// `fanout` sockets of its share, `stride` apart: consecutive ones (stride 1) from after the
    /// last event's, or spaced ones from the socket after the last event's first.
    Spaced { fanout: usize, stride: usize },
    /// The events in turn, each as the indexes of the sockets to write.
    Events(Vec<Vec<u32>>),
}

/// Recipients per event, on average (0 without events).
pub fn mean_recipients(events: &[Vec<u32>]) -> f64 {
    events.iter().map(Vec::len).sum::<usize>() as f64 / events.len().max(1) as f64
}

/// Of each event's recipients, those of sender `sender` of `senders` (index modulo the
/// senders), leaving out sockets beyond the `sockets` connected.
fn own_recipients(events: &[Vec<u32>], sender: usize, senders: usize, sockets: usize) -> Vec<Vec<u32>> {
    events
        .iter()
        .map(|e| e.iter().copied().filter(|i| (*i as usize) < sockets && *i as usize % senders == sender).collect())
        .collect()
}

/// One sender: the writes of `plan` over its `sockets`, `events_per_s` events for `duration`,
/// each event's frame stamped with the time its writes began. Returns the frames written, the
/// time it took and the thread's CPU time.
fn send(
    sockets: &[TcpStream],
    frame: &[u8],
    plan: &Plan,
    events_per_s: f64,
    duration: Duration,
) -> anyhow::Result<(u64, Duration, Duration)> {
    let interval = Duration::from_secs_f64(1.0 / events_per_s);
    let events = (events_per_s * duration.as_secs_f64()).ceil().max(1.0) as u64;
    let mut frame = frame.to_vec();
    let stamp_at = stamp::offset(frame.len());
    let cpu_before = thread_cpu()?;
    let started = Instant::now();
    let mut next = 0usize;
    let mut written = 0u64;
    for event in 0..events {
        let due = started + interval.mul_f64(event as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if let Some(at) = stamp_at {
            stamp::write(&mut frame, at, wire::clock::now_micros());
        }
        let frame = &frame[..];
        let write = |socket: &TcpStream| (&*socket).write_all(frame).context("write a floor frame");
        match plan {
            Plan::Spaced { fanout, stride } => {
                for j in 0..*fanout {
                    write(&sockets[(next + j * stride) % sockets.len()])?;
                }
                next = (next + if *stride == 1 { *fanout } else { 1 }) % sockets.len();
                written += *fanout as u64;
            }
            Plan::Events(list) => {
                let recipients = &list[event as usize % list.len()];
                for i in recipients {
                    write(&sockets[*i as usize])?;
                }
                written += recipients.len() as u64;
            }
        }
    }
    let elapsed = started.elapsed();
    Ok((written, elapsed, thread_cpu()? - cpu_before))
}

/// CPU time of the calling thread, user and system.
fn thread_cpu() -> anyhow::Result<Duration> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).context("thread CPU clock")?;
    Ok(Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
}

/// The reading process.
struct Reader {
    child: Child,
}

impl Reader {
    fn spawn(addr: SocketAddr, sockets: usize, source_ips: u32, frame_bytes: usize) -> anyhow::Result<Reader> {
        let exe = std::env::current_exe().context("the loadtest executable")?;
        let child = Command::new(exe)
            .args(["floor-reader", &addr.to_string(), &sockets.to_string()])
            .args(["--source-ips", &source_ips.to_string(), "--frame-bytes", &frame_bytes.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("start the floor's reader process")?;
        Ok(Reader { child })
    }

    /// Waits for the reader to see every socket closed; returns the latency it measured.
    fn finish(mut self) -> anyhow::Result<hist::Summary> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "the floor's reader exited with {status}");
                let mut out = String::new();
                self.child.stdout.take().context("the floor reader's output")?.read_to_string(&mut out)?;
                return serde_json::from_str(out.trim()).with_context(|| format!("the floor reader's summary {out:?}"));
            }
            ensure!(Instant::now() < deadline, "the floor's reader did not finish");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The hidden `floor-reader` subcommand: connects `sockets` sockets to `addr`, the `i`-th from
/// 127.0.0.(1 + i mod `source_ips`) as the clients of a run do (any address when 0), and reads
/// them, one task each on a single-threaded runtime (epoll, as a browser's kernel would wake
/// it), until the sender closed them all. Its CPU is not the floor's. Frames of `frame_bytes`
/// carry the time their event's writes began: it prints the summary of how long after that each
/// was read, as one line of JSON, when done.
pub fn read_all(addr: SocketAddr, sockets: usize, source_ips: u32, frame_bytes: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    let latency = std::sync::Arc::new(std::sync::Mutex::new(hist::new()));
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..sockets {
            let socket = tokio::net::TcpSocket::new_v4().context("a floor reader socket")?;
            if let Some(ip) = crate::client::source_ip(i as u64, source_ips) {
                socket
                    .bind(SocketAddr::from((ip, 0)))
                    .with_context(|| format!("bind a floor reader socket to {ip}"))?;
            }
            let socket = socket.connect(addr).await.context("connect to the floor's sender")?;
            tasks.spawn(drain(socket, stamp::Follower::new(frame_bytes), latency.clone()));
        }
        while let Some(done) = tasks.join_next().await {
            done.context("a floor reader task")??;
        }
        anyhow::Ok(())
    })?;
    let summary = hist::summary(&latency.lock().expect("latency lock"));
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// Reads `socket` to its end, recording how long after its event's stamp each frame was read.
async fn drain(
    mut socket: tokio::net::TcpStream,
    mut follower: Option<stamp::Follower>,
    latency: std::sync::Arc<std::sync::Mutex<hdrhistogram::Histogram<u64>>>,
) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = socket.read(&mut buffer).await.context("read a floor socket")?;
        if n == 0 {
            return Ok(());
        }
        if let Some(follower) = &mut follower {
            let now = wire::clock::now_micros();
            let mut latency = latency.lock().expect("latency lock");
            follower.feed(&buffer[..n], |sent| {
                let _ = latency.record(now.saturating_sub(sent).max(1));
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_asked_size_and_a_valid_header() {
        let f = frame(332).unwrap();
        assert_eq!(f.len(), 332);
        assert_eq!(&f[..4], &[0x81, 126, 0x01, 0x48], "FIN + text, 16-bit length 328");
        assert!(serde_json::from_slice::<serde_json::Value>(&f[4..]).is_ok());
        let small = frame(100).unwrap();
        assert_eq!((small.len(), small[1]), (100, 98));
        assert!(serde_json::from_slice::<serde_json::Value>(&small[2..]).is_ok());
        assert!(frame(1).is_err());
        assert!(frame(128).is_err(), "no encoding gives 128 bytes: 126 payload needs the 2-byte length");
    }

    #[test]
    fn a_bracket_is_the_mean_of_both_ends_and_their_drift() {
        let floor = |us, deliveries| Floor { cpu_us_per_delivery: us, deliveries, ..Default::default() };
        let b = Bracket::new(floor(8.0, 100), floor(10.0, 90));
        assert!((b.cpu_us_per_delivery - 9.0).abs() < 1e-12);
        assert!((b.drift - 0.25).abs() < 1e-12, "the host slowed down by a quarter");
        assert!(b.summary().starts_with("9.00 µs per bare write (8.00 before the traffic, 10.00 after: +25.0%;"));
        assert!((Bracket::new(floor(10.0, 1), floor(8.0, 1)).drift + 0.2).abs() < 1e-12);
        assert_eq!(Bracket::new(floor(0.0, 0), floor(8.0, 1)).drift, 0.0, "no drift from nothing measured");
    }

    #[test]
    fn each_sender_writes_the_recipients_its_replica_would_hold() {
        let events = vec![vec![0, 1, 2, 3, 9], vec![], vec![4, 7]];
        assert_eq!(own_recipients(&events, 0, 1, 10), events, "one sender writes everything");
        assert_eq!(own_recipients(&events, 0, 2, 10), vec![vec![0, 2], vec![], vec![4]], "even slots");
        assert_eq!(own_recipients(&events, 1, 2, 10), vec![vec![1, 3, 9], vec![], vec![7]], "odd slots");
        assert_eq!(own_recipients(&events, 1, 2, 8), vec![vec![1, 3], vec![], vec![7]], "no socket for slot 9");
    }

    #[test]
    fn shares_are_consecutive_and_even() {
        let ranges: Vec<_> = share(1000, 3).collect();
        assert_eq!(ranges, vec![0..334, 334..667, 667..1000]);
        assert_eq!(share(91, 2).map(|r| r.len()).collect::<Vec<_>>(), vec![46, 45]);
        assert_eq!(share(5, 1).collect::<Vec<_>>(), vec![0..5]);
    }

    #[test]
    fn refuses_more_senders_than_recipients_per_event() {
        let params = Params {
            sockets: 4,
            fanout: 2,
            deliveries_per_s: 100.0,
            duration: Duration::from_millis(10),
            frame_bytes: 100,
            senders: 3,
            source_ips: 0,
            recipients: None,
            stride: 1,
        };
        let error = measure(params).unwrap_err().to_string();
        assert!(error.contains("3 senders for a fan-out of 2"), "{error}");
    }
}
