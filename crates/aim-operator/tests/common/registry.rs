//! A real OCI registry for tests: Debian's `docker-registry` (installed by
//! `dev/registry.sh`) on loopback, one anonymous and one with htpasswd auth
//! per test binary, a third with token auth (and its token server,
//! `token_server`) when a test asks for it, and image pushes through the
//! registry's HTTP API (a config blob with labels, a layer blob, and a
//! manifest).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::json;
use sha2::Digest as _;

use super::token_server::{ISSUER, SERVICE, TokenServer};

pub const USER: &str = "aim";
pub const PASSWORD: &str = "s3cret-pw";

pub struct Registries {
    pub anonymous: String,
    pub auth: String,
}

/// The registry with distribution's `auth: token`, and its token server.
pub struct TokenRegistry {
    pub address: String,
    pub server: TokenServer,
}

/// How a test registry authenticates.
pub enum RegistryAuth<'a> {
    Anonymous,
    Htpasswd,
    Token(&'a TokenServer),
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts one registry on `port`, stopped by a watcher shell when this test
/// process exits.
pub fn start_registry(dir: &std::path::Path, port: u16, auth: RegistryAuth<'_>) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let mut config = format!(
        "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.join("data").display()
    );
    match auth {
        RegistryAuth::Anonymous => {}
        RegistryAuth::Htpasswd => {
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
        RegistryAuth::Token(server) => {
            let bundle = dir.join("token-ca.pem");
            std::fs::write(&bundle, &server.root_bundle).unwrap();
            config.push_str(&format!(
                "auth:\n  token: {{realm: '{}', service: {SERVICE}, issuer: {ISSUER}, rootcertbundle: {}}}\n",
                server.realm,
                bundle.display()
            ));
        }
    }
    let cfg = dir.join("config.yml");
    std::fs::write(&cfg, config).unwrap();
    aim_testkit::serve_registry(dir, &cfg, port);
}

fn require_tools() {
    assert!(
        Command::new("sh")
            .args(["-c", "command -v docker-registry && command -v htpasswd"])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success(),
        "docker-registry or htpasswd is missing: run dev/registry.sh (dev/test does)"
    );
}

fn registry_root() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("aim-registry-{}", std::process::id()))
}

pub fn registries() -> &'static Registries {
    static R: OnceLock<Registries> = OnceLock::new();
    R.get_or_init(|| {
        require_tools();
        let root = registry_root();
        let (a, b) = (free_port(), free_port());
        start_registry(&root.join("anonymous"), a, RegistryAuth::Anonymous);
        start_registry(&root.join("auth"), b, RegistryAuth::Htpasswd);
        Registries {
            anonymous: format!("127.0.0.1:{a}"),
            auth: format!("127.0.0.1:{b}"),
        }
    })
}

/// The token-auth registry, started on first use: only the tests that
/// need it pay for it.
pub fn token_registry() -> &'static TokenRegistry {
    static R: OnceLock<TokenRegistry> = OnceLock::new();
    R.get_or_init(|| {
        require_tools();
        let server = TokenServer::start(USER, PASSWORD);
        let port = free_port();
        start_registry(
            &registry_root().join("token"),
            port,
            RegistryAuth::Token(&server),
        );
        TokenRegistry {
            address: format!("127.0.0.1:{port}"),
            server,
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

/// The `key="value"` parameters of a `WWW-Authenticate` challenge (the
/// values the test registries send hold no commas or quotes).
fn challenge_params(params: &str) -> BTreeMap<String, String> {
    params
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_string(),
            )
        })
        .collect()
}

/// The `Authorization` value a push to `repo` needs, found the way a
/// docker client finds it: `GET /v2/` and answer the challenge, with basic
/// credentials for htpasswd, or with a bearer token for
/// `repository:<repo>:pull,push` from the challenge's realm.
pub async fn push_authorization(registry: &str, repo: &str, auth: bool) -> Option<String> {
    if !auth {
        return None;
    }
    let resp = http()
        .get(format!("http://{registry}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        401,
        "{registry} has no auth: {resp:?}"
    );
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    let (scheme, params) = challenge.split_once(' ').unwrap_or((&challenge, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(format!("Basic {}", basic(USER, PASSWORD)));
    }
    assert!(
        scheme.eq_ignore_ascii_case("bearer"),
        "unknown challenge {challenge:?}"
    );
    let params = challenge_params(params);
    let token = bearer_token(
        &params["realm"],
        &params["service"],
        &format!("repository:{repo}:pull,push"),
        USER,
        PASSWORD,
    )
    .await
    .unwrap_or_else(|(status, body)| panic!("token for pushing to {repo}: HTTP {status}: {body}"));
    Some(format!("Bearer {token}"))
}

pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// A token for `scope` from a token server, or the HTTP status and body it
/// refused with.
pub async fn bearer_token(
    realm: &str,
    service: &str,
    scope: &str,
    user: &str,
    password: &str,
) -> Result<String, (u16, String)> {
    let resp = http()
        .get(realm)
        .query(&[("service", service), ("scope", scope)])
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        return Err((status, resp.text().await.unwrap_or_default()));
    }
    let body: serde_json::Value = resp.json().await.unwrap();
    Ok(body["token"].as_str().expect("a token").to_string())
}

fn with_auth(
    req: reqwest::RequestBuilder,
    authorization: &Option<String>,
) -> reqwest::RequestBuilder {
    match authorization {
        Some(a) => req.header("authorization", a),
        None => req,
    }
}

pub async fn push_blob(registry: &str, repo: &str, bytes: &[u8], auth: bool) -> String {
    let d = digest(bytes);
    let auth = push_authorization(registry, repo, auth).await;
    let resp = with_auth(
        http().post(format!("http://{registry}/v2/{repo}/blobs/uploads/")),
        &auth,
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
        &auth,
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
    let auth = push_authorization(registry, repo, auth).await;
    let resp = with_auth(
        http()
            .put(format!("http://{registry}/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(body.to_vec()),
        &auth,
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
