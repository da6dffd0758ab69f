//! Where a connection's bytes leave: its bounded outbound queue and the write side of its
//! socket, shared by the connection's task and the dispatcher. An event for a connection whose
//! socket has room and nothing waiting is written by the dispatcher itself, as one pre-encoded
//! frame shared by every recipient (a server's frames are unmasked, so the bytes are the same for
//! all): no queue, no task wake-up, no copy. Otherwise it is queued and the connection's task
//! writes it. Every byte passes one lock, in order, so frames never interleave:
//! - `direct` is on only while the queue is empty, the task holds no event unwritten, no frame
//!   waits half written and the connection is not closing. Only the task turns it on (after a
//!   flush, looking at its queue under the lock); anything that leaves bytes unwritten turns it
//!   off, and the next events queue behind them.
//! - A frame the socket took only part of is kept whole in `pending` (never half in
//!   tungstenite's buffer), and the task is handed it to finish, bounded by the write timeout
//!   like any other write. A client that stops reading fills the queue and is cut off as before.
//! - A resuming connection's mark moves under the same lock, whoever writes.
//!
//! The task's own frames (replies, pongs, the close frame) go through [`Transport`], the socket
//! tungstenite reads and writes, which takes the same lock.

use crate::connection::resume::{Mark, Resume};
use crate::registry::{Control, Outbound, QueuedEvent};
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What became of an event offered to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Written to the socket (or its unwritten tail handed to the task).
    Written,
    Queued,
    /// The queue is full: the connection is asked to close as too slow.
    Full,
    /// Nothing to write: a resuming connection already has it, the session ended, or its socket
    /// failed.
    Dropped,
}

/// `repr(C)`, the lock first and then the fields a direct write reads: see
/// [`crate::registry::Conn`]'s layout.
#[repr(C)]
pub struct Outlet {
    state: Mutex<State>,
    /// Events the queue holds at most.
    limit: u32,
    handed: AtomicBool,
    /// The connection's task, woken when an event is queued or it is handed bytes to finish.
    task: AtomicWaker,
}

#[repr(C)]
struct State {
    direct: bool,
    /// The session ended: `direct` stays off.
    retired: bool,
    /// Why a write by the dispatcher failed: the task's next write fails the same way.
    failed: Option<io::ErrorKind>,
    /// `stream`'s descriptor, beside the flags so that a direct write reads nothing but the
    /// connection's record (-1 without a stream).
    fd: RawFd,
    /// Boxed: most connections do not resume.
    resume: Option<Box<Resume>>,
    /// The socket, once upgraded (plain TCP only: other transports always queue). Keeps `fd`
    /// open: the two are set and cleared together.
    stream: Option<Arc<TcpStream>>,
    /// Events for the task to write (allocated only while it has some).
    queue: VecDeque<Outbound>,
    /// The unwritten tail of a frame, written before anything else.
    pending: Vec<u8>,
}

impl Default for State {
    fn default() -> Self {
        State {
            direct: false,
            retired: false,
            failed: None,
            fd: -1,
            resume: None,
            stream: None,
            queue: VecDeque::new(),
            pending: Vec::new(),
        }
    }
}

