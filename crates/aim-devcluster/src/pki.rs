//! Throwaway certificates for one local cluster.
//!
//! Every cluster gets fresh CAs when it starts, so nothing here is a secret
//! worth protecting: the point is only that the apiserver runs with real TLS,
//! client-certificate authentication and service-account signing, exactly as a
//! production control plane does.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::Error;

/// PEM files of a cluster's PKI, as the components' flags consume them.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub ca_cert: PathBuf,
    pub apiserver_cert: PathBuf,
    pub apiserver_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
    pub front_proxy_ca_cert: PathBuf,
    pub front_proxy_client_cert: PathBuf,
    pub front_proxy_client_key: PathBuf,
    pub kwok_cert: PathBuf,
    pub kwok_key: PathBuf,
    /// KEDA reads `ca.crt`, `tls.crt` and `tls.key` from one directory
    /// (`--cert-dir`), for the operator-adapter gRPC and the adapter's
    /// serving certificate alike.
    pub keda_dir: PathBuf,
    /// Extra CAs KEDA's scalers trust (`--ca-dir`): the cluster CA.
    pub keda_ca_dir: PathBuf,
    /// `tls.crt` and `tls.key` of the admission webhooks served on
    /// loopback (KServe's, the OpenTelemetry operator's), the layout
    /// controller-runtime's webhook server reads.
    pub webhook_dir: PathBuf,
}

impl PkiFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.crt"),
            apiserver_cert: dir.join("apiserver.crt"),
            apiserver_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            service_account_key: dir.join("sa.key"),
            service_account_pub: dir.join("sa.pub"),
            front_proxy_ca_cert: dir.join("front-proxy-ca.crt"),
            front_proxy_client_cert: dir.join("front-proxy-client.crt"),
            front_proxy_client_key: dir.join("front-proxy-client.key"),
            kwok_cert: dir.join("kwok.crt"),
            kwok_key: dir.join("kwok.key"),
            keda_dir: dir.join("keda"),
            keda_ca_dir: dir.join("keda-ca"),
            webhook_dir: dir.join("webhooks"),
        }
    }

    pub fn keda_ca(&self) -> PathBuf {
        self.keda_dir.join("ca.crt")
    }

    pub fn keda_cert(&self) -> PathBuf {
        self.keda_dir.join("tls.crt")
    }

    pub fn keda_key(&self) -> PathBuf {
        self.keda_dir.join("tls.key")
    }

    pub fn webhook_cert(&self) -> PathBuf {
        self.webhook_dir.join("tls.crt")
    }

    pub fn webhook_key(&self) -> PathBuf {
        self.webhook_dir.join("tls.key")
    }
}

