//! The listening socket. tokio's `TcpListener::bind` uses the standard library's backlog of 128
//! pending connections; when a replica dies, its clients reconnect to the others at once, and a
//! queue that short makes the kernel drop SYNs and clients wait a second for a retry.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket};

/// Pending connections the kernel may queue (it caps this at `net.core.somaxconn`).
pub const BACKLOG: u32 = 4096;

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}