impl Outlet {
    pub fn new(limit: usize) -> Outlet {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        Outlet { state: Mutex::default(), task: AtomicWaker::new(), handed: AtomicBool::new(false), limit }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The dispatcher's side: writes `event` at once when the socket is the dispatcher's to
    /// write, queues it otherwise.
    pub fn offer(&self, event: &Outbound, control: &Control) -> Offer {
        let mut state = self.lock();
        if state.direct && !control.is_closing() {
            return self.write_direct(&mut state, event);
        }
        if state.retired {
            return Offer::Dropped;
        }
        if state.queue.len() >= self.limit as usize {
            control.close(crate::close::CloseReason::SLOW_CONSUMER);
            return Offer::Full;
        }
        state.queue.push_back(event.clone());
        drop(state);
        self.task.wake();
        Offer::Queued
    }

    /// The task's side: the next queued event. Only the connection's task waits on it.
    pub fn recv(&self) -> impl std::future::Future<Output = Outbound> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(event) = self.try_recv() {
                return Poll::Ready(event);
            }
            self.task.register(cx.waker());
            match self.try_recv() {
                Some(event) => Poll::Ready(event),
                None => Poll::Pending,
            }
        })
    }

    pub fn try_recv(&self) -> Option<Outbound> {
        self.lock().queue.pop_front()
    }

    fn write_direct(&self, state: &mut State, event: &QueuedEvent) -> Offer {
        let frame = match admit(&mut state.resume, event) {
            Some(Form::Plain) => event.frame(),
            Some(Form::WithCursor) => event.frame_with_cursor(),
            None => return Offer::Dropped,
        };
        if state.stream.is_none() {
            return Offer::Dropped;
        }
        // SAFETY: `fd` belongs to `state.stream`, which keeps it open: both change together,
        // under the lock held here.
        #[allow(unsafe_code)]
        let socket = unsafe { BorrowedFd::borrow_raw(state.fd) };
        // Straight to the socket, past tokio's readiness record (no cache miss beyond this
        // record): if the socket is full, the task's next write finds it so and waits.
        let written = match socket2::SockRef::from(&socket).send_with_flags(&frame, libc::MSG_NOSIGNAL) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                state.direct = false;
                state.failed = Some(e.kind());
                self.hand_back();
                return Offer::Dropped;
            }
        };
        if written < frame.len() {
            state.pending.extend_from_slice(&frame[written..]);
            state.direct = false;
            self.hand_back();
        }
        Offer::Written
    }

    fn hand_back(&self) {
        self.handed.store(true, Ordering::Release);
        self.task.wake();
    }

    /// The task's side: resolves when the dispatcher left it bytes to finish (or a failure to
    /// find). Only the connection's task waits on it.
    pub fn handed_back(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if !self.handed.swap(false, Ordering::AcqRel) {
                self.task.register(cx.waker());
                if !self.handed.swap(false, Ordering::AcqRel) {
                    return Poll::Pending;
                }
            }
            Poll::Ready(())
        })
    }

    /// The upgraded socket: from now on writes can be direct.
    pub fn attach(&self, stream: Arc<TcpStream>) {
        let mut state = self.lock();
        state.fd = stream.as_raw_fd();
        state.stream = Some(stream);
    }

    /// The task's side, after it wrote everything it had: if the queue is still empty and nothing
    /// waits half written, the dispatcher writes the next events itself.
    pub fn go_direct(&self) {
        let mut state = self.lock();
        state.direct = !state.retired
            && state.stream.is_some()
            && state.pending.is_empty()
            && state.failed.is_none()
            && state.queue.is_empty();
        if state.queue.is_empty() && state.queue.capacity() > 0 {
            // An idle connection keeps no queue.
            state.queue = VecDeque::new();
        }
    }

    /// The session is ending: only its task writes from now on (the close frame last).
    pub fn retire(&self) {
        let mut state = self.lock();
        state.direct = false;
        state.retired = true;
    }

    /// Lets go of the socket, so that it closes with the session's end.
    pub fn detach(&self) {
        let mut state = self.lock();
        state.fd = -1;
        state.stream = None;
        state.pending = Vec::new();
        state.queue = VecDeque::new();
    }

    pub fn set_resume(&self, resume: Option<Resume>) {
        self.lock().resume = resume.map(Box::new);
    }

    pub fn resume(&self) -> Option<Resume> {
        self.lock().resume.as_deref().copied()
    }

    /// Where a replay ended: live events at or below it are copies of replayed ones.
    pub fn set_mark(&self, mark: Mark) {
        if let Some(resume) = &mut self.lock().resume {
            resume.mark = Some(mark);
        }
    }

    /// The task's side: the form `event` is written in for this connection, `None` when a
    /// resuming connection already has it. Moves the resume mark.
    pub fn admit(&self, event: &QueuedEvent) -> Option<Form> {
        admit(&mut self.lock().resume, event)
    }
}

/// The bytes an event is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// As published.
    Plain,
    /// With `"_cursor"` and `"_epoch"` spliced in (a resuming connection).
    WithCursor,
}

fn admit(resume: &mut Option<Box<Resume>>, event: &QueuedEvent) -> Option<Form> {
    let (Some(state), Some(sequence)) = (resume.as_deref_mut(), event.sequence) else { return Some(Form::Plain) };
    state.admit(sequence, event.stored_ns).then_some(Form::WithCursor)
}

