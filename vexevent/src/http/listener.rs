//! A TCP listener that holds at most a configured number of connections: one over the limit is
//! answered `429 Too Many Requests` (best effort, without waiting for the client), closed,
//! counted as `http_over_capacity` and logged. A connection on which nothing has been read or
//! written for `IDLE_TIMEOUT` is closed, so an idle client cannot keep its place forever (stream
//! subscribers are pinged more often than that). With TLS, each connection does its handshake
//! under the same idle timeout. The peer's address travels with each request for the request log.

use std::{
    future::Future as _,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::connect_info::Connected,
    serve::{IncomingStream, Listener},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};

use super::tls::Stream;
use crate::telemetry::{Counters, add};

/// How long a connection may go without reading or writing a byte: twice the stream's ping
/// period and a margin, so a subscriber that answers pings (every WebSocket client does) stays.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// What a connection over the limit reads before it is closed.
const TOO_MANY_CONNECTIONS: &str = "HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 61\r\n\r\ntoo many connections to this server; try again when one ends\n";

/// A listener that refuses connections beyond `limit` at a time.
pub(super) struct BoundedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    limit: usize,
    idle: Duration,
    server: &'static str,
    counters: Arc<Counters>,
    /// Serve TLS with this.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl BoundedListener {
    /// Accepts at most `limit` connections at a time, each closed after `idle` without traffic,
    /// over TLS when `tls` is given.
    pub(super) fn new(
        listener: TcpListener,
        limit: usize,
        idle: Duration,
        server: &'static str,
        counters: Arc<Counters>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        Self { listener, permits: Arc::new(Semaphore::new(limit)), limit, idle, server, counters, tls }
    }
}

impl Listener for BoundedListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        loop {
            // tokio's listener retries (and logs) failed accepts itself.
            let (stream, peer) = Listener::accept(&mut self.listener).await;
            if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
                let deadline = Box::pin(tokio::time::sleep(self.idle));
                let stream = Stream::new(stream, self.tls.as_ref(), &self.counters);
                return (Connection { stream, idle: self.idle, deadline, _permit: permit }, peer);
            }
            add(&self.counters.http_over_capacity, 1);
            tracing::warn!(
                server = self.server,
                %peer,
                limit = self.limit,
                "refused a connection: the server holds its limit of connections"
            );
            // Never waits: a client that does not read misses the explanation, not the refusal.
            let _ = stream.try_write(TOO_MANY_CONNECTIONS.as_bytes());
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An accepted connection; it holds its place under the limit until it closes.
pub(super) struct Connection {
    stream: Stream,
    /// How long it may go without traffic.
    idle: Duration,
    /// When it has gone `idle` without traffic; moved on by every read and write.
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    /// Moves the idle deadline on after traffic.
    fn active<T>(&mut self, done: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if done.is_ready() {
            self.deadline.as_mut().reset(Instant::now() + self.idle);
        }
        done
    }
}

impl AsyncRead for Connection {
    /// Reads; a read still waiting when the idle deadline passes fails (the connection closes).
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if read.is_pending() && this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection closed")));
        }
        this.active(read)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.active(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.active(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The client's address, for the request log.
#[derive(Clone, Copy, Debug)]
pub(super) struct Peer(pub(super) SocketAddr);

impl Connected<IncomingStream<'_, BoundedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, BoundedListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_without_traffic_is_closed_and_gives_its_place_back() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let idle = Duration::from_millis(100);
        let mut listener = BoundedListener::new(tcp, 1, idle, "test", Arc::new(Counters::default()), None);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut connection, _) = Listener::accept(&mut listener).await;
        assert_eq!(listener.permits.available_permits(), 0);
        let mut buffer = [0u8; 16];
        let error = tokio::io::AsyncReadExt::read(&mut connection, &mut buffer).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(connection);
        assert_eq!(listener.permits.available_permits(), 1);
    }

    #[tokio::test]
    async fn traffic_keeps_a_connection_open() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let idle = Duration::from_mins(1);
        let mut listener = BoundedListener::new(tcp, 1, idle, "test", Arc::new(Counters::default()), None);
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut connection, _) = Listener::accept(&mut listener).await;
        tokio::io::AsyncWriteExt::write_all(&mut client, b"ping").await.unwrap();
        let mut buffer = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut connection, &mut buffer).await.unwrap();
        assert_eq!(&buffer, b"ping");
    }

    #[test]
    fn the_refusal_is_a_complete_http_response() {
        let (head, body) = TOO_MANY_CONNECTIONS.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
    }
}
