//! The container image: `dev/image` packages this test's own `aim` binary
//! and pushes it to a real registry (Debian's `docker-registry` on loopback,
//! installed by `dev/registry.sh`); the test pulls it back through the
//! registry API, checks every digest, unpacks the layers and runs the
//! entrypoint inside the unpacked root filesystem with `chroot`, as the user
//! the image names. Then the chart is installed into the shared test cluster
//! with that image reference, and its Deployments must come up Ready with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use aim_devcluster::CacheDirs;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::Value;
use sha2::Digest as _;

const REPO: &str = "aim";
const TAG: &str = "under-test";

struct Image {
    registry: String,
}

impl Image {
    fn reference(&self) -> String {
        format!("{}/{REPO}:{TAG}", self.registry)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A registry on loopback, stopped by a watcher shell when this test
/// process exits.
fn start_registry(dir: &Path) -> String {
    assert!(
        Command::new("sh")
            .args(["-c", "command -v docker-registry"])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success(),
        "docker-registry is missing: run dev/registry.sh (dev/test does)"
    );
    let port = free_port();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    aim_testkit::serve_registry(dir, &config, port);
    format!("127.0.0.1:{port}")
}

/// The image, built once per test process by the script a developer runs.
fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("aim-image-test-{}", std::process::id()));
        let registry = start_registry(&dir.join("registry"));
        let image = Image { registry };
        let started = Instant::now();
        let out = Command::new(aim_testkit::repo_path("dev/image"))
            .args(["--binary", env!("CARGO_BIN_EXE_aim")])
            .args(["--ref", &image.reference()])
            .output()
            .expect("dev/image runs");
        assert!(
            out.status.success(),
            "dev/image failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "dev/image took {:.1}s:\n{}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stdout)
        );
        image
    })
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// GETs a blob or manifest and checks it against its digest.
async fn fetch(client: &reqwest::Client, url: &str, accept: &str, digest: Option<&str>) -> Vec<u8> {
    let resp = client
        .get(url)
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let bytes = resp.bytes().await.unwrap().to_vec();
    if let Some(d) = digest {
        assert_eq!(sha256(&bytes), d, "{url} does not match its digest");
    }
    bytes
}

/// Pulls the image through the registry API: its config, and its root
/// filesystem unpacked layer by layer (whiteouts applied) under `root`.
async fn pull(image: &Image, root: &Path) -> Value {
    // reqwest is built without a crypto provider of its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let base = format!("http://{}/v2/{REPO}", image.registry);
    let manifest = fetch(
        &client,
        &format!("{base}/manifests/{TAG}"),
        "application/vnd.oci.image.manifest.v1+json",
        None,
    )
    .await;
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "an OCI manifest: {manifest}"
    );
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config = fetch(
        &client,
        &format!("{base}/blobs/{config_digest}"),
        "*/*",
        Some(config_digest),
    )
    .await;
    let config: Value = serde_json::from_slice(&config).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len(), "one diff_id per layer");
    std::fs::create_dir_all(root).unwrap();
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        assert_eq!(
            layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
            "a gzipped tar layer"
        );
        let digest = layer["digest"].as_str().unwrap();
        let gz = fetch(
            &client,
            &format!("{base}/blobs/{digest}"),
            "*/*",
            Some(digest),
        )
        .await;
        let mut tar_bytes = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar_bytes)
            .unwrap();
        assert_eq!(
            sha256(&tar_bytes),
            diff_id.as_str().unwrap(),
            "the uncompressed layer matches the config's diff_id"
        );
        unpack_layer(&tar_bytes, root);
    }
    config
}

/// Applies one layer: OCI whiteouts (`.wh.NAME` deletes NAME, `.wh..wh..opq`
/// empties its directory) and everything else unpacked in place.
fn unpack_layer(tar_bytes: &[u8], root: &Path) {
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let parent = root.join(path.parent().unwrap_or(Path::new("")));
        match name.as_deref() {
            Some(".wh..wh..opq") => {
                for e in std::fs::read_dir(&parent).into_iter().flatten() {
                    let p = e.unwrap().path();
                    let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
                }
            }
            Some(n) if n.starts_with(".wh.") => {
                let p = parent.join(&n[4..]);
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
            _ => {
                entry.set_preserve_permissions(true);
                assert!(entry.unpack_in(root).unwrap(), "{path:?} escapes the root");
            }
        }
    }
}

/// Where a tool is on this process's PATH: the command runs with the
/// image's environment, whose PATH is the image's.
fn on_path(tool: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not on PATH (util-linux and coreutils have it)"))
}

