//! A small OCI distribution (v2) client: enough to read an image's config
//! labels and list a registry's repositories and tags
//! (for AIMClusterModelSource). Anonymous access, basic auth and the bearer-token challenge;
//! credentials come from `imagePullSecrets` (dockerconfigjson).
//!
//! **Plain HTTP.** HTTPS is used unless the registry is marked insecure.
//! The runtime-config CRD has no field for that, so the operator decides:
//! loopback registries (`localhost`, `127.0.0.0/8`, `[::1]`) are always
//! plain HTTP, as Docker treats them, and `AIM_INSECURE_REGISTRIES` (a
//! comma-separated list of `host[:port]`) names any others.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, WWW_AUTHENTICATE};
use serde::Deserialize;

pub const INSECURE_ENV: &str = "AIM_INSECURE_REGISTRIES";
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// What went wrong talking to a registry. Each class maps to its own
/// condition reason in the model controller.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "spec.image {image:?} is not a valid image reference ({reason}): use [registry/]repository[:tag|@digest]"
    )]
    InvalidReference { image: String, reason: String },
    #[error(
        "registry {registry} refused the credentials for {repository} (HTTP {status}): check spec.imagePullSecrets and the secret's .dockerconfigjson entry for {registry}"
    )]
    Unauthorized {
        registry: String,
        repository: String,
        status: u16,
    },
    #[error(
        "image {image} was not found in registry {registry}: check spec.image (repository and tag), or push the image"
    )]
    NotFound { registry: String, image: String },
    #[error(
        "registry {registry} is unreachable ({detail}): check the address, DNS and network policy; plain-HTTP registries must be listed in {INSECURE_ENV}"
    )]
    Unreachable { registry: String, detail: String },
    #[error("registry {registry} answered HTTP {status} for {url}: retrying")]
    Server {
        registry: String,
        url: String,
        status: u16,
    },
    #[error("registry {registry} sent an unreadable {what}: {detail}")]
    BadResponse {
        registry: String,
        what: &'static str,
        detail: String,
    },
}

/// `registry/repository:tag` split into its parts; `api_host` is where the
/// v2 API answers (Docker Hub's differs from its name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl Reference {
    pub fn parse(image: &str) -> Result<Self, RegistryError> {
        let bad = |reason: &str| RegistryError::InvalidReference {
            image: image.to_string(),
            reason: reason.to_string(),
        };
        let image = image.trim();
        if image.is_empty() || image.contains(char::is_whitespace) {
            return Err(bad("empty or contains whitespace"));
        }
        let (rest, digest) = match image.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (image, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), rest.to_string()),
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), Some(tag.to_string())),
            _ => (path.clone(), None),
        };
        if repository.is_empty()
            || repository
                .split('/')
                .any(|s| s.is_empty() || s.chars().any(|c| c.is_ascii_uppercase()))
        {
            return Err(bad("the repository must be lowercase path segments"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let reference = match (digest, tag) {
            (Some(d), _) if d.starts_with("sha256:") => d.to_string(),
            (Some(_), _) => return Err(bad("digests must be sha256:<hex>")),
            (None, Some(t)) if !t.is_empty() => t,
            (None, Some(_)) => return Err(bad("empty tag")),
            (None, None) => "latest".to_string(),
        };
        Ok(Self {
            registry,
            repository,
            reference,
        })
    }

    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }
}

fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    }
}

/// Whether `registry` (host[:port]) is spoken to over plain HTTP.
pub fn is_insecure(registry: &str, listed: &[String]) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => registry.split(':').next().unwrap_or_default(),
    };
    let loopback = host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback || listed.iter().any(|l| l == registry || l == host)
}

/// The registries listed in `AIM_INSECURE_REGISTRIES`.
pub fn insecure_from_env() -> Vec<String> {
    std::env::var(INSECURE_ENV)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

/// Why a pull secret could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error(
        "secret {name} has neither .dockerconfigjson nor .dockercfg: create it with kubectl create secret docker-registry"
    )]
    NoDockerConfig { name: String },
    #[error("secret {name}: {key} is not valid docker config JSON ({detail})")]
    BadJson {
        name: String,
        key: &'static str,
        detail: String,
    },
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Strips a docker-config key to `host[:port]`: keys are written as
/// `https://index.docker.io/v1/`, `host` or `host:port`.
fn config_host(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        h => h.to_string(),
    }
}

