//! HTTPS in the server (`server.tls`): rustls on the ring provider (the one reqwest and
//! lettre already use), TLS 1.2 and 1.3 only, HTTP/1.1 over it.
//!
//! The certificate and key are read through [`CertReloader`], which the server loop asks
//! every `server.tls.reload_secs` whether the files changed: a renewed certificate
//! (certbot, cert-manager, a copy by hand) is served to new connections without a
//! restart, and a pair that does not load (a half-written file, a key of another
//! certificate) leaves the previous one in service.
//!
//! With `server.tls.client_ca_file`, agents may present a certificate from that CA. The
//! handshake verifies it (chain, validity dates, client-auth usage); a connection without
//! one is still accepted, for tokens and browsers. The certificate travels to the
//! handlers as [`ClientCertificate`], and ingest lets it write the host it names only.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::config::{check_private_file, file_stamp as stamp, FileStamp as Stamp, ServerTls};

/// The certificate a client presented and the handshake verified (request extension).
#[derive(Clone, Debug)]
pub struct ClientCertificate(pub Arc<CertificateDer<'static>>);

/// The crypto provider of every TLS connection: ring, as in reqwest and lettre.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the server loop needs for TLS: the acceptor and the certificate it serves.
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub certs: Arc<CertReloader>,
}

/// Build the server's TLS from `cfg` (errors name the key and the file).
pub fn load(cfg: &ServerTls) -> Result<Tls, String> {
    let provider = provider();
    let certs = Arc::new(CertReloader::open(
        PathBuf::from(&cfg.cert_file),
        PathBuf::from(&cfg.key_file),
        provider.clone(),
    )?);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("server.tls: {e}"))?;
    let builder = if cfg.client_ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs(Path::new(&cfg.client_ca_file), "server.tls.client_ca_file")? {
            roots.add(c).map_err(|e| {
                format!(
                    "server.tls.client_ca_file = {}: not a usable CA certificate: {e}",
                    cfg.client_ca_file
                )
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            // Tokens and browsers keep working without a certificate.
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("server.tls.client_ca_file = {}: {e}", cfg.client_ca_file))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut sc = builder.with_cert_resolver(certs.clone());
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(sc)),
        certs,
    })
}

/// Every certificate in a PEM file.
pub fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{key} = {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key} = {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// The stamps of the certificate and the key file.
type Stamps = (Stamp, Stamp);

/// The server's certificate, re-read when its files change.
pub struct CertReloader {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamps when `current` was loaded, and of the last pair that failed.
    loaded: Mutex<(Stamps, Option<Stamps>)>,
}

impl std::fmt::Debug for CertReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertReloader")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl CertReloader {
    /// Load the pair once; an error names the file at fault.
    pub fn open(
        cert: PathBuf,
        key: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<CertReloader, String> {
        let stamps = (stamp(&cert), stamp(&key));
        let pair = load_pair(&cert, &key, &provider)?;
        Ok(CertReloader {
            cert,
            key,
            provider,
            current: RwLock::new(Arc::new(pair)),
            loaded: Mutex::new((stamps, None)),
        })
    }

    /// Re-read the pair when either file changed since it was loaded. `Ok(true)`: a new
    /// certificate is in service; an error leaves the old one (and is reported once per
    /// version of the files).
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = (stamp(&self.cert), stamp(&self.key));
        let mut loaded = self.loaded.lock().expect("cert stamps");
        if loaded.0 == now || loaded.1 == Some(now) {
            return Ok(false);
        }
        match load_pair(&self.cert, &self.key, &self.provider) {
            Ok(pair) => {
                *self.current.write().expect("cert lock") = Arc::new(pair);
                *loaded = (now, None);
                Ok(true)
            }
            Err(e) => {
                loaded.1 = Some(now);
                Err(e)
            }
        }
    }

    /// The certificate chain in service (the server's own first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.read().expect("cert lock").cert.clone()
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("cert lock").clone())
    }
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = read_certs(cert, "server.tls.cert_file")?;
    check_private_file(key, "server.tls.key_file")?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("server.tls.key_file = {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        format!(
            "server.tls.key_file = {} does not go with server.tls.cert_file = {}: {e}",
            key.display(),
            cert.display()
        )
    })
}
