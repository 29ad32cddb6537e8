//! How the commands that talk to a running instance (`tail`, `reload`, `top`) reach it: plain
//! HTTP and WebSocket, or, with `--tls-ca FILE`, HTTPS and WSS trusting only the certificates
//! in FILE (the server's own self-signed one, or the authority that signed it).

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context as _;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{ClientConfig, pki_types::ServerName},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{client::IntoClientRequest as _, http::HeaderValue},
};
use vexevent::http::{client_config, trusted_certificates};

/// A connection a WebSocket runs over: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How to reach an instance.
pub struct Remote {
    /// The certificates to trust, for ureq and for rustls; none: plain.
    tls: Option<(Vec<ureq::tls::Certificate<'static>>, Arc<ClientConfig>)>,
}

impl Remote {
    /// Plain without `ca`; TLS trusting only `ca`'s certificates with it.
    ///
    /// # Errors
    /// When `ca` cannot be read or holds no usable certificate.
    pub fn new(ca: Option<&Path>) -> anyhow::Result<Self> {
        let Some(ca) = ca else { return Ok(Self { tls: None }) };
        let certificates = trusted_certificates(ca)?;
        let for_ureq =
            certificates.iter().map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned()).collect();
        Ok(Self { tls: Some((for_ureq, client_config(ca, certificates)?)) })
    }

    /// `http` or `https`.
    #[must_use]
    pub fn http_scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// `ws` or `wss`.
    #[must_use]
    pub fn ws_scheme(&self) -> &'static str {
        if self.tls.is_some() { "wss" } else { "ws" }
    }

    /// An HTTP client that returns error statuses as responses (the commands print the
    /// instance's answer) and, with TLS, trusts only the given certificates.
    #[must_use]
    pub fn http_agent(&self) -> ureq::Agent {
        let config = ureq::Agent::config_builder().http_status_as_error(false);
        let config = match &self.tls {
            Some((certificates, _)) => config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certificates.clone())))
                    .build(),
            ),
            None => config,
        };
        config.build().into()
    }

    /// `GET path` on the control API at `addr` with the bearer `token`: the response, whatever
    /// its status.
    ///
    /// # Errors
    /// When the control API cannot be reached.
    pub fn control_get(
        &self,
        addr: SocketAddr,
        path: &str,
        token: &str,
    ) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        self.http_agent()
            .get(format!("{}://{addr}{path}", self.http_scheme()))
            .header("authorization", format!("Bearer {token}"))
            .call()
            .with_context(|| {
                format!(
                    "cannot reach the control API at {addr} (is vexevent running with --control-addr {addr}?)"
                )
            })
    }

    /// Opens the WebSocket at `url` (on `addr`, `host:port`) with the bearer `token`.
    ///
    /// # Errors
    /// When the connection, the TLS handshake or the upgrade fails.
    pub async fn websocket(
        &self,
        url: &str,
        addr: &str,
        token: &str,
    ) -> anyhow::Result<WebSocketStream<Box<dyn Io>>> {
        let mut request = url.into_client_request().context("invalid stream address")?;
        request.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}"))?);
        let tcp = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
        let stream: Box<dyn Io> = match &self.tls {
            Some((_, config)) => {
                let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = ServerName::try_from(host.to_owned())
                    .with_context(|| format!("{host:?} is not a host name or address"))?;
                let tls =
                    TlsConnector::from(Arc::clone(config)).connect(name, tcp).await.with_context(|| {
                        format!("TLS with {addr} failed (does --tls-ca hold its certificate?)")
                    })?;
                Box::new(tls)
            }
            None => Box::new(tcp),
        };
        let (socket, _) = tokio_tungstenite::client_async(request, stream).await?;
        Ok(socket)
    }
}
