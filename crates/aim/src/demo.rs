//! `aim dev demo`: the local cluster, the operator, and the seed's
//! `qwen-chat` service progressing from Pending to Starting.

use std::collections::BTreeMap;
use std::time::Duration;

use aim_api::AIMService;
use aim_devcluster::{CacheDirs, ClusterOptions};
use anyhow::Context;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::pinned_kind;

const DEMO_NAMESPACE: &str = "ml-team";
const MANAGER: &str = "aim-demo";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Stop after the service reaches this status instead of running until Ctrl-C.
    #[arg(long)]
    exit_at: Option<String>,
    /// Admin address of the in-process operator.
    #[arg(long, default_value = "127.0.0.1:18081")]
    admin_address: std::net::SocketAddr,
    /// Requests kept in flight by the load step once the service runs
    /// (the default metric wants one replica per running request).
    #[arg(long, default_value_t = 3)]
    concurrency: u32,
    /// Which local cluster (`aim dev cluster up --name`).
    #[arg(long, default_value = "dev")]
    cluster: String,
    /// How long the load step lasts (e.g. 60s, 2m).
    #[arg(long, default_value = "60s")]
    load_for: String,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let cache = CacheDirs::discover()?;
    // KEDA, KServe and the OpenTelemetry operator: the whole autoscaling loop.
    let mut opts = ClusterOptions::new(&args.cluster, cache.clone())
        .with_keda()
        .with_kserve();
    opts.extra_manifests = vec![("aim CRDs".to_string(), aim_api::all_crds_yaml())];
    println!("==> local cluster");
    let info = aim_devcluster::up(&opts)
        .await
        .context("bringing the cluster up")?;
    println!(
        "    {} (KUBECONFIG={})",
        info.server,
        info.kubeconfig.display()
    );
    let client = info.client().await?;

    // The scaler where KServe's sidecars and ScaledObjects point on this
    // machine (see `aim dev cluster up --with-kserve`).
    // KEDA is told a port of this run's own: it keeps one gRPC connection
    // per scaler address, and one to a scaler that stopped (a previous
    // run's) sits in reconnect backoff; a ScaledObject built meanwhile gets
    // an HPA without its metric (on CPU, by the HPA API's default), and
    // KEDA does not rebuild it.
    let keda_address = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut scaler_args = aim_scaler::ScalerArgs::defaults();
    scaler_args.listen = vec![info.scaler_address, keda_address];
    scaler_args.admin_listen = "127.0.0.1:0".parse().expect("an address");
    // The average follows a load step within seconds (upstream 120 s).
    scaler_args.default_window = Duration::from_secs(10);
    let scaler = aim_scaler::start(&scaler_args)
        .await
        .with_context(|| format!("starting the scaler at {}", info.scaler_address))?;
    println!(
        "==> aim scaler: OTLP from the sidecars on {}, KEDA's queries on {keda_address}",
        info.scaler_address
    );
    println!("==> pod runner: an aim sim per inference pod, its sidecar into the scaler");
    let runner = tokio::spawn(aim_pods::runner::run(
        client.clone(),
        aim_pods::runner::RunnerConfig {
            cold_start: Duration::from_secs(5),
            aim_binary: std::env::current_exe().context("locating the aim binary")?,
            sim_args: Vec::new(),
            exporter_override: None,
            namespace: Some(DEMO_NAMESPACE.into()),
        },
    ));

    println!(
        "==> operator (in this process; admin on http://{})",
        args.admin_address
    );
    let operator_args = aim_operator::OperatorArgs {
        admin_address: args.admin_address,
        namespace: "aim-system".into(),
        no_leader_election: false,
        identity: Some(format!("aim-demo-{}", std::process::id())),
        scaler_address: keda_address.to_string(),
    };
    let operator = tokio::spawn(aim_operator::run_with(
        client.clone(),
        operator_args,
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    ));

    println!(
        "==> namespace {DEMO_NAMESPACE}, the model and its template, then examples/seeds/aim-basic-autoscaling.yaml"
    );
    apply_all(
        &client,
        None,
        &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {DEMO_NAMESPACE}}}\n"),
    )
    .await?;
    apply_all(
        &client,
        Some(DEMO_NAMESPACE),
        include_str!("../../../examples/demo/qwen-model-and-template.yaml"),
    )
    .await?;
    freeze_template_as_discovered(&client).await?;
    apply_all(
        &client,
        Some(DEMO_NAMESPACE),
        include_str!("../../../examples/seeds/aim-basic-autoscaling.yaml"),
    )
    .await?;

    println!();
    println!("kubectl -n {DEMO_NAMESPACE} get aimservice");
    println!(
        "{:<12} {:<10} {:<16} {:<20} {:<8}",
        "NAME", "STATUS", "MODEL", "TEMPLATE", "REPLICAS"
    );
    let api: Api<AIMService> = Api::namespaced(client.clone(), DEMO_NAMESPACE);
    let mut last = String::new();
    let mut load: Option<tokio::task::JoinHandle<Result<aim_load::Report, aim_load::LoadError>>> =
        None;
    let mut peak = 1;
    loop {
        if runner.is_finished() {
            anyhow::bail!("the pod runner stopped: {:?}", runner.await);
        }
        if operator.is_finished() {
            return match operator.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.into()),
            };
        }
        if let Some(svc) = api.get_opt("qwen-chat").await? {
            let st = svc.status.clone().unwrap_or_default();
            let phase = st.status.map(|p| format!("{p:?}")).unwrap_or_default();
            let row = format!(
                "{:<12} {:<10} {:<16} {:<20} {:<8}",
                svc.name_any(),
                phase,
                st.resolved_model.and_then(|r| r.name).unwrap_or_default(),
                st.resolved_template
                    .and_then(|r| r.name)
                    .unwrap_or_default(),
                st.runtime.and_then(|r| r.replicas).unwrap_or_default()
            );
            if row != last {
                println!("{row}");
                let reasons: BTreeMap<String, String> = st
                    .conditions
                    .iter()
                    .filter(|c| c.status != "True")
                    .map(|c| (c.type_.clone(), format!("{}: {}", c.reason, c.message)))
                    .collect();
                for (ty, why) in reasons {
                    println!("    {ty} {why}");
                }
                last = row;
            }
            let desired = svc
                .status
                .as_ref()
                .and_then(|s| s.runtime.as_ref())
                .and_then(|r| r.desired_replicas)
                .unwrap_or(0);
            peak = peak.max(desired);
            let isvc = if load.is_none() && phase == "Running" {
                inference_service(&client).await?
            } else {
                String::new()
            };
            if load.is_none() && !isvc.is_empty() {
                println!();
                println!(
                    "==> load step: aim load --service {isvc}-predictor -n {DEMO_NAMESPACE} --concurrency {} --duration {} (figures on stderr)",
                    args.concurrency, args.load_for
                );
                load = Some(start_load(&client, &isvc, &args)?);
            }
            if let Some(task) = load.as_ref()
                && task.is_finished()
                && peak > 1
                && desired == 1
            {
                println!();
                println!("Scaled 1 → {peak} under the load and back to 1 after it. Events:");
                println!(
                    "  kubectl -n {DEMO_NAMESPACE} get events --field-selector reason=ScaledUp"
                );
                println!(
                    "  kubectl -n {DEMO_NAMESPACE} get events --field-selector reason=ScaledDown"
                );
                runner.abort();
                scaler.shutdown().await;
                return Ok(());
            }
            if args.exit_at.as_deref().is_some_and(|want| want == phase) {
                println!();
                println!("The InferenceService the operator wrote:");
                println!(
                    "  kubectl -n {DEMO_NAMESPACE} get inferenceservice -l aim.eai.amd.com/service.name=qwen-chat -o yaml"
                );
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The name of qwen-chat's InferenceService (the operator derives it).
async fn inference_service(client: &kube::Client) -> anyhow::Result<String> {
    let gvk = GroupVersionKind::gvk("serving.kserve.io", "v1beta1", "InferenceService");
    let (resource, _) = pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), DEMO_NAMESPACE, &resource);
    let list = api
        .list(&kube::api::ListParams::default().labels("aim.eai.amd.com/service.name=qwen-chat"))
        .await?;
    Ok(list.items.first().map(|i| i.name_any()).unwrap_or_default())
}

