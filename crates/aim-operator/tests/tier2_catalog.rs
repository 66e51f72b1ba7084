//! Tier 1/2: the model catalog against a real OCI registry on loopback
//! (`common::registry`: one anonymous instance, one with htpasswd auth, one
//! with token auth and the test's own token server).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aim_api::{AIMClusterModel, AIMClusterServiceTemplate, AIMModel, AIMServiceTemplate};
use aim_testkit::{apply_yaml, await_object, client, namespace};
use common::registry::{
    PASSWORD, USER, bearer_token, free_port, push_image, push_manifest, put_manifest, registries,
    token_registry,
};
use common::token_server::{SERVICE, TokenRequest};
use common::{WAIT, operator};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};

const DEPLOYMENTS: &str = "[{'gpuModel': 'MI300X', 'gpuCount': 1, 'precision': 'fp8', 'metric': 'latency'}, {'gpuModel': 'MI355X', 'gpuCount': 2, 'precision': 'fp4', 'metric': 'throughput'}]";

fn aim_labels(name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("com.amd.aim.model.canonicalName", name.to_string()),
        ("com.amd.aim.model.tags", "chat, text".to_string()),
        (
            "com.amd.aim.model.recommendedDeployments",
            DEPLOYMENTS.to_string(),
        ),
        ("org.opencontainers.image.version", "0.8.5".to_string()),
    ]
}