/// The in-memory PEM texts, so the kubeconfig can embed them.
pub struct GeneratedPki {
    pub files: PkiFiles,
    pub ca_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

fn pki_err(what: &str, e: rcgen::Error) -> Error {
    Error::Pki(format!("{what}: {e}"))
}

fn base_params(common_name: &str, organisation: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(o) = organisation {
        dn.push(DnType::OrganizationName, o);
    }
    params.distinguished_name = dn;
    // Backdate a little so a clock skew between cert creation and first use
    // can never make a fresh cluster reject its own certificates.
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(365);
    params
}

fn new_ca(common_name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, Error> {
    let mut params = base_params(common_name, None);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(|e| pki_err("CA key", e))?;
    CertifiedIssuer::self_signed(params, key).map_err(|e| pki_err("CA certificate", e))
}

fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    common_name: &str,
    organisation: Option<&str>,
    sans: Vec<SanType>,
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<(String, String), Error> {
    let mut params = base_params(common_name, organisation);
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages;
    let key = KeyPair::generate().map_err(|e| pki_err(common_name, e))?;
    let cert = params
        .signed_by(&key, ca)
        .map_err(|e| pki_err(common_name, e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|e| Error::io(path, e))
}

/// Generates the cluster's CAs and leaf certificates into `dir`.
pub fn generate(dir: &Path) -> Result<GeneratedPki, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let files = PkiFiles::in_dir(dir);

    let ca = new_ca("aim-dev-cluster-ca")?;
    let ca_pem = ca.pem();
    write(&files.ca_cert, &ca_pem)?;

    // The serving certificate must name every address clients use: kube-rs
    // connects by IP, kubectl and kwok by name, in-cluster clients by the
    // kubernetes Service names.
    let mut sans = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    for dns in [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ] {
        sans.push(SanType::DnsName(
            dns.try_into().map_err(|e| pki_err("SAN", e))?,
        ));
    }
    let (cert, key) = leaf(
        &ca,
        "kube-apiserver",
        None,
        sans,
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    write(&files.apiserver_cert, &cert)?;
    write(&files.apiserver_key, &key)?;

    // system:masters bypasses RBAC; the admin identity is what the dev tools
    // and the test harness use. Tests that need least privilege impersonate.
    let (admin_cert_pem, admin_key_pem) = leaf(
        &ca,
        "aim-admin",
        Some("system:masters"),
        vec![],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    write(&files.admin_cert, &admin_cert_pem)?;
    write(&files.admin_key, &admin_key_pem)?;

    let sa = KeyPair::generate().map_err(|e| pki_err("service-account key", e))?;
    write(&files.service_account_key, &sa.serialize_pem())?;
    write(&files.service_account_pub, &sa.public_key_pem())?;

    // A separate CA for the aggregation layer, so that an extension apiserver
    // (KEDA's metrics server) can trust requests proxied by kube-apiserver.
    let front_proxy_ca = new_ca("aim-dev-front-proxy-ca")?;
    write(&files.front_proxy_ca_cert, &front_proxy_ca.pem())?;
    let (fp_cert, fp_key) = leaf(
        &front_proxy_ca,
        "front-proxy-client",
        None,
        vec![],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    write(&files.front_proxy_client_cert, &fp_cert)?;
    write(&files.front_proxy_client_key, &fp_key)?;

    // KWOK plays every node's kubelet. The apiserver verifies it against the
    // cluster CA when it proxies pods/log, exactly as with a real kubelet;
    // nodes advertise it under the Hostname address `localhost`.
    let (kwok_cert, kwok_key) = leaf(
        &ca,
        "kwok-kubelet",
        None,
        vec![
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::DnsName("localhost".try_into().map_err(|e| pki_err("SAN", e))?),
        ],
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    write(&files.kwok_cert, &kwok_cert)?;
    write(&files.kwok_key, &kwok_key)?;

    // KEDA's operator and metrics server share one certificate, as in
    // KEDA's own deployment: the operator serves gRPC with it and demands
    // it back from the adapter (mTLS), and the adapter serves the external
    // metrics API with it. kube-apiserver dials the adapter's loopback
    // address but checks the name of the APIService's Service; the
    // adapter dials the operator by IP. Generated with every cluster so
    // KEDA can join a running cluster later: the CA key is never kept.
    let mut keda_sans = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    for dns in [
        "localhost",
        "keda-operator.keda.svc",
        "keda-operator.keda.svc.cluster.local",
        "keda-metrics-apiserver.keda.svc",
        "keda-metrics-apiserver.keda.svc.cluster.local",
    ] {
        keda_sans.push(SanType::DnsName(
            dns.try_into().map_err(|e| pki_err("SAN", e))?,
        ));
    }
    let (keda_cert, keda_key) = leaf(
        &ca,
        "keda",
        Some("aim-dev-cluster"),
        keda_sans,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    for sub in [&files.keda_dir, &files.keda_ca_dir] {
        std::fs::create_dir_all(sub).map_err(|e| Error::io(sub, e))?;
    }
    write(&files.keda_ca(), &ca_pem)?;
    write(&files.keda_cert(), &keda_cert)?;
    write(&files.keda_key(), &keda_key)?;
    write(&files.keda_ca_dir.join("ca.crt"), &ca_pem)?;

    // Admission webhooks: kube-apiserver calls them by URL on loopback
    // (`clientConfig.url`), verifying this certificate against the cluster
    // CA, which the webhook configurations carry as their caBundle.
    let (hook_cert, hook_key) = leaf(
        &ca,
        "aim-dev-webhooks",
        None,
        vec![
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::DnsName("localhost".try_into().map_err(|e| pki_err("SAN", e))?),
        ],
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    std::fs::create_dir_all(&files.webhook_dir).map_err(|e| Error::io(&files.webhook_dir, e))?;
    write(&files.webhook_cert(), &hook_cert)?;
    write(&files.webhook_key(), &hook_key)?;

    Ok(GeneratedPki {
        files,
        ca_pem,
        admin_cert_pem,
        admin_key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_every_file_with_pem_content() {
        let dir = std::env::temp_dir().join(format!("aim-pki-test-{}", std::process::id()));
        let pki = generate(&dir).unwrap();
        for path in [
            &pki.files.ca_cert,
            &pki.files.apiserver_cert,
            &pki.files.admin_cert,
            &pki.files.front_proxy_client_cert,
            &pki.files.kwok_cert,
            &pki.files.keda_cert(),
            &pki.files.keda_ca(),
            &pki.files.webhook_cert(),
        ] {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{path:?}");
        }
        let sa_pub = std::fs::read_to_string(&pki.files.service_account_pub).unwrap();
        assert!(sa_pub.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(pki.admin_key_pem.contains("PRIVATE KEY"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
