//! Server TLS with certificates reloaded when their files change, so a
//! cert-manager rotation needs no restart (otel-add-on never reloaded the
//! KEDA port's certificate).

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading TLS certificate file {}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing PEM certificates in {}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no PEM certificate",
        path.display()
    );
    Ok(certs)
}

fn load_certified_key(files: &TlsFiles) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs = read_certs(&files.cert)?;
    let pem = std::fs::read(&files.key)
        .with_context(|| format!("reading TLS key file {}", files.key.display()))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &pem[..])
        .with_context(|| format!("parsing PEM private key in {}", files.key.display()))?
        .with_context(|| format!("{} holds no PEM private key", files.key.display()))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .with_context(|| format!("unsupported private key in {}", files.key.display()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing_key)))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Hands rustls the current certificate; `reload_if_changed` swaps it.
#[derive(Debug)]
pub struct ReloadingCertificate {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ReloadingCertificate {
    pub fn load(files: TlsFiles) -> anyhow::Result<Self> {
        let key = load_certified_key(&files)?;
        let stamps = (modified(&files.cert), modified(&files.key));
        Ok(ReloadingCertificate {
            files,
            current: RwLock::new(key),
            stamps: Mutex::new(stamps),
        })
    }

    /// Reloads when either file's modification time changed. A broken new
    /// pair (e.g. caught half-written) keeps the old one serving and is
    /// retried on the next call.
    pub fn reload_if_changed(&self) -> Result<bool, anyhow::Error> {
        let now = (modified(&self.files.cert), modified(&self.files.key));
        let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        if *stamps == now {
            return Ok(false);
        }
        let key = load_certified_key(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        *stamps = now;
        Ok(true)
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

pub fn server_config(
    certificate: Arc<ReloadingCertificate>,
) -> anyhow::Result<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &certificate.files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .with_context(|| format!("adding client CA from {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .context("building the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(certificate);
    // gRPC needs h2; OTLP/HTTP clients may use either.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