fn borrow<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn model_condition(m: &AIMModel, ty: &str) -> Option<(String, String, String)> {
    m.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn has_condition(m: &AIMModel, ty: &str, status: &str, reason: &str) -> bool {
    model_condition(m, ty).is_some_and(|(s, r, _)| s == status && r == reason)
}

fn canonical(m: &AIMModel) -> Option<String> {
    m.status
        .as_ref()?
        .image_metadata
        .as_ref()?
        .model
        .as_ref()?
        .canonical_name
        .clone()
}

async fn setup(prefix: &str) -> (kube::Client, String, Api<AIMModel>) {
    operator();
    registries();
    let client = client().await;
    let ns = namespace(&client, prefix).await;
    let api = Api::namespaced(client.clone(), &ns);
    (client, ns, api)
}

async fn create_model(client: &kube::Client, ns: &str, name: &str, image: &str, extra: &str) {
    apply_yaml(
        client,
        ns,
        &format!(
            "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMModel\nmetadata: {{name: {name}}}\nspec:\n  image: {image}\n{extra}"
        ),
    )
    .await
    .unwrap();
}

async fn await_model(
    api: &Api<AIMModel>,
    name: &str,
    what: &str,
    f: impl Fn(&AIMModel) -> bool,
) -> AIMModel {
    await_object(api, name, what, WAIT, f).await
}

#[tokio::test]
async fn anonymous_image_labels_become_metadata_and_owned_templates() {
    let (client, ns, api) = setup("cat-anon").await;
    let reg = &registries().anonymous;
    let repo = format!("aim/{ns}-llama");
    let labels = aim_labels("meta-llama/Llama-3.1-8B");
    push_image(reg, &repo, "1.0", &borrow(&labels), false).await;
    let started = Instant::now();
    create_model(&client, &ns, "llama", &format!("{reg}/{repo}:1.0"), "").await;
    let m = await_model(&api, "llama", "metadata from the registry", |m| {
        canonical(m).is_some()
    })
    .await;
    eprintln!(
        "inspection latency (create → status.imageMetadata, local registry): {:?}",
        started.elapsed()
    );
    let meta = m.status.as_ref().unwrap().image_metadata.clone().unwrap();
    let model = meta.model.unwrap();
    assert_eq!(
        model.canonical_name.as_deref(),
        Some("meta-llama/Llama-3.1-8B")
    );
    assert_eq!(model.tags, vec!["chat", "text"]);
    assert_eq!(model.recommended_deployments.len(), 2);
    assert_eq!(meta.oci.unwrap().version.as_deref(), Some("0.8.5"));
    assert!(has_condition(
        &m,
        "ImageMetadataReady",
        "True",
        "ImageMetadataFound"
    ));

    // One template per recommended deployment, owned by the model.
    let templates: Api<AIMServiceTemplate> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + WAIT;
    let list = loop {
        let list = templates.list(&ListParams::default()).await.unwrap().items;
        if list.len() == 2 {
            break list;
        }
        assert!(Instant::now() < deadline, "templates: {}", list.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let uid = m.metadata.uid.clone().unwrap();
    let mut gpus: Vec<_> = list
        .iter()
        .map(|t| {
            let owners = t.metadata.owner_references.clone().unwrap_or_default();
            assert!(owners.iter().any(|o| o.uid == uid), "owned by the model");
            assert_eq!(t.spec.model_name, "llama");
            let gpu = t.spec.hardware.as_ref().unwrap().gpu.as_ref().unwrap();
            (gpu.model.clone().unwrap(), gpu.requests.unwrap())
        })
        .collect();
    gpus.sort();
    assert_eq!(
        gpus,
        vec![("MI300X".to_string(), 1), ("MI355X".to_string(), 2)]
    );

    // Deleting the model garbage-collects its templates.
    api.delete("llama", &DeleteParams::foreground())
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let n = templates
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        if n == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} templates outlived the model"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn image_index_resolves_to_linux_amd64() {
    let (client, ns, api) = setup("cat-index").await;
    let reg = &registries().anonymous;
    let repo = format!("aim/{ns}-multi");
    let label = |name: &str| {
        BTreeMap::from([(
            "org.amd.silogen.model.canonicalName".to_string(),
            name.to_string(),
        )])
    };
    let (arm, arm_size) =
        push_manifest(reg, &repo, "arm", &label("arm/model"), "arm64", false).await;
    let (amd, amd_size) =
        push_manifest(reg, &repo, "amd", &label("amd/model"), "amd64", false).await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm, "size": arm_size, "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd, "size": amd_size, "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }))
    .unwrap();
    put_manifest(
        reg,
        &repo,
        "2.0",
        "application/vnd.oci.image.index.v1+json",
        &index,
        false,
    )
    .await;
    create_model(
        &client,
        &ns,
        "multi",
        &format!("{reg}/{repo}:2.0"),
        "  discovery: {createServiceTemplates: false}\n",
    )
    .await;
    let m = await_model(&api, "multi", "metadata", |m| canonical(m).is_some()).await;
    assert_eq!(canonical(&m).as_deref(), Some("amd/model"));
}

