//! A real OCI registry for tests: Debian's `docker-registry` (installed by
//! `dev/registry.sh`) on loopback, one anonymous and one with htpasswd auth
//! per test binary, and image pushes through the registry's HTTP API (a
//! config blob with labels, a layer blob, and a manifest).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::Digest as _;

pub const USER: &str = "aim";
pub const PASSWORD: &str = "s3cret-pw";

pub struct Registries {
    pub anonymous: String,
    pub auth: String,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts one registry on `port` (with htpasswd when `auth`), stopped by a
/// watcher shell when this test process exits.
pub fn start_registry(dir: &std::path::Path, port: u16, auth: bool) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let mut config = format!(
        "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.join("data").display()
    );
    if auth {
        let out = Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .expect("htpasswd runs: install it with dev/registry.sh");
        assert!(out.status.success(), "htpasswd failed");
        std::fs::write(dir.join("htpasswd"), out.stdout).unwrap();
        config.push_str(&format!(
            "auth:\n  htpasswd: {{realm: aim-test, path: {}}}\n",
            dir.join("htpasswd").display()
        ));
    }
    let cfg = dir.join("config.yml");
    std::fs::write(&cfg, config).unwrap();
    let script = format!(
        "docker-registry serve '{}' >'{}' 2>&1 & r=$!; while kill -0 {} 2>/dev/null && kill -0 $r 2>/dev/null; do sleep 1; done; kill $r 2>/dev/null",
        cfg.display(),
        dir.join("log").display(),
        std::process::id()
    );
    let mut watcher = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh starts");
    // Reaped when the registry stops (never before this process exits).
    std::thread::spawn(move || watcher.wait());
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "docker-registry did not listen on {port}; log: {}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn registries() -> &'static Registries {
    static R: OnceLock<Registries> = OnceLock::new();
    R.get_or_init(|| {
        assert!(
            Command::new("sh")
                .args(["-c", "command -v docker-registry && command -v htpasswd"])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success(),
            "docker-registry or htpasswd is missing: run dev/registry.sh (dev/test does)"
        );
        let root = std::env::temp_dir().join(format!("aim-registry-{}", std::process::id()));
        let (a, b) = (free_port(), free_port());
        start_registry(&root.join("anonymous"), a, false);
        start_registry(&root.join("auth"), b, true);
        Registries {
            anonymous: format!("127.0.0.1:{a}"),
            auth: format!("127.0.0.1:{b}"),
        }
    })
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

pub fn http() -> reqwest::Client {
    // reqwest is built without a crypto provider of its own (kube brings
    // ring); the operator installs ring too, but may not have run yet.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub fn with_auth(req: reqwest::RequestBuilder, auth: bool) -> reqwest::RequestBuilder {
    if auth {
        req.basic_auth(USER, Some(PASSWORD))
    } else {
        req
    }
}

pub async fn push_blob(registry: &str, repo: &str, bytes: &[u8], auth: bool) -> String {
    let d = digest(bytes);
    let resp = with_auth(
        http().post(format!("http://{registry}/v2/{repo}/blobs/uploads/")),
        auth,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 202, "upload start: {resp:?}");
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("http://{registry}{location}")
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = with_auth(
        http()
            .put(format!("{location}{sep}digest={d}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec()),
        auth,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "blob upload: {resp:?}");
    d
}

pub async fn put_manifest(
    registry: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
    auth: bool,
) -> String {
    let resp = with_auth(
        http()
            .put(format!("http://{registry}/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(body.to_vec()),
        auth,
    )
    .send()
    .await
    .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(
        status,
        201,
        "manifest push: {}",
        resp.text().await.unwrap_or_default()
    );
    digest(body)
}

/// Pushes an image manifest whose config carries `labels`; returns the
/// manifest digest and size.
pub async fn push_manifest(
    registry: &str,
    repo: &str,
    reference: &str,
    labels: &BTreeMap<String, String>,
    arch: &str,
    auth: bool,
) -> (String, usize) {
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap();
    let layer = format!("layer of {repo}:{reference} {arch}").into_bytes();
    let config_digest = push_blob(registry, repo, &config, auth).await;
    let layer_digest = push_blob(registry, repo, &layer, auth).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    let d = put_manifest(
        registry,
        repo,
        reference,
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
        auth,
    )
    .await;
    (d, manifest.len())
}

pub async fn push_image(
    registry: &str,
    repo: &str,
    tag: &str,
    labels: &[(&str, &str)],
    auth: bool,
) {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    push_manifest(registry, repo, tag, &labels, "amd64", auth).await;
}
