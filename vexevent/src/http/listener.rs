//! A TCP listener that holds at most a configured number of connections: one over the limit is
//! answered `429 Too Many Requests` (best effort, without waiting for the client), closed,
//! counted as `http_over_capacity` and logged; the peer's address travels with each request
//! for the request log.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    extract::connect_info::Connected,
    serve::{IncomingStream, Listener},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

use crate::telemetry::{Counters, add};

/// What a connection over the limit reads before it is closed.
const TOO_MANY_CONNECTIONS: &str = "HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 61\r\n\r\ntoo many connections to this server; try again when one ends\n";

/// A listener that refuses connections beyond `limit` at a time.
pub(super) struct BoundedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    limit: usize,
    server: &'static str,
    counters: Arc<Counters>,
}

impl BoundedListener {
    pub(super) fn new(
        listener: TcpListener,
        limit: usize,
        server: &'static str,
        counters: Arc<Counters>,
    ) -> Self {
        Self { listener, permits: Arc::new(Semaphore::new(limit)), limit, server, counters }
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
                return (Connection { stream, _permit: permit }, peer);
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
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
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

    #[test]
    fn the_refusal_is_a_complete_http_response() {
        let (head, body) = TOO_MANY_CONNECTIONS.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
    }
}