#[tokio::test]
async fn auth_failures_are_reported_and_recover_when_the_secret_is_fixed() {
    let (client, ns, api) = setup("cat-auth").await;
    let reg = &registries().auth;
    let repo = format!("aim/{ns}-private");
    let labels = aim_labels("private/model");
    push_image(reg, &repo, "1.0", &borrow(&labels), true).await;
    let image = format!("{reg}/{repo}:1.0");

    // No credentials: the registry's 401 is an auth failure (fix over Go).
    create_model(
        &client,
        &ns,
        "anon",
        &image,
        "  discovery: {createServiceTemplates: false}\n",
    )
    .await;
    let m = await_model(&api, "anon", "AuthValid=False", |m| {
        has_condition(m, "AuthValid", "False", "AuthError")
    })
    .await;
    let (_, reason, message) = model_condition(&m, "ImageMetadataReady").unwrap();
    assert_eq!(reason, "RegistryAuthFailed");
    assert!(message.contains("spec.imagePullSecrets"), "{message}");
    assert_eq!(
        m.status.as_ref().unwrap().status,
        Some(aim_api::status::ResourcePhase::Failed)
    );

    // A named secret that does not exist.
    create_model(
        &client,
        &ns,
        "private",
        &image,
        "  discovery: {createServiceTemplates: false}\n  imagePullSecrets: [{name: creds}]\n",
    )
    .await;
    let m = await_model(&api, "private", "SecretNotFound", |m| {
        has_condition(m, "ImageMetadataReady", "False", "SecretNotFound")
    })
    .await;
    assert!(has_condition(
        &m,
        "ConfigValid",
        "False",
        "ReferenceNotFound"
    ));

    // The secret appears with a wrong password: auth failure.
    let secret = |password: &str| {
        let config = json!({"auths": {reg.clone(): {"username": USER, "password": password}}});
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: creds}}\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{}'\n",
            config
        )
    };
    apply_yaml(&client, &ns, &secret("wrong")).await.unwrap();
    await_model(&api, "private", "RegistryAuthFailed", |m| {
        has_condition(m, "ImageMetadataReady", "False", "RegistryAuthFailed")
            && has_condition(m, "AuthValid", "False", "AuthError")
    })
    .await;

    // Fixed: the model recovers by itself.
    apply_yaml(&client, &ns, &secret(PASSWORD)).await.unwrap();
    // AuthValid flips back (or, if a reconcile raced the failure's status
    // write, is simply absent): it must no longer say False.
    let m = await_model(&api, "private", "metadata after the fix", |m| {
        canonical(m).is_some()
            && model_condition(m, "AuthValid").is_none_or(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(canonical(&m).as_deref(), Some("private/model"));
    assert!(has_condition(
        &m,
        "ImageMetadataReady",
        "True",
        "ImageMetadataFound"
    ));
}

#[tokio::test]
async fn missing_image_recovers_when_pushed() {
    let (client, ns, api) = setup("cat-missing").await;
    let reg = &registries().anonymous;
    let repo = format!("aim/{ns}-later");
    create_model(
        &client,
        &ns,
        "later",
        &format!("{reg}/{repo}:3.0"),
        "  discovery: {createServiceTemplates: false}\n",
    )
    .await;
    let m = await_model(&api, "later", "ImageNotFound", |m| {
        has_condition(m, "ImageMetadataReady", "False", "ImageNotFound")
    })
    .await;
    let message = model_condition(&m, "ImageMetadataReady").unwrap().2;
    assert!(
        message.contains(&repo) && message.contains("spec.image"),
        "{message}"
    );
    let labels = aim_labels("later/model");
    push_image(reg, &repo, "3.0", &borrow(&labels), false).await;
    await_model(&api, "later", "metadata after the push", |m| {
        canonical(m).as_deref() == Some("later/model")
            && has_condition(m, "ConfigValid", "True", "ConfigurationValid")
    })
    .await;
}

#[tokio::test]
async fn unreachable_registry_is_an_infrastructure_error() {
    let (client, ns, api) = setup("cat-down").await;
    let port = free_port();
    create_model(
        &client,
        &ns,
        "down",
        &format!("127.0.0.1:{port}/aim/nothing:1"),
        "  discovery: {createServiceTemplates: false}\n",
    )
    .await;
    let m = await_model(&api, "down", "RegistryUnreachable", |m| {
        has_condition(m, "ImageMetadataReady", "False", "RegistryUnreachable")
    })
    .await;
    assert!(has_condition(
        &m,
        "DependenciesReachable",
        "False",
        "InfrastructureError"
    ));
    assert_eq!(
        m.status.as_ref().unwrap().status,
        Some(aim_api::status::ResourcePhase::Degraded)
    );
}

#[tokio::test]
async fn bad_label_json_is_reported_and_recovers_when_the_image_is_fixed() {
    let (client, ns, api) = setup("cat-badjson").await;
    let reg = &registries().anonymous;
    let repo = format!("aim/{ns}-bad");
    push_image(
        reg,
        &repo,
        "1.0",
        &[(
            "com.amd.aim.model.recommendedDeployments",
            "[{gpuModel: MI300X",
        )],
        false,
    )
    .await;
    create_model(&client, &ns, "bad", &format!("{reg}/{repo}:1.0"), "").await;
    let m = await_model(&api, "bad", "InvalidImageLabels", |m| {
        has_condition(m, "ImageMetadataReady", "False", "InvalidImageLabels")
    })
    .await;
    let message = model_condition(&m, "ImageMetadataReady").unwrap().2;
    assert!(
        message.contains("com.amd.aim.model.recommendedDeployments"),
        "{message}"
    );
    let labels = aim_labels("fixed/model");
    push_image(reg, &repo, "1.0", &borrow(&labels), false).await;
    await_model(&api, "bad", "metadata after the fix", |m| {
        canonical(m).as_deref() == Some("fixed/model")
    })
    .await;
}

#[tokio::test]
async fn cluster_model_creates_cluster_templates() {
    let (client, _ns, _) = setup("cat-cluster").await;
    let reg = &registries().anonymous;
    let name = format!("cat-cluster-{}", std::process::id());
    let repo = format!("aim/{name}");
    let labels = aim_labels("cluster/model");
    push_image(reg, &repo, "1.0", &borrow(&labels), false).await;
    let models: Api<AIMClusterModel> = Api::all(client.clone());
    let obj: Value = json!({
        "apiVersion": "aim.eai.amd.com/v1alpha1",
        "kind": "AIMClusterModel",
        "metadata": {"name": name},
        "spec": {"image": format!("{reg}/{repo}:1.0")},
    });
    models
        .patch(
            &name,
            &kube::api::PatchParams::apply("test").force(),
            &kube::api::Patch::Apply(obj),
        )
        .await
        .unwrap();
    let templates: Api<AIMClusterServiceTemplate> = Api::all(client.clone());
    let by_model = ListParams::default().fields(&format!("spec.modelName={name}"));
    let deadline = Instant::now() + WAIT;
    loop {
        let n = templates.list(&by_model).await.unwrap().items.len();
        if n == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "cluster templates: {n}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Templates are applied before the status write: wait for that too.
    let cluster_canonical = |m: &AIMClusterModel| {
        m.status
            .as_ref()
            .and_then(|s| s.image_metadata.as_ref())
            .and_then(|i| i.model.as_ref())
            .and_then(|x| x.canonical_name.clone())
    };
    let m = await_object(&models, &name, "cluster model metadata", WAIT, |m| {
        cluster_canonical(m).is_some()
    })
    .await;
    assert_eq!(cluster_canonical(&m).as_deref(), Some("cluster/model"));
    models
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}

fn template_condition(t: &AIMServiceTemplate, ty: &str) -> Option<(String, String)> {
    t.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// A template waiting for a GPU no node has becomes available when a node
/// with that GPU joins, and unavailable again when it leaves.
#[tokio::test]
async fn gpu_availability_follows_nodes() {
    let (client, ns, _) = setup("cat-gpu").await;
    apply_yaml(
        &client,
        &ns,
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMModel\nmetadata: {name: m}\nspec:\n  image: example.com/aim/m:1\n  discovery: {createServiceTemplates: false}\n  imageMetadata:\n    model: {canonicalName: org/m}\n",
    )
    .await
    .unwrap();
    // MI210 (device id 740f): no fake node of the shared cluster has it.
    apply_yaml(
        &client,
        &ns,
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMServiceTemplate\nmetadata: {name: t}\nspec:\n  modelName: m\n  hardware: {gpu: {model: MI210, requests: 1}}\n  modelSources:\n  - {modelId: org/m, sourceUri: 'hf://org/m'}\n",
    )
    .await
    .unwrap();
    let templates: Api<AIMServiceTemplate> = Api::namespaced(client.clone(), &ns);
    await_object(&templates, "t", "GPUNotAvailable", WAIT, |t| {
        template_condition(t, "GPUReady")
            == Some(("False".to_string(), "GPUNotAvailable".to_string()))
    })
    .await;

    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let node = format!("cat-mi210-{}", std::process::id());
    let obj = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node, "labels": {"amd.com/gpu.device-id": "740f"}},
        // Nothing else of the shared cluster may land on it.
        "spec": {"unschedulable": true, "taints": [{"key": "aim.test/catalog", "effect": "NoExecute"}]},
    });
    nodes
        .patch(
            &node,
            &kube::api::PatchParams::apply("test").force(),
            &kube::api::Patch::Apply(obj),
        )
        .await
        .unwrap();
    let t = await_object(
        &templates,
        "t",
        "GPUAvailable after the node joined",
        WAIT,
        |t| {
            template_condition(t, "GPUReady")
                == Some(("True".to_string(), "GPUAvailable".to_string()))
        },
    )
    .await;
    assert_ne!(
        t.status.as_ref().unwrap().status,
        Some(aim_api::status::ResourcePhase::NotAvailable)
    );

    nodes.delete(&node, &DeleteParams::default()).await.unwrap();
    await_object(
        &templates,
        "t",
        "GPUNotAvailable after the node left",
        WAIT,
        |t| {
            template_condition(t, "GPUReady")
                == Some(("False".to_string(), "GPUNotAvailable".to_string()))
        },
    )
    .await;
}

/// A dockerconfigjson pull secret with `user`/`password` for `registry`.
fn pull_secret(name: &str, registry: &str, password: &str) -> String {
    let config = json!({"auths": {registry: {"username": USER, "password": password}}});
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{config}'\n"
    )
}

