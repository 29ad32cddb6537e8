//! TLS for the HTTP servers (rustls with the ring provider): a server given a certificate chain
//! and a private key (PEM files, read at start) serves HTTPS and WSS. The handshake runs inside
//! the connection, under its idle timeout, so a client that stalls it holds only its own place.
//! The commands that talk to a running instance trust the certificates of a PEM file given to
//! them (`--tls-ca`): [`trusted_certificates`], [`client_config`].

use std::{
    future::Future as _,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use crate::telemetry::{Counters, add};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{
    Accept, TlsAcceptor,
    rustls::{
        self, ClientConfig, RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    },
    server::TlsStream,
};

/// Longest certificate or key file read (a chain of a few certificates is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// `[stream.tls]`, `[control.tls]`: the server's certificate chain and private key.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM file of the certificate chain, the server's own first.
    pub cert: PathBuf,
    /// PEM file of its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is larger than {limit} bytes; it is not a certificate or key file")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path} holds no PEM {what}")]
    Missing { path: PathBuf, what: &'static str },
    #[error("the certificates in {ca} cannot be trusted: {source}")]
    Client {
        ca: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the certificate in {cert} and the key in {key} cannot serve TLS: {source}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read { path: path.to_owned(), source };
    let mut bytes = Vec::new();
    io::Read::read_to_end(
        &mut io::Read::take(std::fs::File::open(path).map_err(read)?, MAX_PEM_BYTES + 1),
        &mut bytes,
    )
    .map_err(read)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge { path: path.to_owned(), limit: MAX_PEM_BYTES });
    }
    Ok(bytes)
}

/// Reads the files and builds the server's TLS acceptor (TLS 1.2 and 1.3, no client
/// certificates: clients authenticate with the token).
///
/// # Errors
/// A file that cannot be read, holds no certificate or key, or a key that does not fit.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let pem = read_bounded(&files.cert)?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if chain.is_empty() {
        return Err(TlsError::Missing { path: files.cert.clone(), what: "certificate" });
    }
    let key = private_key(&files.key)?;
    let config_error = |source| TlsError::Config { cert: files.cert.clone(), key: files.key.clone(), source };
    let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(config_error)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// A file that cannot be read, is too large, or holds no private key.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read_bounded(path)?)
        .map_err(|_| TlsError::Missing { path: path.to_owned(), what: "private key" })
}

/// The certificates of a PEM file (a server's own, or the authority that signed it), which a
/// client trusts and nothing else.
///
/// # Errors
/// A file that cannot be read, is too large, or holds no certificate.
pub fn trusted_certificates(ca: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_bounded(ca)?;
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if certificates.is_empty() {
        return Err(TlsError::Missing { path: ca.to_owned(), what: "certificate" });
    }
    Ok(certificates)
}

/// A TLS client (TLS 1.2 and 1.3) that trusts only `certificates`.
///
/// # Errors
/// A certificate rustls does not accept as a trust anchor.
pub fn client_config(
    ca: &Path,
    certificates: Vec<CertificateDer<'static>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let config_error = |source| TlsError::Client { ca: ca.to_owned(), source };
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate).map_err(config_error)?;
    }
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An accepted TCP connection: plain, or TLS (its handshake first).
pub(super) enum Stream {
    Plain(TcpStream),
    /// The handshake, and the counters its failure is counted in.
    Handshake(Box<Accept<TcpStream>>, Arc<Counters>),
    Tls(Box<TlsStream<TcpStream>>),
    /// The handshake failed; the connection only closes.
    Failed,
}

impl Stream {
    /// A plain connection, or the start of a TLS one.
    pub(super) fn new(stream: TcpStream, tls: Option<&TlsAcceptor>, counters: &Arc<Counters>) -> Self {
        match tls {
            Some(acceptor) => Self::Handshake(Box::new(acceptor.accept(stream)), Arc::clone(counters)),
            None => Self::Plain(stream),
        }
    }

    /// Drives the handshake; ready once the connection carries data.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Self::Handshake(accept, counters) = self {
            match ready!(Pin::new(accept.as_mut()).poll(cx)) {
                Ok(tls) => *self = Self::Tls(Box::new(tls)),
                Err(error) => {
                    add(&counters.http_tls_failed, 1);
                    *self = Self::Failed;
                    tracing::warn!(%error, "a TLS handshake failed");
                    return Poll::Ready(Err(error));
                }
            }
        }
        Poll::Ready(match self {
            Self::Failed => Err(io::Error::new(io::ErrorKind::NotConnected, "the TLS handshake failed")),
            _ => Ok(()),
        })
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            Self::Handshake(..) | Self::Failed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            Self::Handshake(..) | Self::Failed => Poll::Ready(Ok(0)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            Self::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
            Self::Handshake(..) | Self::Failed => Poll::Ready(Ok(0)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
            Self::Handshake(..) | Self::Failed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            Self::Handshake(..) | Self::Failed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_ready(cx))?;
        match this {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            Self::Handshake(..) | Self::Failed => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        let files = TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    #[test]
    fn a_certificate_and_its_key_make_an_acceptor_and_anything_else_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let one = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (one.cert.pem(), one.signing_key.serialize_pem());
        assert!(acceptor(&files(dir.path(), &cert, &key)).is_ok());
        let refused =
            |cert: &str, key: &str| acceptor(&files(dir.path(), cert, key)).err().unwrap().to_string();
        assert!(refused(&key, &key).contains("holds no PEM certificate"), "{}", refused(&key, &key));
        assert!(refused(&cert, &cert).contains("holds no PEM private key"), "{}", refused(&cert, &cert));
        let mismatched = refused(&cert, &other.signing_key.serialize_pem());
        assert!(mismatched.contains("cannot serve TLS"), "{mismatched}");
        let missing =
            acceptor(&TlsFiles { cert: dir.path().join("none.pem"), key: dir.path().join("key.pem") });
        assert!(matches!(missing, Err(TlsError::Read { .. })));
    }
}