/// The load step: a closed loop against the predictor's ready pods.
fn start_load(
    client: &kube::Client,
    isvc: &str,
    args: &DemoArgs,
) -> anyhow::Result<tokio::task::JoinHandle<Result<aim_load::Report, aim_load::LoadError>>> {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        load: aim_load::LoadArgs,
    }
    let predictor = format!("{isvc}-predictor");
    let concurrency = args.concurrency.to_string();
    let wrapper = Wrapper::try_parse_from([
        "aim-load",
        "--service",
        &predictor,
        "-n",
        DEMO_NAMESPACE,
        "--concurrency",
        &concurrency,
        "--duration",
        &args.load_for,
    ])
    .context("--concurrency or --load-for")?;
    let plan = wrapper.load.plan()?;
    let client = client.clone();
    Ok(tokio::spawn(async move {
        aim_load::execute(&plan, Some(client), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    }))
}

/// The profile discovery would publish for the demo template.
async fn freeze_template_as_discovered(client: &kube::Client) -> anyhow::Result<()> {
    let api: Api<aim_api::AIMServiceTemplate> = Api::namespaced(client.clone(), DEMO_NAMESPACE);
    let status = serde_json::json!({
        "apiVersion": aim_api::API_VERSION, "kind": "AIMServiceTemplate",
        "status": {
            "status": "Ready",
            "profile": {"metadata": {"engine": "vllm", "gpu": "MI300X", "gpuCount": 1, "metric": "latency", "precision": "fp8", "type": "optimized"}},
            "resolvedHardware": {"gpu": {"requests": 1, "model": "MI300X"}},
            "hardwareSummary": "1 x MI300X",
        }
    });
    api.patch_status(
        "qwen3-32b-latency",
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&status),
    )
    .await
    .context("writing the demo template's discovered profile")?;
    Ok(())
}

async fn apply_all(
    client: &kube::Client,
    namespace: Option<&str>,
    yaml: &str,
) -> anyhow::Result<()> {
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let mut obj: DynamicObject = serde_yaml::from_value(value)?;
        let types = obj
            .types
            .clone()
            .context("a manifest without apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let (resource, caps) = pinned_kind(client, &gvk).await?;
        let api: Api<DynamicObject> = match (caps.scope, namespace) {
            (kube::discovery::Scope::Namespaced, Some(ns)) => {
                obj.metadata.namespace = Some(ns.to_string());
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &obj.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .with_context(|| format!("applying {} {}", types.kind, obj.name_any()))?;
    }
    Ok(())
}
