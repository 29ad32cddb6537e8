//! Socket sink for local tools: JSON Lines written to a Unix or TCP socket that vexevent
//! connects to (`unix:/run/tool.sock`, `tcp:127.0.0.1:9000`). A broken connection is
//! reconnected on the next attempt; the batch is sent again whole, so a receiver may see the
//! lines it already had from a batch that broke mid-way (at least once).

use std::{
    io::{BufWriter, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::PathBuf,
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

/// How long a write may block before the connection counts as broken.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes batches to one socket, reconnecting when needed.
pub struct SocketSink {
    address: SocketAddress,
    connection: Option<BufWriter<Box<dyn Write + Send>>>,
}

impl SocketSink {
    #[must_use]
    pub fn new(address: SocketAddress) -> Self {
        Self { address, connection: None }
    }

    fn connect(&self) -> std::io::Result<Box<dyn Write + Send>> {
        Ok(match &self.address {
            SocketAddress::Unix(path) => {
                let stream = UnixStream::connect(path)?;
                stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
                Box::new(stream)
            }
            SocketAddress::Tcp(addr) => {
                let stream = TcpStream::connect(addr)?;
                stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
        })
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