/// The token server's requests that name `repo` in a scope.
fn token_requests_for(repo: &str) -> Vec<TokenRequest> {
    let prefix = format!("repository:{repo}:");
    token_registry()
        .server
        .requests()
        .into_iter()
        .filter(|r| r.scopes.iter().any(|s| s.starts_with(&prefix)))
        .collect()
}

/// Bearer-token auth end to end: the registry (distribution's `auth:
/// token`) challenges, the operator takes the pull secret's credentials to
/// the token server, and reads the labels with the JWT it gets.
#[tokio::test]
async fn token_auth_reads_labels_through_the_bearer_flow() {
    let (client, ns, api) = setup("cat-token").await;
    let reg = &token_registry().address;
    let repo = format!("aim/{ns}-bearer");
    let labels = aim_labels("bearer/model");
    push_image(reg, &repo, "1.0", &borrow(&labels), true).await;
    apply_yaml(&client, &ns, &pull_secret("creds", reg, PASSWORD))
        .await
        .unwrap();
    create_model(
        &client,
        &ns,
        "bearer",
        &format!("{reg}/{repo}:1.0"),
        "  discovery: {createServiceTemplates: false}\n  imagePullSecrets: [{name: creds}]\n",
    )
    .await;
    let m = await_model(&api, "bearer", "Ready with metadata", |m| {
        canonical(m).is_some()
            && m.status.as_ref().unwrap().status == Some(aim_api::status::ResourcePhase::Ready)
    })
    .await;
    assert_eq!(canonical(&m).as_deref(), Some("bearer/model"));
    let meta = m.status.as_ref().unwrap().image_metadata.clone().unwrap();
    assert_eq!(meta.model.unwrap().recommended_deployments.len(), 2);
    assert!(has_condition(
        &m,
        "ImageMetadataReady",
        "True",
        "ImageMetadataFound"
    ));
    assert!(model_condition(&m, "AuthValid").is_none_or(|(s, _, _)| s == "True"));
    // The labels came through the token server: a token was issued to the
    // secret's user for this repository (beyond the pushes' own).
    let pulls: Vec<_> = token_requests_for(&repo)
        .into_iter()
        .filter(|r| r.scopes == [format!("repository:{repo}:pull")])
        .collect();
    assert!(
        pulls
            .iter()
            .any(|r| r.status == 200 && r.account.as_deref() == Some(USER)),
        "no pull token was issued for {repo}: {pulls:?}"
    );
}