/// A server's text frame (RFC 6455 section 5.2: final, unmasked) around `payload`.
pub fn text_frame(payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut frame = Vec::with_capacity(len + 10);
    frame.push(0x81);
    if len < 126 {
        frame.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        frame.push(126);
        frame.extend_from_slice(&len.to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(payload);
    frame.into()
}

/// The socket tungstenite reads and writes. On plain TCP its writes share the outlet's lock
/// with the dispatcher's; other transports (none in production: TLS ends at the load balancer)
/// are passed through, and their connections always queue.
pub enum Transport {
    Tcp {
        stream: Arc<TcpStream>,
        conn: Arc<crate::registry::Conn>,
        /// Bytes the HTTP server had read past the upgrade request.
        read_ahead: Bytes,
    },
    Other(hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>),
}

impl Transport {
    /// The upgraded connection of `conn`: its TCP stream when it is one.
    pub fn new(upgraded: hyper::upgrade::Upgraded, conn: Option<&Arc<crate::registry::Conn>>) -> Transport {
        let Some(conn) = conn else { return Transport::Other(hyper_util::rt::TokioIo::new(upgraded)) };
        match upgraded.downcast::<hyper_util::rt::TokioIo<TcpStream>>() {
            Ok(parts) => {
                let stream = Arc::new(parts.io.into_inner());
                conn.outlet.attach(stream.clone());
                // An empty remainder still holds the HTTP server's whole read buffer.
                let read_ahead = if parts.read_buf.is_empty() { Bytes::new() } else { parts.read_buf };
                Transport::Tcp { stream, conn: conn.clone(), read_ahead }
            }
            Err(upgraded) => Transport::Other(hyper_util::rt::TokioIo::new(upgraded)),
        }
    }
}

/// Writes what waits in `pending` first.
fn drain(state: &mut State, stream: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    if let Some(kind) = state.failed {
        return Poll::Ready(Err(kind.into()));
    }
    while !state.pending.is_empty() {
        ready!(stream.poll_write_ready(cx))?;
        match stream.try_write(&state.pending) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(n) if n == state.pending.len() => state.pending = Vec::new(),
            Ok(n) => drop(state.pending.drain(..n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp { stream, read_ahead, .. } => {
                if !read_ahead.is_empty() {
                    let n = read_ahead.len().min(buf.remaining());
                    buf.put_slice(&read_ahead.split_to(n));
                    if read_ahead.is_empty() {
                        // Lets go of the HTTP server's read buffer it was part of.
                        *read_ahead = Bytes::new();
                    }
                    return Poll::Ready(Ok(()));
                }
                loop {
                    ready!(stream.poll_read_ready(cx))?;
                    match stream.try_read_buf(buf) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        result => return Poll::Ready(result.map(drop)),
                    }
                }
            }
            Transport::Other(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    /// Takes all of `buf` or none of it: a frame is never left half written in tungstenite's
    /// buffer, where the dispatcher's next frame would cut into it.
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp { stream, conn, .. } => {
                let mut state = conn.outlet.lock();
                ready!(drain(&mut state, stream, cx))?;
                loop {
                    match stream.try_write(buf) {
                        Ok(n) => {
                            if n < buf.len() {
                                state.pending.extend_from_slice(&buf[n..]);
                                state.direct = false;
                                conn.outlet.hand_back();
                            }
                            return Poll::Ready(Ok(buf.len()));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(stream.poll_write_ready(cx))?,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
            Transport::Other(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp { stream, conn, .. } => drain(&mut conn.outlet.lock(), stream, cx),
            Transport::Other(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp { stream, conn, .. } => {
                ready!(drain(&mut conn.outlet.lock(), stream, cx))?;
                Poll::Ready(socket2::SockRef::from(stream.as_ref()).shutdown(std::net::Shutdown::Write))
            }
            Transport::Other(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::io::AsyncReadExt;
    use tungstenite::protocol::frame::{coding::Data, coding::OpCode, Frame};

    #[test]
    fn the_frame_is_what_tungstenite_writes() {
        for len in [0, 1, 125, 126, 332, 65_535, 65_536, 70_000] {
            let payload = vec![b'x'; len];
            let mut expected = Vec::new();
            Frame::message(payload.clone(), OpCode::Data(Data::Text), true).format(&mut expected).unwrap();
            assert_eq!(&text_frame(&payload)[..], &expected[..], "{len} bytes");
        }
    }

    fn event(text: String) -> Outbound {
        Arc::new(QueuedEvent::new(text.into(), None, None, None))
    }

    /// A connected pair: the server's side (small send buffer) and the client's.
    async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&server).set_send_buffer_size(4096).unwrap();
        socket2::SockRef::from(&client).set_recv_buffer_size(4096).unwrap();
        (Arc::new(server), client)
    }

    #[tokio::test]
    async fn direct_until_the_socket_is_full_then_queued_behind_the_rest() {
        let (stream, mut client) = pair().await;
        let outlet = Outlet::new(1024);
        let control = Control::default();
        let offer = |text: String| outlet.offer(&event(text), &control);
        assert_eq!(offer("before".into()), Offer::Queued, "no socket yet");
        outlet.attach(stream);
        outlet.go_direct();
        assert!(!outlet.lock().direct, "the queue is not empty");
        outlet.try_recv().unwrap();
        outlet.go_direct();
        assert!(outlet.lock().direct);

        assert_eq!(offer("first".into()), Offer::Written);
        let mut head = [0u8; 7];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"\x81\x05first");

        // Nobody reads: the socket fills, a frame is left part written, and what follows queues.
        let big = "y".repeat(10_000);
        let mut offers = Vec::new();
        while offers.last() != Some(&Offer::Queued) {
            offers.push(offer(big.clone()));
            assert!(offers.len() < 1000, "the socket never filled");
        }
        assert!(outlet.handed_back().now_or_never().is_some(), "the task is handed the rest");
        assert!(!outlet.lock().pending.is_empty());
        assert_eq!(offer("after".into()), Offer::Queued);
        outlet.go_direct();
        assert!(!outlet.lock().direct, "not while bytes wait");

        // The client reads everything: whole frames, in order.
        let written = offers.len() - 1;
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let expected = written * (4 + 10_000);
            while all.len() < expected {
                let mut chunk = vec![0u8; 65_536];
                let n = client.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed early");
                all.extend_from_slice(&chunk[..n]);
            }
            all
        });
        let stream = outlet.lock().stream.clone().unwrap();
        std::future::poll_fn(|cx| drain(&mut outlet.lock(), &stream, cx)).await.unwrap();
        let all = reader.await.unwrap();
        let one = text_frame(big.as_bytes());
        assert!(all.chunks(one.len()).all(|frame| frame == &one[..]), "frames whole and in order");
        // The rest is written, but events wait in the queue: the next one queues behind them,
        // and the dispatcher writes again only once the task took them all.
        assert_eq!(offer("later".into()), Offer::Queued);
        outlet.go_direct();
        assert!(!outlet.lock().direct, "not while events are queued");
        assert_eq!(outlet.try_recv().unwrap().payload.as_str(), big, "queued after the rest");
        assert_eq!(outlet.try_recv().unwrap().payload.as_str(), "after");
        assert_eq!(outlet.try_recv().unwrap().payload.as_str(), "later");
        outlet.go_direct();
        assert!(outlet.lock().direct);
        control.close(crate::close::CloseReason::SLOW_CONSUMER);
        assert_eq!(offer("closing".into()), Offer::Queued, "a closing connection is written to by its task only");
    }

    #[tokio::test]
    async fn a_write_that_fails_is_handed_to_the_task_which_fails_the_same_way() {
        let (stream, client) = pair().await;
        let outlet = Outlet::new(1024);
        let control = Control::default();
        outlet.attach(stream.clone());
        outlet.go_direct();
        // The client resets the connection (RST, not FIN).
        socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(client);
        let mut written = 0;
        loop {
            match outlet.offer(&event("after the reset".into()), &control) {
                Offer::Dropped => break,
                Offer::Written => written += 1,
                other => panic!("{other:?} while the socket was the dispatcher's"),
            }
            assert!(written < 100, "no write failed after the reset");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(outlet.handed_back().now_or_never().is_some(), "the task is told");
        assert!(!outlet.lock().direct);
        let error = std::future::poll_fn(|cx| drain(&mut outlet.lock(), &stream, cx)).await.unwrap_err();
        assert!(
            matches!(error.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe),
            "the task's write fails as the dispatcher's did: {error:?}"
        );
        outlet.go_direct();
        assert!(!outlet.lock().direct, "never direct again on a failed socket");
        assert_eq!(outlet.offer(&event("later".into()), &control), Offer::Queued, "left to the task, which ends");
    }
}