/// Credentials per registry from one pull secret's data. Docker Hub's
/// aliases all map to `docker.io`.
pub fn credentials_from_secret(
    name: &str,
    data: &BTreeMap<String, Vec<u8>>,
) -> Result<BTreeMap<String, Credentials>, SecretError> {
    let (key, auths) = if let Some(raw) = data.get(".dockerconfigjson") {
        let cfg: DockerConfig = serde_json::from_slice(raw).map_err(|e| SecretError::BadJson {
            name: name.to_string(),
            key: ".dockerconfigjson",
            detail: e.to_string(),
        })?;
        (".dockerconfigjson", cfg.auths)
    } else if let Some(raw) = data.get(".dockercfg") {
        let auths: BTreeMap<String, DockerAuth> =
            serde_json::from_slice(raw).map_err(|e| SecretError::BadJson {
                name: name.to_string(),
                key: ".dockercfg",
                detail: e.to_string(),
            })?;
        (".dockercfg", auths)
    } else {
        return Err(SecretError::NoDockerConfig {
            name: name.to_string(),
        });
    };
    let mut out = BTreeMap::new();
    for (registry, a) in auths {
        let creds = match (a.username, a.password, a.auth) {
            (Some(u), Some(p), _) if !u.is_empty() => Credentials {
                username: u,
                password: p,
            },
            (_, _, Some(auth)) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| {
                        s.split_once(':')
                            .map(|(u, p)| (u.to_string(), p.to_string()))
                    });
                let Some((username, password)) = decoded else {
                    return Err(SecretError::BadJson {
                        name: name.to_string(),
                        key,
                        detail: format!("auths[{registry:?}].auth is not base64 of user:password"),
                    });
                };
                Credentials { username, password }
            }
            _ => continue,
        };
        out.entry(config_host(&registry)).or_insert(creds);
    }
    Ok(out)
}

/// Parsed `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut map = BTreeMap::new();
    let mut rest = params;
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.split_once('"') {
                Some((v, t)) => (v, t),
                None => (quoted, ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, t)) => (v, t),
                None => (after, ""),
            }
        };
        map.insert(key, value.to_string());
        rest = tail.trim_start_matches(',');
    }
    Some(Challenge::Bearer {
        realm: map.remove("realm")?,
        service: map.remove("service"),
        scope: map.remove("scope"),
    })
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    media_type: Option<String>,
    config: Option<Descriptor>,
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    digest: String,
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: Option<String>,
    os: Option<String>,
}

#[derive(Deserialize)]
struct ConfigBlob {
    config: Option<ContainerConfig>,
}

#[derive(Deserialize)]
struct ContainerConfig {
    #[serde(rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
}

/// One registry session: scheme, credentials and the token the challenge
/// flow got, reused for the following requests.
pub struct Session {
    http: reqwest::Client,
    registry: String,
    base: String,
    credentials: Option<Credentials>,
    authorization: Option<String>,
}

fn http_client() -> reqwest::Client {
    // kube brings ring; reqwest is built without a provider of its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("the registry HTTP client builds")
}

