//! Mutual TLS on participant links (rustls, with ring).
//!
//! The switch presents its certificate and requires one from every participant, issued by
//! the configured participant CA, within its validity period and not revoked by the
//! configured CRLs. A certificate names the participants it may sign on as by its subject
//! alternative names: a DNS name equal to the participant id in lower case (`acq0001` for
//! `ACQ0001`). Sign-on as anyone else is refused (`NotAuthorised`), whatever key is proven.
//!
//! The files are read at start and again on `POST /tls/reload` (a new CRL, a renewed
//! certificate): new connections use the new configuration, sessions already up keep the
//! one they were accepted with (the operator ends a revoked participant's sessions by
//! suspending it). A reload that fails keeps the running configuration.
//!
//! TLS connections use tokio's sockets whichever data path the shards run (tokio-uring
//! hosts a tokio runtime, so both paths carry them).

use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, RwLock};

use codec::InstitutionId;
use codec::field::FieldText;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::edge::transport::Transport;
use crate::participant::Directory;

/// Where the TLS material lives (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The switch's certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The switch's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// The CA certificates that issue participant certificates.
    pub client_ca_file: PathBuf,
    /// Certificate revocation lists of those CAs (none: no revocation checking).
    pub crl_files: Vec<PathBuf>,
}

/// TLS material that cannot be used: which file and why.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: {problem}")]
    File { file: PathBuf, problem: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The running TLS configuration, replaceable while the switch serves.
#[derive(Debug)]
pub struct Tls {
    settings: TlsSettings,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl Tls {
    pub fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let config = build(&settings)?;
        Ok(Self { settings, current: RwLock::new(Arc::new(config)) })
    }

    /// Reads every file again; on success new connections use the result.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.settings)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner())))
    }
}

fn file_error(file: &std::path::Path, problem: impl std::fmt::Display) -> TlsError {
    TlsError::File { file: file.to_path_buf(), problem: problem.to_string() }
}

fn build(settings: &TlsSettings) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&settings.cert_file)
        .map_err(|e| file_error(&settings.cert_file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&settings.cert_file, e))?;
    if chain.is_empty() {
        return Err(file_error(&settings.cert_file, "holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(&settings.key_file).map_err(|e| file_error(&settings.key_file, e))?;
    let mut roots = rustls::RootCertStore::empty();
    let cas =
        CertificateDer::pem_file_iter(&settings.client_ca_file).map_err(|e| file_error(&settings.client_ca_file, e))?;
    for ca in cas {
        let ca = ca.map_err(|e| file_error(&settings.client_ca_file, e))?;
        roots.add(ca).map_err(|e| file_error(&settings.client_ca_file, e))?;
    }
    if roots.is_empty() {
        return Err(file_error(&settings.client_ca_file, "holds no CA certificate"));
    }
    let mut crls: Vec<CertificateRevocationListDer<'static>> = Vec::new();
    for file in &settings.crl_files {
        let before = crls.len();
        for crl in CertificateRevocationListDer::pem_file_iter(file).map_err(|e| file_error(file, e))? {
            crls.push(crl.map_err(|e| file_error(file, e))?);
        }
        // A damaged CRL file must never switch revocation checking off.
        if crls.len() == before {
            return Err(file_error(file, "holds no CRL (PEM \"X509 CRL\")"));
        }
    }
    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
    if !crls.is_empty() {
        // Participant certificates come straight from the participant CA; the CRLs are its.
        verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
    }
    let verifier = verifier.build().map_err(|e| TlsError::Config(e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("{}: {e}", settings.key_file.display())))?;
    Ok(config)
}

/// The participant ids a verified client certificate names (see the module docs).
pub fn participants_named(certificate: &CertificateDer<'_>, directory: &Directory) -> Vec<InstitutionId> {
    let Ok(certificate) = webpki::EndEntityCert::try_from(certificate) else { return Vec::new() };
    directory
        .iter()
        .filter(|participant| {
            let name = participant.id.as_str().to_ascii_lowercase();
            ServerName::try_from(name).is_ok_and(|name| certificate.verify_is_valid_for_subject_name(&name).is_ok())
        })
        .map(|participant| participant.id)
        .collect()
}

/// A participant link over TLS: the stream split so that a read can stay in flight while
/// a write goes out (the connection loop's one read and one write).
pub struct TlsTransport {
    reader: tokio::sync::Mutex<ReadHalf<TlsStream<TcpStream>>>,
    writer: tokio::sync::Mutex<WriteHalf<TlsStream<TcpStream>>>,
}

impl TlsTransport {
    pub fn new(stream: TlsStream<TcpStream>) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        Self { reader: tokio::sync::Mutex::new(reader), writer: tokio::sync::Mutex::new(writer) }
    }
}

impl Transport for TlsTransport {
    fn from_std(_: std::net::TcpStream) -> io::Result<Self> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "a TLS link starts with a handshake (TlsTransport::new)"))
    }

    fn read(self: &Rc<Self>, mut buffer: Vec<u8>) -> impl Future<Output = (io::Result<usize>, Vec<u8>)> + 'static {
        let stream = Rc::clone(self);
        async move {
            let result = stream.reader.lock().await.read(&mut buffer).await;
            (result, buffer)
        }
    }

    fn write_all(self: &Rc<Self>, buffer: Vec<u8>) -> impl Future<Output = (io::Result<()>, Vec<u8>)> + 'static {
        let stream = Rc::clone(self);
        async move {
            let mut writer = stream.writer.lock().await;
            let mut result = writer.write_all(&buffer).await;
            if result.is_ok() {
                result = writer.flush().await;
            }
            (result, buffer)
        }
    }

    async fn shutdown(&self) -> io::Result<()> {
        // close_notify, then the TCP write side.
        self.writer.lock().await.shutdown().await
    }
}
