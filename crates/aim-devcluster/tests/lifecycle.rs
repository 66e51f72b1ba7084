//! The cluster's own lifecycle: idempotent `up`, a `down` that leaves no
//! process or port behind, and clear errors for a busy port or a missing Go
//! toolchain. Uses clusters of its own so the shared test cluster is never
//! taken down under other tests.

use std::net::TcpListener;

use aim_devcluster::{CacheDirs, ClusterOptions, Error};

fn options(name: &str, port_base: u16) -> ClusterOptions {
    let mut opts = ClusterOptions::new(name, CacheDirs::discover().unwrap());
    opts.port_base = port_base;
    opts
}

#[tokio::test]
async fn up_is_idempotent_and_down_frees_every_port() {
    let opts = options("lifecycle", 28440);
    // A run interrupted earlier may have left this cluster behind.
    aim_devcluster::down(&opts.cache, "lifecycle").unwrap();
    let first = aim_devcluster::up(&opts).await.unwrap();
    assert!(first.started);
    let again = aim_devcluster::up(&opts).await.unwrap();
    assert!(!again.started, "a second up must reuse the running cluster");
    assert_eq!(first.kubeconfig, again.kubeconfig);

    let status = aim_devcluster::status(&opts.cache, "lifecycle")
        .await
        .unwrap()
        .unwrap();
    assert!(status.apiserver_ready && status.running);
    let pids: Vec<u32> = status.components.iter().map(|c| c.pid).collect();
    assert_eq!(
        pids.len(),
        5,
        "etcd, apiserver, controller-manager, scheduler, kwok: {status:?}"
    );

    assert!(aim_devcluster::down(&opts.cache, "lifecycle").unwrap());
    for port in opts.port_base..opts.port_base + 6 {
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still taken after down"
        );
    }
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists() || zombie(pid),
            "process {pid} survived down"
        );
    }
    assert!(
        !aim_devcluster::down(&opts.cache, "lifecycle").unwrap(),
        "a second down has nothing to stop"
    );
    assert!(
        aim_devcluster::status(&opts.cache, "lifecycle")
            .await
            .unwrap()
            .is_none()
    );
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[tokio::test]
async fn a_busy_port_is_named_in_the_error() {
    let opts = options("busyport", 29440);
    let _squatter = TcpListener::bind(("127.0.0.1", 29441)).unwrap();
    let err = aim_devcluster::up(&opts).await.unwrap_err();
    match &err {
        Error::PortInUse {
            port, component, ..
        } => {
            assert_eq!(*port, 29441);
            assert_eq!(*component, "etcd (client)");
        }
        other => panic!("expected PortInUse, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("29441") && text.contains("--port-base"),
        "{text}"
    );
}

#[test]
fn a_missing_or_broken_go_toolchain_is_explained() {
    let missing = aim_devcluster::check_go_at("/nonexistent/bin/go").unwrap_err();
    assert!(matches!(missing, Error::GoMissing), "{missing}");
    assert!(missing.to_string().contains("install Go"), "{missing}");

    let broken = aim_devcluster::check_go_at("false").unwrap_err();
    assert!(matches!(broken, Error::GoBroken(_)), "{broken}");
    assert!(broken.to_string().contains("Reinstall Go"), "{broken}");
}

#[test]
fn a_failed_build_says_what_failed_and_keeps_nothing_half_built() {
    // An empty cache and a module proxy that refuses everything: the first
    // component cannot be fetched.
    let root = std::env::temp_dir().join(format!("aim-failed-build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let cache = CacheDirs::at(&root);
    let modcache = root.join("gomod");
    let err = aim_devcluster::build_control_plane_with_env(
        &cache,
        &[
            ("GOPROXY", "off"),
            ("GOMODCACHE", modcache.to_str().unwrap()),
            ("GOFLAGS", "-mod=mod"),
        ],
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::BuildFailed { .. }), "{text}");
    assert!(
        text.contains("etcd"),
        "the message names the component: {text}"
    );
    assert!(
        text.contains("Go module proxy") || text.contains("GOPROXY"),
        "and the likely fix: {text}"
    );
    assert!(
        !cache.binary("etcd").exists(),
        "no half-built binary is left behind"
    );
    // The module cache is read-only by design; make it removable.
    let _ = std::process::Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(&root)
        .status();
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn with_keda_but_keda_not_built_names_the_build_command() {
    // An empty cache: nothing built. Asking for KEDA without building must
    // say how to build it, before any process starts or port is taken.
    let root = std::env::temp_dir().join(format!("aim-no-keda-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut opts = ClusterOptions::new("nokeda", CacheDirs::at(&root)).with_keda();
    opts.skip_build = true;
    // Clear of the other lifecycle clusters (28440, 29440) and the
    // hashed range, below the ephemeral ports.
    opts.port_base = 27440;
    let err = aim_devcluster::up(&opts).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::KedaMissing { .. }), "{text}");
    assert!(
        text.contains("keda-operator") && text.contains("dev/control-plane/build.sh keda"),
        "{text}"
    );
    assert!(
        aim_devcluster::status(&opts.cache, "nokeda")
            .await
            .unwrap()
            .is_none(),
        "nothing was started"
    );

    // Without KEDA the same cache fails on what it lacks first, etcd: the
    // KEDA error above is about KEDA, not a generic missing binary.
    opts.with_keda = false;
    let err = aim_devcluster::up(&opts).await.unwrap_err();
    assert!(!matches!(err, Error::KedaMissing { .. }), "{err}");
    assert!(err.to_string().contains("etcd"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn with_prometheus_but_not_built_names_the_build_commands() {
    // An empty cache, as above: Prometheus asked for without its binaries
    // says how to build them before anything starts.
    let root = std::env::temp_dir().join(format!("aim-no-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut opts = ClusterOptions::new("noprom", CacheDirs::at(&root))
        .with_prometheus(aim_devcluster::PrometheusOptions::new("/nonexistent/aim"));
    opts.skip_build = true;
    opts.port_base = 27440;
    let err = aim_devcluster::up(&opts).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::NotBuilt { .. }), "{text}");
    for expected in [
        "prometheus-operator",
        "promtool",
        "dev/control-plane/build.sh prometheus",
        "build.sh prometheus-operator",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
    assert!(
        aim_devcluster::status(&opts.cache, "noprom")
            .await
            .unwrap()
            .is_none(),
        "nothing was started"
    );
    let _ = std::fs::remove_dir_all(&root);
}
