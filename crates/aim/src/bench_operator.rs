//! `aim dev bench-operator`: how long the operator takes to bring N services
//! (each with its own model and template) to an InferenceService and status
//! Starting on the local control plane, and the operator's peak RSS.
//!
//! The operator runs as a child process (`aim operator`) so its memory is
//! its own. The baseline is the time the same client needs to write the
//! inputs themselves, so the ratio says what reconciling costs on top of
//! the apiserver's own speed on this machine, whatever its load.

use std::time::{Duration, Instant};

use aim_api::AIMService;
use aim_devcluster::{CacheDirs, ClusterOptions};
use anyhow::Context;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

#[derive(clap::Args)]
pub struct BenchOperatorArgs {
    /// How many services (each with a model and a template).
    #[arg(long, default_value_t = 500)]
    services: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

pub fn run(args: BenchOperatorArgs) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(bench(args))
}

async fn bench(args: BenchOperatorArgs) -> anyhow::Result<()> {
    let cache = CacheDirs::discover()?;
    let mut opts = ClusterOptions::new("bench", cache);
    opts.extra_manifests = vec![("aim CRDs".into(), aim_api::all_crds_yaml())];
    let info = aim_devcluster::up(&opts).await?;
    let client = info.client().await?;
    let ns = format!("bench-{}", std::process::id());
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let n = args.services;
    let pp = PatchParams::apply("aim-bench").force();

    // Inputs first, without an operator: this is also the baseline.
    let started = Instant::now();
    let models: Api<aim_api::AIMModel> = Api::namespaced(client.clone(), &ns);
    let templates: Api<aim_api::AIMServiceTemplate> = Api::namespaced(client.clone(), &ns);
    for i in 0..n {
        let model = serde_json::json!({
            "apiVersion": aim_api::API_VERSION, "kind": "AIMModel", "metadata": {"name": format!("m{i}")},
            "spec": {"image": format!("example.invalid/model-{i}:1"), "discovery": {"createServiceTemplates": false},
                     "imageMetadata": {"model": {"canonicalName": format!("org/model-{i}")}}}
        });
        models
            .patch(&format!("m{i}"), &pp, &Patch::Apply(&model))
            .await?;
        let template = serde_json::json!({
            "apiVersion": aim_api::API_VERSION, "kind": "AIMServiceTemplate",
            "metadata": {"name": format!("t{i}"), "annotations": {"aim.eai.amd.com/reconciliation-paused": "true"}},
            "spec": {"modelName": format!("m{i}"), "metric": "latency", "precision": "fp8",
                     "hardware": {"gpu": {"requests": 1, "model": "MI300X"}}}
        });
        templates
            .patch(&format!("t{i}"), &pp, &Patch::Apply(&template))
            .await?;
        let status = serde_json::json!({
            "apiVersion": aim_api::API_VERSION, "kind": "AIMServiceTemplate",
            "status": {"status": "Ready", "profile": {"metadata": {"gpu": "MI300X", "gpuCount": 1, "metric": "latency", "precision": "fp8", "type": "optimized"}},
                       "resolvedHardware": {"gpu": {"requests": 1, "model": "MI300X"}}}
        });
        templates
            .patch_status(&format!("t{i}"), &pp, &Patch::Apply(&status))
            .await?;
    }
    let inputs_written = started.elapsed();
    // Baseline: writing the N services is N more applies of the same size.
    let per_object = inputs_written / (3 * n as u32);
    let baseline = per_object * n as u32;
    println!(
        "inputs: {n} models + {n} templates (+status) written in {:.1} s",
        inputs_written.as_secs_f64()
    );

    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .args([
            "operator",
            "--admin-address",
            "127.0.0.1:0",
            "--no-leader-election",
        ])
        .env("KUBECONFIG", &info.kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting `aim operator`")?;
    let pid = child.id();

    let services: Api<AIMService> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    for i in 0..n {
        let svc = serde_json::json!({
            "apiVersion": aim_api::API_VERSION, "kind": "AIMService", "metadata": {"name": format!("s{i}")},
            "spec": {"model": {"name": format!("m{i}")}, "template": {"name": format!("t{i}")}, "replicas": 1}
        });
        services
            .patch(&format!("s{i}"), &pp, &Patch::Apply(&svc))
            .await?;
    }
    let deadline = started + Duration::from_secs(args.timeout);
    let mut peak_rss_kib = 0;
    let done = loop {
        peak_rss_kib = peak_rss_kib.max(vm_hwm_kib(pid).unwrap_or(0));
        let list = services.list(&ListParams::default()).await?;
        let starting = list
            .items
            .iter()
            .filter(|s| {
                s.status.as_ref().and_then(|st| st.status)
                    == Some(aim_api::service::ServicePhase::Starting)
            })
            .count();
        if starting == n {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!(
                "only {starting} of {n} services reached Starting within {} s",
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    peak_rss_kib = peak_rss_kib.max(vm_hwm_kib(pid).unwrap_or(0));
    // Every Starting service has its InferenceService: check it, do not assume.
    let isvcs = Api::<kube::api::DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &aim_operator::kube_io::resource_of("serving.kserve.io/v1beta1", "InferenceService")
            .expect("known")
            .0,
    )
    .list(&ListParams::default())
    .await?
    .items
    .len();
    let _ = child.kill();
    let _ = child.wait();
    let _ = namespaces.delete(&ns, &Default::default()).await;

    println!(
        "services reconciled to Starting: {n} in {:.1} s ({:.1} services/s); InferenceServices created: {isvcs}",
        done.as_secs_f64(),
        n as f64 / done.as_secs_f64()
    );
    println!(
        "baseline (the same client writing {n} objects): {:.1} s; ratio operator/baseline: {:.2}",
        baseline.as_secs_f64(),
        done.as_secs_f64() / baseline.as_secs_f64()
    );
    println!("operator peak RSS: {:.1} MiB", peak_rss_kib as f64 / 1024.0);
    Ok(())
}

/// Peak resident set size of a process, from /proc.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