/// Credentials the token server refuses are an auth failure, as the
/// htpasswd registry's 401 is; fixing the secret recovers the model.
#[tokio::test]
async fn token_auth_failures_are_reported_and_recover_when_the_secret_is_fixed() {
    let (client, ns, api) = setup("cat-token-bad").await;
    let reg = &token_registry().address;
    let repo = format!("aim/{ns}-bearer");
    let labels = aim_labels("bearer/fixed");
    push_image(reg, &repo, "1.0", &borrow(&labels), true).await;
    apply_yaml(&client, &ns, &pull_secret("creds", reg, "wrong"))
        .await
        .unwrap();
    create_model(
        &client,
        &ns,
        "bearer",
        &format!("{reg}/{repo}:1.0"),
        "  discovery: {createServiceTemplates: false}\n  imagePullSecrets: [{name: creds}]\n",
    )
    .await;
    let m = await_model(&api, "bearer", "AuthValid=False", |m| {
        has_condition(m, "AuthValid", "False", "AuthError")
            && has_condition(m, "ImageMetadataReady", "False", "RegistryAuthFailed")
    })
    .await;
    let message = model_condition(&m, "ImageMetadataReady").unwrap().2;
    assert!(
        message.contains("spec.imagePullSecrets") && message.contains(&repo),
        "{message}"
    );
    assert_eq!(
        m.status.as_ref().unwrap().status,
        Some(aim_api::status::ResourcePhase::Failed)
    );
    // The refusal was the token server's, not the registry's.
    let refused = token_requests_for(&repo);
    assert!(
        refused.iter().any(|r| r.status == 401
            && r.account.as_deref() == Some(USER)
            && r.scopes == [format!("repository:{repo}:pull")]),
        "the token server refused no pull token for {repo}: {refused:?}"
    );

    apply_yaml(&client, &ns, &pull_secret("creds", reg, PASSWORD))
        .await
        .unwrap();
    let m = await_model(&api, "bearer", "metadata after the fix", |m| {
        canonical(m).is_some()
            && model_condition(m, "AuthValid").is_none_or(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(canonical(&m).as_deref(), Some("bearer/fixed"));
    assert!(has_condition(
        &m,
        "ImageMetadataReady",
        "True",
        "ImageMetadataFound"
    ));
}

/// The registry client asks the token server for exactly the scope the
/// registry's challenge names: pull on the repository for labels and tags,
/// `registry:catalog:*` for the catalog; never push.
#[tokio::test]
async fn token_requests_carry_the_challenged_scope() {
    use aim_operator::registry::{Credentials, Reference, Session};
    let token = token_registry();
    let reg = &token.address;
    let repo = format!("aim/scope-{}", std::process::id());
    push_image(reg, &repo, "1.0", &[("k", "v")], true).await;
    let pushed = token_requests_for(&repo).len();
    let creds = Credentials {
        username: USER.into(),
        password: PASSWORD.into(),
    };
    let image = Reference::parse(&format!("{reg}/{repo}:1.0")).unwrap();
    let mut session = Session::new(reg, Some(creds.clone()), &[]);
    assert_eq!(session.labels(&image).await.unwrap()["k"], "v");
    let mut session = Session::new(reg, Some(creds.clone()), &[]);
    assert_eq!(session.tags(&repo).await.unwrap(), vec!["1.0"]);
    let mut session = Session::new(reg, Some(creds), &[]);
    assert!(session.catalog().await.unwrap().contains(&repo));

    let asked = token_requests_for(&repo);
    let scopes: Vec<_> = asked[pushed..].iter().map(|r| r.scopes.clone()).collect();
    let pull = vec![format!("repository:{repo}:pull")];
    // One token per session: the labels' manifest and blob share it.
    assert_eq!(scopes, vec![pull.clone(), pull], "{asked:?}");
    for r in &asked[pushed..] {
        assert_eq!(
            (r.service.as_deref(), r.account.as_deref(), r.status),
            (Some(SERVICE), Some(USER), 200)
        );
    }
    assert!(
        token
            .server
            .requests()
            .iter()
            .any(|r| r.scopes == ["registry:catalog:*"] && r.status == 200),
        "no catalog token was asked for"
    );
}

/// The registry really checks the tokens: one for another repository, or
/// one whose claims were altered after signing, is refused. (Without this,
/// the tests above could pass against a registry that accepts anything.)
#[tokio::test]
async fn token_registry_refuses_out_of_scope_and_altered_tokens() {
    use base64::Engine as _;
    let token = token_registry();
    let reg = &token.address;
    let repo = format!("aim/guarded-{}", std::process::id());
    push_image(reg, &repo, "1.0", &[("k", "v")], true).await;
    let manifest = format!("http://{reg}/v2/{repo}/manifests/1.0");
    let get = |t: String| {
        common::registry::http()
            .get(&manifest)
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .header("authorization", format!("Bearer {t}"))
            .send()
    };
    let granted = async |scope: String| {
        bearer_token(&token.server.realm, SERVICE, &scope, USER, PASSWORD).await
    };

    let good = granted(format!("repository:{repo}:pull")).await.unwrap();
    assert_eq!(get(good.clone()).await.unwrap().status().as_u16(), 200);

    let other = granted(format!("repository:{repo}-other:pull"))
        .await
        .unwrap();
    let resp = get(other.clone()).await.unwrap();
    assert_eq!(
        resp.status().as_u16(),
        401,
        "a token for another repository"
    );
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("insufficient_scope"), "{challenge}");

    // The other repository's token, its claims rewritten to name this
    // one: the signature no longer matches, so only a registry that skips
    // verification would serve it.
    let parts: Vec<&str> = other.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["access"][0]["name"] = json!(repo);
    let altered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(
        get(altered).await.unwrap().status().as_u16(),
        401,
        "a token altered after signing"
    );

    // The token server itself: wrong credentials, a foreign service and a
    // malformed scope, each refused with a message naming what is wrong.
    let realm = &token.server.realm;
    let pull = format!("repository:{repo}:pull");
    let (status, body) = bearer_token(realm, SERVICE, &pull, USER, "wrong")
        .await
        .unwrap_err();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("wrong password"), "{body}");
    let (status, body) = bearer_token(realm, "elsewhere", &pull, USER, PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("service"), "{body}");
    let (status, body) = bearer_token(realm, SERVICE, &repo, USER, PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("scope"), "{body}");
}

/// The operator's registry client on its own: labels of one image read 20
/// times (fresh session each time: manifest + config blob, plus the auth
/// round trip: one more request on the htpasswd registry, a token request
/// on the token registry). Prints the latency per image for each auth mode;
/// the assertions are on the labels only.
#[tokio::test]
async fn inspection_latency_per_image() {
    use aim_operator::registry::{Credentials, Reference, Session};
    let regs = registries();
    let token = token_registry();
    let labels = aim_labels("latency/model");
    for (mode, reg, auth) in [
        ("anonymous", &regs.anonymous, false),
        ("htpasswd", &regs.auth, true),
        ("token", &token.address, true),
    ] {
        let repo = format!("aim/latency-{}", std::process::id());
        push_image(reg, &repo, "1.0", &borrow(&labels), auth).await;
        let image = Reference::parse(&format!("{reg}/{repo}:1.0")).unwrap();
        let creds = auth.then(|| Credentials {
            username: USER.into(),
            password: PASSWORD.into(),
        });
        let rounds = 20u32;
        let started = Instant::now();
        for _ in 0..rounds {
            let mut session = Session::new(&image.registry, creds.clone(), &[]);
            let got = session.labels(&image).await.unwrap();
            assert_eq!(
                got["com.amd.aim.model.canonicalName"], "latency/model",
                "labels read back"
            );
        }
        eprintln!(
            "inspection latency per image ({mode}): {:?}",
            started.elapsed() / rounds
        );
    }
}