impl Session {
    pub fn new(registry: &str, credentials: Option<Credentials>, insecure: &[String]) -> Self {
        let host = api_host(registry);
        let scheme = if is_insecure(host, insecure) {
            "http"
        } else {
            "https"
        };
        Self {
            http: http_client(),
            registry: registry.to_string(),
            base: format!("{scheme}://{host}"),
            credentials,
            authorization: None,
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> RegistryError {
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        RegistryError::Unreachable {
            registry: self.registry.clone(),
            detail,
        }
    }

    /// GET `path`, answering one auth challenge. Returns the response when
    /// it is a success; a 404 is `Ok(None)`.
    async fn get(
        &mut self,
        path: &str,
        accept: Option<&str>,
        repository: &str,
    ) -> Result<Option<reqwest::Response>, RegistryError> {
        let url = format!("{}{path}", self.base);
        for attempt in 0..2 {
            let mut req = self.http.get(&url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(auth) = &self.authorization {
                req = req.header(AUTHORIZATION, auth);
            }
            let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(Some(resp));
            }
            if status == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                self.answer_challenge(resp.headers(), repository).await?;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(RegistryError::Unauthorized {
                    registry: self.registry.clone(),
                    repository: repository.to_string(),
                    status: status.as_u16(),
                });
            }
            return Err(RegistryError::Server {
                registry: self.registry.clone(),
                url,
                status: status.as_u16(),
            });
        }
        unreachable!("the loop returns on its second pass")
    }

    async fn answer_challenge(
        &mut self,
        headers: &HeaderMap,
        repository: &str,
    ) -> Result<(), RegistryError> {
        let refused = || RegistryError::Unauthorized {
            registry: self.registry.clone(),
            repository: repository.to_string(),
            status: 401,
        };
        let challenge = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .and_then(parse_challenge);
        let basic = |c: &Credentials| {
            let raw = format!("{}:{}", c.username, c.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        };
        match challenge {
            Some(Challenge::Basic) | None => {
                let c = self.credentials.as_ref().ok_or_else(refused)?;
                self.authorization = Some(basic(c));
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let mut req = self.http.get(&realm);
                let mut query = Vec::new();
                if let Some(s) = service {
                    query.push(("service", s));
                }
                query.push((
                    "scope",
                    scope.unwrap_or_else(|| format!("repository:{repository}:pull")),
                ));
                req = req.query(&query);
                if let Some(c) = &self.credentials {
                    req = req.header(AUTHORIZATION, basic(c));
                }
                let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
                let status = resp.status();
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    return Err(RegistryError::Unauthorized {
                        registry: self.registry.clone(),
                        repository: repository.to_string(),
                        status: status.as_u16(),
                    });
                }
                if !status.is_success() {
                    return Err(RegistryError::Server {
                        registry: self.registry.clone(),
                        url: realm,
                        status: status.as_u16(),
                    });
                }
                let body: TokenResponse =
                    resp.json().await.map_err(|e| RegistryError::BadResponse {
                        registry: self.registry.clone(),
                        what: "token response",
                        detail: e.to_string(),
                    })?;
                let token =
                    body.token
                        .or(body.access_token)
                        .ok_or_else(|| RegistryError::BadResponse {
                            registry: self.registry.clone(),
                            what: "token response",
                            detail: "neither token nor access_token".into(),
                        })?;
                self.authorization = Some(format!("Bearer {token}"));
            }
        }
        Ok(())
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Response,
        what: &'static str,
    ) -> Result<T, RegistryError> {
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::BadResponse {
            registry: self.registry.clone(),
            what,
            detail: e.to_string(),
        })
    }

    /// The config labels of `image` (an index resolves to linux/amd64).
    pub async fn labels(
        &mut self,
        image: &Reference,
    ) -> Result<BTreeMap<String, String>, RegistryError> {
        let repo = image.repository.clone();
        let not_found = || RegistryError::NotFound {
            registry: image.registry.clone(),
            image: format!("{}:{}", image.repository, image.reference),
        };
        let resp = self
            .get(
                &format!("/v2/{repo}/manifests/{}", image.reference),
                Some(MANIFEST_TYPES),
                &repo,
            )
            .await?
            .ok_or_else(not_found)?;
        let mut manifest: Manifest = self.json(resp, "manifest").await?;
        if let Some(list) = manifest.manifests.take() {
            let pick = list
                .iter()
                .find(|d| {
                    d.platform.as_ref().is_some_and(|p| {
                        p.os.as_deref() == Some("linux")
                            && p.architecture.as_deref() == Some("amd64")
                    })
                })
                .or(list.first())
                .ok_or_else(|| RegistryError::BadResponse {
                    registry: image.registry.clone(),
                    what: "image index",
                    detail: "it lists no manifests".into(),
                })?;
            let resp = self
                .get(
                    &format!("/v2/{repo}/manifests/{}", pick.digest),
                    Some(MANIFEST_TYPES),
                    &repo,
                )
                .await?
                .ok_or_else(not_found)?;
            manifest = self.json(resp, "manifest").await?;
        }
        let config = manifest.config.ok_or_else(|| RegistryError::BadResponse {
            registry: image.registry.clone(),
            what: "manifest",
            detail: format!(
                "no config descriptor (media type {:?})",
                manifest.media_type
            ),
        })?;
        let resp = self
            .get(&format!("/v2/{repo}/blobs/{}", config.digest), None, &repo)
            .await?
            .ok_or_else(not_found)?;
        let blob: ConfigBlob = self.json(resp, "image config").await?;
        Ok(blob.config.and_then(|c| c.labels).unwrap_or_default())
    }

