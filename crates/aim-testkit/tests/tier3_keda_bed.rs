//! Tier 3 bed: KEDA's operator and metrics server run as processes of the
//! shared cluster, and kube-apiserver's aggregator serves the external
//! metrics API from them, as the HPA controller needs.

use aim_devcluster::CacheDirs;
use aim_testkit::cluster_with_keda;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::Api;

#[tokio::test]
async fn the_external_metrics_api_answers_through_the_aggregator() {
    let info = cluster_with_keda().await;
    let cache = CacheDirs::discover().unwrap();

    // What a user types: kubectl, through kube-apiserver, to the adapter.
    let out = std::process::Command::new(cache.binary("kubectl"))
        .args(["get", "--raw", "/apis/external.metrics.k8s.io/v1beta1"])
        .env("KUBECONFIG", &info.kubeconfig)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl get --raw failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let discovery: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("a JSON APIResourceList");
    assert_eq!(discovery["kind"], "APIResourceList", "{discovery}");
    assert_eq!(
        discovery["groupVersion"], "external.metrics.k8s.io/v1beta1",
        "{discovery}"
    );

    // The aggregator itself found the adapter healthy.
    let client = info.client().await.unwrap();
    let api_service = Api::<APIService>::all(client.clone())
        .get("v1beta1.external.metrics.k8s.io")
        .await
        .unwrap();
    let available = api_service
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Available")
        .expect("an Available condition");
    assert_eq!(available.status, "True", "{available:?}");

    // A metric of a ScaledObject that does not exist: the refusal comes
    // from KEDA's operator, so the request went kube-apiserver → adapter →
    // operator (mTLS gRPC) and back.
    let request = http::Request::get(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/s0-nothing?labelSelector=scaledobject.keda.sh%2Fname%3Dnothing",
    )
    .body(Vec::new())
    .unwrap();
    let err = client
        .request::<serde_json::Value>(request)
        .await
        .expect_err("no such ScaledObject");
    let text = err.to_string();
    assert!(
        text.contains("error getting scalers"),
        "the operator's own error, relayed by the adapter: {text}"
    );

    // `aim dev cluster status` lists KEDA's processes, running and listening.
    let status = aim_devcluster::status(&cache, &info.name)
        .await
        .unwrap()
        .expect("the cluster runs");
    for name in ["keda-operator", "keda-adapter"] {
        let component = status
            .components
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} missing from {status:?}"));
        assert!(component.running && component.listening, "{component:?}");
    }
}