/// Runs the image's entrypoint with `args` inside `root`, with the image's
/// environment and as its user: `chroot --userspec` as root (CI and the dev
/// machines are), else in a user namespace where this user is root.
fn run_in(root: &Path, config: &Value, args: &[&str]) -> std::process::Output {
    let entrypoint: Vec<&str> = config["config"]["Entrypoint"]
        .as_array()
        .expect("an entrypoint")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let user = config["config"]["User"].as_str().unwrap();
    let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    let mut cmd = if uid.trim() == "0" {
        let mut c = Command::new(on_path("chroot"));
        c.arg(format!("--userspec={user}"));
        c
    } else {
        let mut c = Command::new(on_path("unshare"));
        c.args(["--user", "--map-root-user", "chroot"]);
        c
    };
    cmd.arg(root).args(&entrypoint).args(args).env_clear();
    for kv in config["config"]["Env"].as_array().into_iter().flatten() {
        let (k, v) = kv.as_str().unwrap().split_once('=').unwrap();
        cmd.env(k, v);
    }
    cmd.output().expect("chroot runs")
}

#[tokio::test]
async fn the_image_runs_its_entrypoint_as_a_non_root_user() {
    let image = image();
    let root: PathBuf = std::env::temp_dir()
        .join(format!("aim-image-test-{}", std::process::id()))
        .join("rootfs");
    let config = pull(image, &root).await;

    assert_eq!(config["os"], "linux");
    assert_eq!(
        config["config"]["User"], "65532:65532",
        "numeric and non-zero, so the chart's runAsNonRoot can be checked by the kubelet"
    );
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/aim"])
    );
    assert!(
        root.join("etc/ssl/certs/ca-certificates.crt")
            .metadata()
            .unwrap()
            .len()
            > 10_000,
        "the CA bundle is in the image"
    );
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );

    let out = run_in(&root, &config, &["--version"]);
    assert!(
        out.status.success(),
        "aim --version in the image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("aim {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run_in(&root, &config, &["operator", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && help.contains("--scaler-address"),
        "aim operator --help in the image: {help}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every library the binary loads is in the image: the dynamic loader
    // resolves them all inside the root, as the only user there.
    let out = run_in(&root, &config, &["scaler", "--help"]);
    assert!(out.status.success(), "aim scaler --help in the image");
    std::fs::remove_dir_all(&root).unwrap();
}

/// The chart with the image's reference, installed by the real helm into the
/// shared test cluster: both Deployments run that image and turn Ready (on
/// KWOK's nodes, which mark pods Ready without pulling anything).
#[tokio::test]
async fn the_chart_installs_with_the_image_and_its_deployments_turn_ready() {
    let image = image();
    aim_testkit::install_chart().await;
    let info = aim_testkit::cluster().await;
    let helm = CacheDirs::discover().unwrap().binary("helm");
    let reference = image.reference();
    let (repository, tag) = reference.rsplit_once(':').unwrap();
    let started = Instant::now();
    let out = tokio::process::Command::new(&helm)
        .args(["upgrade", "aim"])
        .arg(aim_testkit::repo_path("deploy/chart"))
        .args(["--namespace", "aim-system", "--kubeconfig"])
        .arg(&info.kubeconfig)
        .args(["--reuse-values", "--wait", "--timeout", "120s"])
        .args(["--set", &format!("image.repository={repository}")])
        .args(["--set", &format!("image.tag={tag}")])
        .output()
        .await
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm upgrade with the image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "helm upgrade --wait to Ready Deployments: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let client = aim_testkit::client().await;
    for (ns, name) in [("aim-system", "aim-operator"), ("keda", "keda-otel-scaler")] {
        let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("Deployment {ns}/{name}: {e}"));
        let spec = deployment.spec.unwrap();
        let containers = spec.template.spec.unwrap().containers;
        assert_eq!(containers[0].image.as_deref(), Some(reference.as_str()));
        let status = deployment.status.unwrap();
        assert_eq!(
            status.ready_replicas, spec.replicas,
            "{ns}/{name} is Ready with the image"
        );
    }
}

/// A mistyped `dev/image` call stops before building or pushing anything,
/// with exit code 2 and a message that names the argument.
#[test]
fn dev_image_refuses_bad_arguments_naming_them() {
    for (args, says) in [
        (&["--bogus"][..], "unknown argument --bogus"),
        (&["--ref"][..], "--ref needs an image reference"),
        (&["--binary"][..], "--binary needs the path"),
        (
            &["--in-cluster", "--binary", env!("CARGO_BIN_EXE_aim")][..],
            "give one of them",
        ),
    ] {
        let out = Command::new(aim_testkit::repo_path("dev/image"))
            .args(args)
            .output()
            .expect("dev/image runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "dev/image {args:?}: {stderr}");
        assert!(
            stderr.contains(says) && stderr.contains("dev/image --help"),
            "dev/image {args:?} should say {says:?} and point to --help: {stderr}"
        );
    }
    // A path that is not a program is named too (exit 1: nothing was built).
    let out = Command::new(aim_testkit::repo_path("dev/image"))
        .args(["--binary", "/nonexistent/aim"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/aim is not an executable"));
}
