//! Tier 2: AIMClusterModelSource against a real OCI registry on loopback
//! (`common::registry`) and a real apiserver, with the operator in-process.
//! Garbage collection of a deleted source's models is done by the test
//! cluster's kube-controller-manager, not by the operator.
//!
//! Sources and models are cluster-scoped and every test of this binary
//! shares one registry, so each test names its sources and repositories
//! after itself and the process id.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aim_api::common::Phase;
use aim_api::{AIMClusterModel, AIMClusterModelSource};
use aim_testkit::{apply_yaml, await_object, client};
use common::registry::{PASSWORD, USER, free_port, push_image, registries};
use common::{WAIT, operator};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

const OPERATOR_NAMESPACE: &str = "aim-system";

/// A name unique to this test process: `<what>-<pid>`.
fn unique(what: &str) -> String {
    format!("{what}-{}", std::process::id())
}

async fn setup() -> (kube::Client, Api<AIMClusterModelSource>) {
    operator();
    registries();
    let client = client().await;
    (client.clone(), Api::all(client))
}

/// Applies a source with `spec` (YAML, indented by two spaces).
async fn apply_source(client: &kube::Client, name: &str, spec: &str) {
    apply_yaml(
        client,
        "default",
        &format!(
            "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMClusterModelSource\nmetadata: {{name: {name}}}\nspec:\n{spec}"
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("applying source {name}: {e}"));
}

fn condition(s: &AIMClusterModelSource, ty: &str) -> Option<(String, String, String)> {
    s.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn has(s: &AIMClusterModelSource, ty: &str, status: &str, reason: &str) -> bool {
    condition(s, ty).is_some_and(|(st, r, _)| st == status && r == reason)
}

fn phase(s: &AIMClusterModelSource) -> Option<Phase> {
    s.status.as_ref().and_then(|st| st.status)
}

async fn await_source(
    api: &Api<AIMClusterModelSource>,
    name: &str,
    what: &str,
    f: impl Fn(&AIMClusterModelSource) -> bool,
) -> AIMClusterModelSource {
    await_object(api, name, what, WAIT, f).await
}

/// The models labelled as made by `source`.
async fn models_of(client: &kube::Client, source: &str) -> Vec<AIMClusterModel> {
    Api::<AIMClusterModel>::all(client.clone())
        .list(&ListParams::default().labels(&format!("aim.eai.amd.com/model-source={source}")))
        .await
        .unwrap()
        .items
}

fn images(models: &[AIMClusterModel]) -> BTreeSet<String> {
    models.iter().map(|m| m.spec.image.clone()).collect()
}

/// Waits until `source`'s models are exactly `expected` (by image).
async fn await_images(
    client: &kube::Client,
    source: &str,
    expected: &[String],
) -> Vec<AIMClusterModel> {
    let expected: BTreeSet<String> = expected.iter().cloned().collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let models = models_of(client, source).await;
        if images(&models) == expected {
            return models;
        }
        assert!(
            Instant::now() < deadline,
            "source {source}: models {:?}, expected {expected:?}",
            images(&models)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn delete_source(api: &Api<AIMClusterModelSource>, name: &str) {
    let _ = api.delete(name, &DeleteParams::default()).await;
}

async fn ensure_operator_namespace(client: &kube::Client) {
    let api = Api::<Namespace>::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": OPERATOR_NAMESPACE}})).unwrap();
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating {OPERATOR_NAMESPACE}: {e}"),
    }
}

async fn pull_secret(client: &kube::Client, name: &str, registry: &str, password: &str) {
    ensure_operator_namespace(client).await;
    let config = json!({"auths": {registry: {"username": USER, "password": password}}});
    apply_yaml(
        client,
        OPERATOR_NAMESPACE,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{config}'\n"
        ),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn exact_tag_creates_one_model_without_calling_the_registry() {
    let (client, api) = setup().await;
    let name = unique("src-exact");
    // Nothing listens on this port: any registry call would fail the filter.
    let offline = format!("127.0.0.1:{}", free_port());
    let image = format!("{offline}/aim/offline:1.2.3");
    apply_source(&client, &name, &format!("  filters:\n  - image: {image}\n")).await;
    let s = await_source(&api, &name, "Ready with one model", |s| {
        phase(s) == Some(Phase::Ready) && s.status.as_ref().unwrap().discovered_models == Some(1)
    })
    .await;
    assert!(has(&s, "FiltersReady", "True", "AllFiltersSucceeded"));
    assert!(has(&s, "MaxModelsLimitReached", "False", "WithinLimit"));
    let st = s.status.as_ref().unwrap();
    assert_eq!(st.available_models, Some(1));
    assert_eq!(st.models_limit_reached, Some(false));
    assert_eq!(st.observed_generation, s.metadata.generation);
    assert!(st.last_sync_time.is_some());

    let models = await_images(&client, &name, std::slice::from_ref(&image)).await;
    let m = &models[0];
    assert!(
        m.metadata
            .name
            .as_deref()
            .unwrap()
            .starts_with("aim-offline-1-2-3-"),
        "derived name: {:?}",
        m.metadata.name
    );
    let labels = m.metadata.labels.clone().unwrap();
    assert_eq!(labels["aim.eai.amd.com/origin"], "auto-generated");
    assert_eq!(labels["aim.eai.amd.com/cluster-model-source.name"], name);
    let ann = m.metadata.annotations.clone().unwrap();
    assert_eq!(ann["aim.eai.amd.com/source-registry"], offline);
    assert_eq!(ann["aim.eai.amd.com/source-repository"], "aim/offline");
    assert_eq!(ann["aim.eai.amd.com/source-tag"], "1.2.3");
    let owner = &m.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(owner.kind, "AIMClusterModelSource");
    assert_eq!(Some(&owner.uid), s.metadata.uid.as_ref());
    assert_eq!(owner.controller, Some(true));
    delete_source(&api, &name).await;
}

#[tokio::test]
async fn tag_listing_keeps_versions_matching_filter_or_global_constraints() {
    let (client, api) = setup().await;
    let reg = &registries().anonymous;
    let name = unique("src-tags");
    let repo = format!("tags-{}/llama", std::process::id());
    let other = format!("tags-{}/qwen", std::process::id());
    for tag in ["0.7.0", "0.8.1", "v0.9", "latest", "1.0.0"] {
        push_image(reg, &repo, tag, &[], false).await;
    }
    for tag in ["0.9.0", "1.0.0", "1.1"] {
        push_image(reg, &other, tag, &[], false).await;
    }
    // The first filter's own constraint wins over the global one; the
    // second filter has none, so the global one applies.
    apply_source(
        &client,
        &name,
        &format!(
            "  versions: ['>=1.0.0']\n  filters:\n  - image: {reg}/{repo}\n    versions: ['>=0.8.0, <1.0.0']\n  - image: {reg}/{other}\n"
        ),
    )
    .await;
    let expected = [
        format!("{reg}/{repo}:0.8.1"),
        format!("{reg}/{repo}:v0.9"),
        format!("{reg}/{other}:1.0.0"),
        format!("{reg}/{other}:1.1"),
    ];
    await_images(&client, &name, &expected).await;
    let s = await_source(&api, &name, "status counts", |s| {
        s.status.as_ref().and_then(|st| st.discovered_models) == Some(4)
    })
    .await;
    assert_eq!(s.status.as_ref().unwrap().available_models, Some(4));
    assert_eq!(phase(&s), Some(Phase::Ready));
    delete_source(&api, &name).await;
}

#[tokio::test]
async fn wildcard_lists_the_catalog_and_honours_exclude() {
    let (client, api) = setup().await;
    let reg = &registries().anonymous;
    let name = unique("src-wild");
    let org = format!("wild-{}", std::process::id());
    for repo in ["aim-a", "aim-b", "aim-base", "other"] {
        push_image(reg, &format!("{org}/{repo}"), "1.0", &[], false).await;
    }
    apply_source(
        &client,
        &name,
        &format!("  filters:\n  - image: {reg}/{org}/aim-*\n    exclude: [{org}/aim-base]\n"),
    )
    .await;
    await_images(
        &client,
        &name,
        &[
            format!("{reg}/{org}/aim-a:1.0"),
            format!("{reg}/{org}/aim-b:1.0"),
        ],
    )
    .await;
    let s = await_source(&api, &name, "Ready", |s| phase(s) == Some(Phase::Ready)).await;
    assert!(has(&s, "FiltersReady", "True", "AllFiltersSucceeded"));
    delete_source(&api, &name).await;
}

#[tokio::test]
async fn max_models_limit_is_reported_and_lifted_on_spec_change() {
    let (client, api) = setup().await;
    let reg = &registries().anonymous;
    let name = unique("src-limit");
    let repo = format!("limit-{}/model", std::process::id());
    for tag in ["1.0.0", "1.1.0", "1.2.0", "2.0.0", "2.1.0"] {
        push_image(reg, &repo, tag, &[], false).await;
    }
    let spec = |max: u32| format!("  maxModels: {max}\n  filters:\n  - image: {reg}/{repo}\n");
    apply_source(&client, &name, &spec(2)).await;
    let s = await_source(&api, &name, "LimitReached", |s| {
        has(s, "MaxModelsLimitReached", "True", "LimitReached")
    })
    .await;
    let st = s.status.as_ref().unwrap();
    assert_eq!(
        (
            st.discovered_models,
            st.available_models,
            st.models_limit_reached
        ),
        (Some(2), Some(5), Some(true))
    );
    let message = condition(&s, "MaxModelsLimitReached").unwrap().2;
    assert!(message.contains("spec.maxModels"), "{message}");
    // With room for two, the newest two versions are kept.
    await_images(
        &client,
        &name,
        &[format!("{reg}/{repo}:2.1.0"), format!("{reg}/{repo}:2.0.0")],
    )
    .await;

    // A spec change re-syncs at once (the interval is an hour).
    apply_source(&client, &name, &spec(10)).await;
    let s = await_source(&api, &name, "WithinLimit", |s| {
        has(s, "MaxModelsLimitReached", "False", "WithinLimit")
    })
    .await;
    assert_eq!(s.status.as_ref().unwrap().discovered_models, Some(5));
    assert_eq!(models_of(&client, &name).await.len(), 5);
    delete_source(&api, &name).await;
}

#[tokio::test]
async fn auth_registry_needs_a_pull_secret_from_the_operator_namespace() {
    let (client, api) = setup().await;
    let reg = &registries().auth;
    let repo = format!("private-{}/model", std::process::id());
    push_image(reg, &repo, "1.0", &[], true).await;

    // Without credentials: the filter fails and says what to add.
    let anonymous = unique("src-noauth");
    apply_source(
        &client,
        &anonymous,
        &format!("  filters:\n  - image: {reg}/{repo}\n"),
    )
    .await;
    let s = await_source(&api, &anonymous, "AllFiltersFailed", |s| {
        has(s, "FiltersReady", "False", "AllFiltersFailed")
    })
    .await;
    assert_eq!(phase(&s), Some(Phase::Failed));
    let message = condition(&s, "FiltersReady").unwrap().2;
    assert!(
        message.contains("filters[0]")
            && message.contains(&repo)
            && message.contains("spec.imagePullSecrets"),
        "{message}"
    );
    assert!(models_of(&client, &anonymous).await.is_empty());
    delete_source(&api, &anonymous).await;

    // With a pull secret in the operator namespace: the tags are listed.
    let secret = unique("src-creds");
    pull_secret(&client, &secret, reg, PASSWORD).await;
    let name = unique("src-auth");
    apply_source(
        &client,
        &name,
        &format!("  imagePullSecrets: [{{name: {secret}}}]\n  filters:\n  - image: {reg}/{repo}\n"),
    )
    .await;
    let models = await_images(&client, &name, &[format!("{reg}/{repo}:1.0")]).await;
    // The model inherits the secret, so it can inspect the image too.
    assert_eq!(models[0].spec.image_pull_secrets[0].name, secret);
    await_source(&api, &name, "Ready", |s| phase(s) == Some(Phase::Ready)).await;
    delete_source(&api, &name).await;
}

#[tokio::test]
async fn missing_pull_secret_is_reported_before_any_registry_call_and_recovers() {
    let (client, api) = setup().await;
    let reg = &registries().auth;
    let repo = format!("late-{}/model", std::process::id());
    push_image(reg, &repo, "1.0", &[], true).await;
    let secret = unique("src-late-creds");
    let name = unique("src-nosecret");
    apply_source(
        &client,
        &name,
        &format!("  imagePullSecrets: [{{name: {secret}}}]\n  filters:\n  - image: {reg}/{repo}\n"),
    )
    .await;
    let s = await_source(&api, &name, "SecretNotFound", |s| {
        has(s, "PullSecretsReady", "False", "SecretNotFound")
    })
    .await;
    let message = condition(&s, "PullSecretsReady").unwrap().2;
    assert!(
        message.contains(&secret) && message.contains(OPERATOR_NAMESPACE),
        "{message}"
    );
    assert!(has(&s, "ConfigValid", "False", "ReferenceNotFound"));
    assert_eq!(phase(&s), Some(Phase::Failed));
    // No filter ran: the registry was never asked.
    assert!(condition(&s, "FiltersReady").is_none(), "{s:?}");
    assert!(models_of(&client, &name).await.is_empty());

    // Creating the secret is enough: the failed source is retried.
    pull_secret(&client, &secret, reg, PASSWORD).await;
    await_images(&client, &name, &[format!("{reg}/{repo}:1.0")]).await;
    let s = await_source(&api, &name, "Ready after the secret", |s| {
        phase(s) == Some(Phase::Ready)
    })
    .await;
    assert!(has(&s, "PullSecretsReady", "True", "PullSecretsRead"));
    delete_source(&api, &name).await;
}

#[tokio::test]
async fn failing_filters_are_named_and_do_not_block_the_others() {
    let (client, api) = setup().await;
    let name = unique("src-mixed");
    let down = format!("127.0.0.1:{}", free_port());
    let good = "127.0.0.1:1/aim/pinned:2.0";
    apply_source(
        &client,
        &name,
        &format!(
            "  filters:\n  - image: {good}\n  - image: amdenterpriseai/aim-*\n  - image: {down}/aim/listed\n"
        ),
    )
    .await;
    let s = await_source(&api, &name, "SomeFiltersFailed", |s| {
        has(s, "FiltersReady", "False", "SomeFiltersFailed")
    })
    .await;
    assert_eq!(phase(&s), Some(Phase::Degraded));
    let message = condition(&s, "FiltersReady").unwrap().2;
    // Docker Hub wildcards need the Hub API: a clear error, no internet.
    assert!(
        message.contains("filters[1] (image \"amdenterpriseai/aim-*\")")
            && message.contains("Docker Hub"),
        "{message}"
    );
    assert!(
        message.contains("filters[2]") && message.contains(&down),
        "{message}"
    );
    assert!(message.contains("2 of 3"), "{message}");
    await_images(&client, &name, &[good.to_string()]).await;
    delete_source(&api, &name).await;
}

/// AIM Engine's `auth-failure` e2e intent: a ghcr.io wildcard without pull
/// secrets fails at once, with no models and no network call (aim does not
/// call the GitHub Packages API at all, so the error says what to do).
#[tokio::test]
async fn ghcr_wildcard_fails_without_models() {
    let (client, api) = setup().await;
    let name = unique("src-ghcr");
    apply_source(
        &client,
        &name,
        "  filters:\n  - image: ghcr.io/silogen/aim-*\n",
    )
    .await;
    let s = await_source(&api, &name, "Failed", |s| phase(s) == Some(Phase::Failed)).await;
    assert!(has(&s, "Ready", "False", "AllFiltersFailed"));
    let message = condition(&s, "FiltersReady").unwrap().2;
    assert!(
        message.contains("filters[0]") && message.contains("GitHub Packages"),
        "{message}"
    );
    assert_eq!(s.status.as_ref().unwrap().discovered_models, Some(0));
    assert!(models_of(&client, &name).await.is_empty());
    delete_source(&api, &name).await;
}

#[tokio::test]
async fn deleting_the_source_garbage_collects_its_models() {
    let (client, api) = setup().await;
    let name = unique("src-gc");
    let expected = [
        "r.example/aim/a:1".to_string(),
        "r.example/aim/b:2".to_string(),
    ];
    apply_source(
        &client,
        &name,
        &format!(
            "  filters:\n  - image: {}\n  - image: {}\n",
            expected[0], expected[1]
        ),
    )
    .await;
    await_images(&client, &name, &expected).await;
    // A background delete: the models go because kube-controller-manager's
    // garbage collector follows their owner reference.
    api.delete(&name, &DeleteParams::background())
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = models_of(&client, &name).await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} models outlived their source",
            left.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_tag_pushed_later_appears_after_the_next_sync() {
    let (client, api) = setup().await;
    let reg = &registries().anonymous;
    let name = unique("src-sync");
    let repo = format!("sync-{}/model", std::process::id());
    push_image(reg, &repo, "1.0", &[], false).await;
    apply_source(
        &client,
        &name,
        &format!("  syncInterval: 2s\n  filters:\n  - image: {reg}/{repo}\n"),
    )
    .await;
    await_images(&client, &name, &[format!("{reg}/{repo}:1.0")]).await;
    let first = await_source(&api, &name, "first sync", |s| {
        phase(s) == Some(Phase::Ready)
    })
    .await;
    let first_sync = first.status.unwrap().last_sync_time.unwrap().0;

    push_image(reg, &repo, "2.0", &[], false).await;
    await_images(
        &client,
        &name,
        &[format!("{reg}/{repo}:1.0"), format!("{reg}/{repo}:2.0")],
    )
    .await;
    let s = await_source(&api, &name, "second sync counted", |s| {
        s.status.as_ref().and_then(|st| st.discovered_models) == Some(2)
    })
    .await;
    let later = s.status.unwrap().last_sync_time.unwrap().0;
    assert!(
        later > first_sync,
        "lastSyncTime moves: {first_sync} → {later}"
    );
    delete_source(&api, &name).await;
}

#[tokio::test]
async fn unusable_sync_interval_is_reported_and_fixed_by_a_spec_change() {
    let (client, api) = setup().await;
    let name = unique("src-interval");
    let filters = "  filters:\n  - image: r.example/aim/x:1\n";
    // `0s` passes the CRD's duration pattern but would sync non-stop.
    apply_source(&client, &name, &format!("  syncInterval: 0s\n{filters}")).await;
    let s = await_source(&api, &name, "InvalidSyncInterval", |s| {
        has(s, "SyncIntervalReady", "False", "InvalidSyncInterval")
    })
    .await;
    assert_eq!(phase(&s), Some(Phase::Failed));
    let message = condition(&s, "SyncIntervalReady").unwrap().2;
    assert!(message.contains("spec.syncInterval"), "{message}");
    assert!(models_of(&client, &name).await.is_empty());

    apply_source(&client, &name, &format!("  syncInterval: 5m\n{filters}")).await;
    let s = await_source(&api, &name, "Ready after the fix", |s| {
        phase(s) == Some(Phase::Ready)
    })
    .await;
    assert!(condition(&s, "SyncIntervalReady").is_none());
    assert_eq!(models_of(&client, &name).await.len(), 1);
    delete_source(&api, &name).await;
}
