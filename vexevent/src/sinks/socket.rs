//! Socket sink for local tools: JSON Lines written to a Unix or TCP socket that vexevent
//! connects to (`unix:/run/tool.sock`, `tcp:127.0.0.1:9000`). A broken connection is
//! reconnected on the next attempt; the batch is sent again whole, so a receiver may see the
//! lines it already had from a batch that broke mid-way (at least once). Connecting (over TCP or
//! to a Unix listener whose backlog is full) and every write give up after the sink's timeout, so
//! a peer that black-holes packets, stops accepting or stops reading costs a failed (retried,
//! counted) attempt, and cannot hold shutdown.

use std::{
    io::{self, BufWriter, Write},
    net::{TcpStream, ToSocketAddrs as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{DeliveryError, queue::Queued, worker::Deliver};

/// Where the socket sink connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketAddress {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

impl std::str::FromStr for SocketAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            Ok(Self::Unix(PathBuf::from(path)))
        } else if let Some(addr) = text.strip_prefix("tcp:") {
            Ok(Self::Tcp(addr.to_owned()))
        } else {
            Err(format!(
                "socket address {text:?} must start with unix: or tcp: (unix:/run/x.sock, tcp:127.0.0.1:9000)"
            ))
        }
    }
}

/// Writes batches to one socket, reconnecting when needed.
pub struct SocketSink {
    address: SocketAddress,
    /// How long connecting (TCP) and each write may block before the attempt fails.
    timeout: Duration,
    connection: Option<BufWriter<Box<dyn Write + Send>>>,
}

impl SocketSink {
    #[must_use]
    pub fn new(address: SocketAddress, timeout: Duration) -> Self {
        Self { address, timeout, connection: None }
    }

    fn connect(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match &self.address {
            SocketAddress::Unix(path) => Box::new(self.connect_unix(path)?),
            SocketAddress::Tcp(addr) => {
                let stream = self.connect_tcp(addr)?;
                stream.set_write_timeout(Some(self.timeout))?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
        })
    }

    /// Connects to a Unix socket within the timeout. A connect to a listener whose backlog is
    /// full waits for room; the socket's send timeout (set before connecting, and kept for the
    /// writes) bounds that wait.
    fn connect_unix(&self, path: &Path) -> io::Result<UnixStream> {
        let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
        socket.set_write_timeout(Some(self.timeout))?;
        match socket.connect(&socket2::SockAddr::unix(path)?) {
            Ok(()) => Ok(socket.into()),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{}: the listener accepted nothing within {:?}", path.display(), self.timeout),
            )),
            Err(error) => Err(error),
        }
    }

    /// Connects to the first of `addr`'s addresses that answers within the timeout.
    fn connect_tcp(&self, addr: &str) -> io::Result<TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to no address"));
        for resolved in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&resolved, self.timeout) {
                Ok(stream) => return Ok(stream),
                Err(error) => last = error,
            }
        }
        Err(last)
    }
}

impl Deliver for SocketSink {
    fn deliver(&mut self, batch: &[Queued]) -> Result<(), DeliveryError> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => self.connection.insert(BufWriter::with_capacity(1 << 16, self.connect()?)),
        };
        let written = batch
            .iter()
            .try_for_each(|queued| {
                connection.write_all(queued.line.as_bytes())?;
                connection.write_all(b"\n")
            })
            .and_then(|()| connection.flush());
        if let Err(error) = written {
            self.connection = None;
            return Err(error.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, SocketAddr, TcpListener},
        os::fd::FromRawFd as _,
        sync::Arc,
    };

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(200);

    fn batch(lines: usize, bytes: usize) -> Vec<Queued> {
        let line: Arc<str> = Arc::from("x".repeat(bytes));
        (0..lines)
            .map(|i| Queued { line: Arc::clone(&line), urgent: false, sequence: i as u64, monotonic_ns: 0 })
            .collect()
    }

    /// A loopback listener whose accept queue is full (backlog 0 and one connection waiting):
    /// the kernel drops further SYNs, as a black-holing firewall would.
    fn black_hole() -> (TcpListener, TcpStream) {
        // SAFETY: plain socket calls on a descriptor this function owns; the address is a valid
        // sockaddr_in of the stated size.
        let listener = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let address = libc::sockaddr_in {
                sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap(),
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be() },
                sin_zero: [0; 8],
            };
            let size = libc::socklen_t::try_from(std::mem::size_of_val(&address)).unwrap();
            assert_eq!(libc::bind(fd, (&raw const address).cast(), size), 0);
            assert_eq!(libc::listen(fd, 0), 0);
            TcpListener::from_raw_fd(fd)
        };
        let waiting = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener, waiting)
    }

    #[test]
    fn connecting_to_a_peer_that_never_answers_gives_up() {
        let (listener, _waiting) = black_hole();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let mut sink = SocketSink::new(SocketAddress::Tcp(addr.to_string()), TIMEOUT);
        let Err(DeliveryError::Io(error)) = sink.deliver(&batch(1, 10)) else { panic!("delivered") };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(sink.connection.is_none());
    }

    #[test]
    fn connecting_to_a_unix_listener_that_never_accepts_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.sock");
        // Backlog 0 and one connection waiting: the next connect waits for room.
        let listener = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        listener.bind(&socket2::SockAddr::unix(&path).unwrap()).unwrap();
        listener.listen(0).unwrap();
        let _waiting = UnixStream::connect(&path).unwrap();
        let mut sink = SocketSink::new(SocketAddress::Unix(path), TIMEOUT);
        let Err(DeliveryError::Io(error)) = sink.deliver(&batch(1, 10)) else { panic!("delivered") };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(sink.connection.is_none());
    }

    #[test]
    fn writing_to_a_peer_that_never_reads_gives_up() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut sink = SocketSink::new(SocketAddress::Tcp(addr.to_string()), TIMEOUT);
        // More than both sides' socket buffers hold, never read.
        let Err(DeliveryError::Io(error)) = sink.deliver(&batch(1024, 64 * 1024)) else {
            panic!("64 MiB written to a peer that does not read")
        };
        assert!(matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{error}");
        assert!(sink.connection.is_none(), "the broken connection is dropped, reconnected next time");
        drop(listener);
    }
}
