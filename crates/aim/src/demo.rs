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
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let cache = CacheDirs::discover()?;
    let mut opts = ClusterOptions::new("dev", cache.clone());
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

    println!(
        "==> operator (in this process; admin on http://{})",
        args.admin_address
    );
    let operator_args = aim_operator::OperatorArgs {
        admin_address: args.admin_address,
        namespace: "aim-system".into(),
        no_leader_election: false,
        identity: Some(format!("aim-demo-{}", std::process::id())),
        scaler_address: "aim-scaler.aim-system.svc:4318".into(),
    };
    let operator = tokio::spawn(aim_operator::run_with(
        client.clone(),
        operator_args,
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    ));

    println!(
        "==> namespace {DEMO_NAMESPACE}, the model and its template, then examples/seeds/aim-quick-start.yaml"
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
        include_str!("../../../examples/seeds/aim-quick-start.yaml"),
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
    loop {
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
