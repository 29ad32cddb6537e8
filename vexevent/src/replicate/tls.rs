//! TLS between members (`[cluster.tls]`): mutual TLS 1.3 with a cluster CA. Every member
//! presents a certificate chain signed by the CA and valid for the address the others dial it at
//! (an IP subject alternative name); each side accepts only a chain that leads to the CA (not
//! the system roots). The shared-secret proof (`net`) still runs inside the TLS connection: the
//! certificate says a machine holds a key the CA signed, the secret says it belongs to this
//! cluster (a CA often signs more than one cluster's or service's certificates).
//!
//! The files are read and checked at start and by `check-config`: a file that cannot be read or
//! holds nothing usable, a key that is not the certificate's, a certificate the other members
//! would refuse (another issuer, expired or not yet valid, not for this member's address) are
//! refused by name.

use std::{net::IpAddr, path::PathBuf, sync::Arc};

use serde::Deserialize;
use tokio_rustls::rustls::{
    self, ClientConfig, RootCertStore, ServerConfig,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier as _},
    crypto::CryptoProvider,
    pki_types::{ServerName, UnixTime},
    server::WebPkiClientVerifier,
};

use crate::http::{TlsError, private_key, trusted_certificates};

/// `[cluster.tls]` as written.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsFiles {
    /// PEM file of this member's certificate chain, its own first (with an IP address SAN for
    /// the address the others dial it at).
    pub cert: PathBuf,
    /// PEM file of its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file of the cluster's CA certificate(s): the only issuers a member's chain may lead to.
    pub ca: PathBuf,
}

/// The TLS configurations of both ends of a peer connection.
#[derive(Clone)]
pub struct PeerTls {
    /// Accepts members whose client certificate leads to the CA.
    pub server: Arc<ServerConfig>,
    /// Dials members whose server certificate leads to the CA and names the dialed address.
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls(mutual TLS 1.3)")
    }
}

/// Why `[cluster.tls]` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    #[error("cluster.tls: {source}")]
    Files {
        #[source]
        source: TlsError,
    },
    #[error("cluster.tls.ca {ca}: cannot trust its certificates: {message}")]
    Ca { ca: PathBuf, message: String },
    #[error(
        "cluster.tls.cert {cert}: the other members would refuse it (it must be signed by cluster.tls.ca, valid now, and name {addr}): {source}"
    )]
    Refused {
        cert: PathBuf,
        addr: IpAddr,
        #[source]
        source: rustls::Error,
    },
    #[error("cluster.tls: the key in {key} does not serve the certificate in {cert}: {source}")]
    Key {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

impl From<TlsError> for PeerTlsError {
    fn from(source: TlsError) -> Self {
        Self::Files { source }
    }
}

impl PeerTls {
    /// Reads the files and builds both ends; `addr` is the address the other members dial this
    /// one at (its certificate must name it).
    ///
    /// # Errors
    /// A file that cannot be read or holds nothing usable, a CA rustls does not accept, a
    /// certificate the other members would refuse, a key that is not the certificate's.
    ///
    /// # Panics
    /// Never: a certificate file that loads holds at least one certificate, and the ring
    /// provider speaks TLS 1.3.
    pub fn load(files: &PeerTlsFiles, addr: IpAddr) -> Result<Self, PeerTlsError> {
        let chain = trusted_certificates(&files.cert)?;
        let key = private_key(&files.key)?;
        let ca_error = |message: String| PeerTlsError::Ca { ca: files.ca.clone(), message };
        let mut roots = RootCertStore::empty();
        for certificate in trusted_certificates(&files.ca)? {
            roots.add(certificate).map_err(|e| ca_error(e.to_string()))?;
        }
        let roots = Arc::new(roots);
        let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
        let servers = WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|e| ca_error(e.to_string()))?;
        let clients = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
            .build()
            .map_err(|e| ca_error(e.to_string()))?;
        // What the other members will check of this one, checked here first.
        let refused = |source| PeerTlsError::Refused { cert: files.cert.clone(), addr, source };
        let (own, intermediates) = chain.split_first().expect("trusted_certificates is never empty");
        let now = UnixTime::now();
        servers
            .verify_server_cert(own, intermediates, &ServerName::IpAddress(addr.into()), &[], now)
            .map_err(refused)?;
        clients.verify_client_cert(own, intermediates, now).map_err(refused)?;
        let key_error =
            |source| PeerTlsError::Key { cert: files.cert.clone(), key: files.key.clone(), source };
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring speaks TLS 1.3")
            .with_client_cert_verifier(clients)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(key_error)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring speaks TLS 1.3")
            .with_webpki_verifier(servers)
            .with_client_auth_cert(chain, key)
            .map_err(key_error)?;
        Ok(Self { server: Arc::new(server), client: Arc::new(client) })
    }
}

