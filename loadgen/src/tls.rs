//! TLS for the generator's participants, when the switch requires mutual TLS: each
//! participant presents its own certificate (`DIR/ID.crt`, key `DIR/ID.key`, as in
//! `deploy/tls/`) and trusts the given CA for the switch's certificate.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::participants::Participant;

/// One participant's TLS client: its certificate and the name the switch's certificate
/// must carry.
#[derive(Clone)]
pub struct TlsIdentity {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsIdentity {{ server_name: {:?} }}", self.server_name)
    }
}

impl PartialEq for TlsIdentity {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for TlsIdentity {}

impl TlsIdentity {
    /// Connects over TCP and completes the handshake.
    pub async fn connect(
        &self,
        address: std::net::SocketAddr,
        tcp: tokio::net::TcpStream,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.config));
        connector
            .connect(self.server_name.clone(), tcp)
            .await
            .with_context(|| format!("TLS handshake with the switch at {address}"))
    }
}

fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not PEM certificates", path.display()))?;
    anyhow::ensure!(!certificates.is_empty(), "{}: holds no certificate", path.display());
    Ok(certificates)
}

/// Gives every participant its TLS identity from `dir` (`ID.crt`, `ID.key`), trusting
/// `ca_file` for the switch's certificate, which must name `server_name`.
pub fn attach(participants: &mut [Participant], dir: &Path, ca_file: &Path, server_name: &str) -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certificates(ca_file)? {
        roots.add(ca).with_context(|| format!("{}: not a usable CA certificate", ca_file.display()))?;
    }
    let server_name = ServerName::try_from(server_name.to_string())
        .with_context(|| format!("{server_name:?} is not a DNS name or IP address"))?;
    for participant in participants {
        let id = participant.id.to_string();
        let (cert_file, key_file) = (dir.join(format!("{id}.crt")), dir.join(format!("{id}.key")));
        let chain = read_certificates(&cert_file)?;
        let key = PrivateKeyDer::from_pem_file(&key_file)
            .with_context(|| format!("{}: cannot read a private key", key_file.display()))?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain, key)
            .with_context(|| format!("{}: the key does not match the certificate", key_file.display()))?;
        participant.tls = Some(TlsIdentity { config: Arc::new(config), server_name: server_name.clone() });
    }
    Ok(())
}