    /// Every repository in the registry's catalog (paged with `Link`).
    pub async fn catalog(&mut self) -> Result<Vec<String>, RegistryError> {
        #[derive(Deserialize)]
        struct Catalog {
            #[serde(default)]
            repositories: Vec<String>,
        }
        self.paged(
            "/v2/_catalog?n=1000",
            "registry:catalog:*",
            "catalog",
            |c: Catalog| c.repositories,
        )
        .await
    }

    /// Every tag of `repository`.
    pub async fn tags(&mut self, repository: &str) -> Result<Vec<String>, RegistryError> {
        #[derive(Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        self.paged(
            &format!("/v2/{repository}/tags/list?n=1000"),
            repository,
            "tag list",
            |t: Tags| t.tags.unwrap_or_default(),
        )
        .await
    }

    async fn paged<T: serde::de::DeserializeOwned>(
        &mut self,
        first: &str,
        repository: &str,
        what: &'static str,
        items: impl Fn(T) -> Vec<String>,
    ) -> Result<Vec<String>, RegistryError> {
        let mut out = Vec::new();
        let mut next = Some(first.to_string());
        let mut pages = 0;
        while let Some(path) = next.take() {
            pages += 1;
            let resp = self.get(&path, None, repository).await?.ok_or_else(|| {
                RegistryError::NotFound {
                    registry: self.registry.clone(),
                    image: repository.to_string(),
                }
            })?;
            next = resp
                .headers()
                .get("link")
                .and_then(|l| l.to_str().ok())
                .and_then(|l| l.split_once('<'))
                .and_then(|(_, r)| r.split_once('>'))
                .map(|(p, _)| p.to_string())
                .filter(|_| pages < 100);
            out.extend(items(self.json(resp, what).await?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("amdenterpriseai/aim-qwen:0.8.5").unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.reference.as_str()
            ),
            ("docker.io", "amdenterpriseai/aim-qwen", "0.8.5")
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.reference, "latest");
        let r = Reference::parse("127.0.0.1:5000/a/b:1.0").unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.reference.as_str()
            ),
            ("127.0.0.1:5000", "a/b", "1.0")
        );
        let r = Reference::parse("ghcr.io/x/y@sha256:abc").unwrap();
        assert_eq!(r.reference, "sha256:abc");
        assert!(Reference::parse("Bad/Upper:1").is_err());
        assert!(Reference::parse("a b").is_err());
        let e = Reference::parse("").unwrap_err().to_string();
        assert!(e.contains("spec.image"), "{e}");
    }

    #[test]
    fn loopback_and_listed_registries_are_plain_http() {
        assert!(is_insecure("127.0.0.1:5000", &[]));
        assert!(is_insecure("127.3.4.5", &[]));
        assert!(is_insecure("localhost:5000", &[]));
        assert!(is_insecure("[::1]:5000", &[]));
        assert!(!is_insecure("ghcr.io", &[]));
        assert!(is_insecure("reg.lan:5000", &["reg.lan:5000".into()]));
        assert!(is_insecure("reg.lan:5000", &["reg.lan".into()]));
        assert!(!is_insecure("reg.lan:5000", &["other".into()]));
    }

    #[test]
    fn bearer_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn docker_config_secrets() {
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:pw:with:colons");
        let json = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"127.0.0.1:5001":{{"username":"u","password":"p"}}}}}}"#
        );
        let data = BTreeMap::from([(".dockerconfigjson".to_string(), json.into_bytes())]);
        let creds = credentials_from_secret("s", &data).unwrap();
        assert_eq!(creds["docker.io"].username, "bob");
        assert_eq!(creds["docker.io"].password, "pw:with:colons");
        assert_eq!(creds["127.0.0.1:5001"].password, "p");
        assert!(!format!("{:?}", creds["docker.io"]).contains("pw"));
        let none = credentials_from_secret("s", &BTreeMap::new()).unwrap_err();
        assert!(none.to_string().contains("docker-registry"), "{none}");
        let bad = BTreeMap::from([(".dockerconfigjson".to_string(), b"{".to_vec())]);
        assert!(matches!(
            credentials_from_secret("s", &bad),
            Err(SecretError::BadJson { .. })
        ));
    }
}
