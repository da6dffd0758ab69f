//! A raw Redis connection for the bridge's own readers (pub/sub and the stream reads): where it
//! goes ([`Target`], from `REDIS_URL`), connecting with AUTH and SELECT, sending commands, and
//! decoding replies with [`crate::source::resp::Decoder`], so that no reply costs more than its
//! cut strings ([`crate::source::BULK_CAP`]). With a `rediss://` URL it speaks TLS, with the
//! same CA and client certificate as the client library's connections. It does not reconnect:
//! its users do, with backoff.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::source::resp::{self, Decoder, Frame};

const READ_CHUNK: usize = 64 * 1024;

/// Where the connection goes, from `REDIS_URL`.
#[derive(Debug, Clone)]
pub struct Target {
    addr: Addr,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

#[derive(Clone)]
enum Addr {
    Tcp(String, u16),
    Tls(String, u16, TlsConnector),
    Unix(PathBuf),
}

impl std::fmt::Debug for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(host, port) => write!(f, "{host}:{port}"),
            Addr::Tls(host, port, _) => write!(f, "{host}:{port} (TLS)"),
            Addr::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Target {
    /// Where `client` connects; `tls` is the configuration for a `rediss://` URL
    /// ([`wire::redisconn::RedisSettings::tls_config`]).
    pub fn of(client: &redis::Client, tls: Option<rustls::ClientConfig>) -> std::io::Result<Target> {
        let info = client.get_connection_info();
        let addr = match (info.addr(), tls) {
            (redis::ConnectionAddr::Tcp(host, port), _) => Addr::Tcp(host.clone(), *port),
            (redis::ConnectionAddr::TcpTls { host, port, .. }, Some(tls)) => {
                Addr::Tls(host.clone(), *port, TlsConnector::from(Arc::new(tls)))
            }
            (redis::ConnectionAddr::Unix(path), _) => Addr::Unix(path.clone()),
            _ => return Err(std::io::Error::other("a rediss:// URL needs its TLS configuration")),
        };
        let settings = info.redis_settings();
        Ok(Target {
            addr,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
        })
    }
}

enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Unix(UnixStream),
}

/// One connection with what it read but not yet decoded.
pub struct Conn {
    stream: Stream,
    buf: BytesMut,
    decoder: Decoder,
}

impl Conn {
    /// Connects, authenticates when the URL carries credentials and selects the URL's database,
    /// all within `timeout`. Bulk strings longer than `cap` are cut.
    pub async fn open(target: &Target, cap: usize, timeout: Duration) -> std::io::Result<Conn> {
        let open = async {
            let stream = match &target.addr {
                Addr::Tcp(host, port) => {
                    let stream = TcpStream::connect((host.as_str(), *port)).await?;
                    stream.set_nodelay(true)?;
                    Stream::Tcp(stream)
                }
                Addr::Tls(host, port, connector) => {
                    let stream = TcpStream::connect((host.as_str(), *port)).await?;
                    stream.set_nodelay(true)?;
                    let name = rustls_pki_types::ServerName::try_from(host.clone())
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                    Stream::Tls(Box::new(connector.connect(name, stream).await?))
                }
                Addr::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
            };
            let mut conn = Conn { stream, buf: BytesMut::with_capacity(READ_CHUNK), decoder: Decoder::new(cap) };
            if let Some(password) = &target.password {
                match &target.username {
                    Some(user) => conn.send(&[b"AUTH", user.as_bytes(), password.as_bytes()]).await?,
                    None => conn.send(&[b"AUTH", password.as_bytes()]).await?,
                }
                conn.expect_ok("AUTH").await?;
            }
            if target.db != 0 {
                conn.send(&[b"SELECT", target.db.to_string().as_bytes()]).await?;
                conn.expect_ok("SELECT").await?;
            }
            Ok(conn)
        };
        tokio::time::timeout(timeout, open)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "Redis connect timed out")))
    }

    async fn expect_ok(&mut self, what: &str) -> std::io::Result<()> {
        match self.next_frame().await? {
            Frame::Error(e) => {
                Err(std::io::Error::other(format!("Redis refused {what}: {}", String::from_utf8_lossy(&e))))
            }
            _ => Ok(()),
        }
    }

    /// Sends one command.
    pub async fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        resp::encode(&mut out, args);
        self.write_all(&out).await
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Stream::Unix(s) => s.write_all(bytes).await,
        }
    }

    /// Reads more bytes into the buffer; an error when the connection ended. Cancel-safe:
    /// nothing is read when the future is dropped before it completes.
    pub async fn fill(&mut self) -> std::io::Result<()> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let read = match &mut self.stream {
            Stream::Tcp(s) => s.read_buf(&mut self.buf).await?,
            Stream::Tls(s) => s.read_buf(&mut self.buf).await?,
            Stream::Unix(s) => s.read_buf(&mut self.buf).await?,
        };
        match read {
            0 => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "Redis closed the connection")),
            _ => Ok(()),
        }
    }

    /// The next frame among the bytes already read, if complete.
    pub fn decode(&mut self) -> std::io::Result<Option<Frame>> {
        self.decoder.decode(&mut self.buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// The next frame, reading as needed.
    pub async fn next_frame(&mut self) -> std::io::Result<Frame> {
        loop {
            if let Some(frame) = self.decode()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }
}