/// Certificates for the tests: a cluster CA and members' certificates it signs.
#[cfg(test)]
pub(super) mod testing {
    use std::path::Path;

    use super::PeerTlsFiles;

    /// A CA that signs member certificates.
    pub struct Ca {
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        pem: String,
    }

    impl Ca {
        #[must_use]
        pub fn new(name: &str) -> Self {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let key = rcgen::KeyPair::generate().unwrap();
            let pem = params.self_signed(&key).unwrap().pem();
            Self { issuer: rcgen::Issuer::new(params, key), pem }
        }

        /// Writes a member certificate for `ip` (valid until `not_after`, a year), its key and
        /// this CA into `dir` as `<name>.pem`, `<name>.key`, `ca.pem`.
        pub fn member(
            &self,
            dir: &Path,
            name: &str,
            ip: &str,
            not_after: Option<(i32, u8, u8)>,
        ) -> PeerTlsFiles {
            let mut params = rcgen::CertificateParams::new(vec![ip.to_owned()]).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            if let Some((year, month, day)) = not_after {
                params.not_before = rcgen::date_time_ymd(year - 1, month, day);
                params.not_after = rcgen::date_time_ymd(year, month, day);
            }
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            let files = PeerTlsFiles {
                cert: dir.join(format!("{name}.pem")),
                key: dir.join(format!("{name}.key")),
                ca: dir.join(format!("{name}-ca.pem")),
            };
            std::fs::write(&files.cert, cert.pem()).unwrap();
            std::fs::write(&files.key, key.serialize_pem()).unwrap();
            std::fs::write(&files.ca, &self.pem).unwrap();
            files
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::Ca, *};

    #[test]
    fn a_member_certificate_of_the_ca_loads_and_every_other_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let ca = Ca::new("cluster CA");
        let good = ca.member(dir.path(), "good", "127.0.0.1", None);
        assert!(PeerTls::load(&good, ip).is_ok());
        let message = |files: &PeerTlsFiles, ip: IpAddr| PeerTls::load(files, ip).unwrap_err().to_string();

        let missing = PeerTlsFiles { key: dir.path().join("absent.key"), ..good.clone() };
        assert!(message(&missing, ip).contains("cannot read"), "{}", message(&missing, ip));
        let other = ca.member(dir.path(), "other", "127.0.0.1", None);
        let wrong_key = PeerTlsFiles { key: other.key.clone(), ..good.clone() };
        assert!(
            message(&wrong_key, ip).contains("does not serve the certificate"),
            "{}",
            message(&wrong_key, ip)
        );
        let key_as_cert = PeerTlsFiles { cert: good.key.clone(), ..good.clone() };
        assert!(message(&key_as_cert, ip).contains("holds no PEM certificate"));

        let expired = ca.member(dir.path(), "expired", "127.0.0.1", Some((2001, 1, 1)));
        let text = message(&expired, ip);
        assert!(text.contains("would refuse it") && text.contains("expired"), "{text}");
        let foreign = Ca::new("another CA").member(dir.path(), "foreign", "127.0.0.1", None);
        let foreign = PeerTlsFiles { ca: good.ca.clone(), ..foreign };
        let text = message(&foreign, ip);
        assert!(text.contains("would refuse it") && text.contains("UnknownIssuer"), "{text}");
        let text = message(&good, "10.1.2.3".parse().unwrap());
        assert!(text.contains("name 10.1.2.3"), "a certificate for another address: {text}");
    }
}
