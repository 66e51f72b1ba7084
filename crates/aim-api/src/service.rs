//! AIMService: one inference endpoint for one model.

use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;
use std::collections::BTreeMap;

use crate::common::{HardwareRequirements, ModelSource, ResolvedReference, RuntimeParameters};
use crate::runtime_config::{RoutingConfig, StorageConfig};

#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "aim.eai.amd.com",
    version = "v1alpha1",
    kind = "AIMService",
    plural = "aimservices",
    singular = "aimservice",
    namespaced,
    status = "AIMServiceStatus",
    shortname = "aimsvc",
    category = "aim",
    category = "all",
    doc = "AIMService deploys one model as an inference endpoint: a KServe InferenceService with fixed replicas or KEDA autoscaling, optional Gateway API routing and a model cache.",
    printcolumn(name = "Status", type_ = "string", json_path = ".status.status"),
    printcolumn(
        name = "Model",
        type_ = "string",
        json_path = ".status.resolvedModel.name"
    ),
    printcolumn(
        name = "Template",
        type_ = "string",
        json_path = ".status.resolvedTemplate.name"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "string",
        json_path = ".status.runtime.replicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AIMServiceSpec {
    /// Which model to serve: exactly one of `name`, `image` or `custom`.
    #[x_kube(validation = Rule::new("self == oldSelf").message("model selection is immutable after creation"))]
    pub model: ServiceModel,
    /// Which template to use; auto-selected when omitted.
    #[x_kube(validation = Rule::new("self == oldSelf").message("template selection is immutable after creation"))]
    pub template: Option<ServiceTemplateSelector>,
    /// How model weights are cached. Shared when omitted.
    pub caching: Option<ServiceCaching>,
    /// Deprecated and ignored; caching is always on.
    pub cache_model: Option<bool>,
    /// A fixed replica count, used when `minReplicas`/`maxReplicas` are not set.
    #[serde(default = "default_replicas")]
    pub replicas: Option<i32>,
    /// Lower bound for autoscaling. Setting it (or `maxReplicas`) turns KEDA on.
    /// 0 is an aim extension, scale from zero: valid only when the service
    /// is routed (`routing.enabled`) through `aim gateway`, which holds the
    /// first requests while KEDA brings up a replica.
    #[schemars(range(min = 0))]
    pub min_replicas: Option<i32>,
    /// Upper bound for autoscaling.
    #[schemars(range(min = 1))]
    pub max_replicas: Option<i32>,
    /// Metrics KEDA scales on; a default vLLM metric when omitted.
    pub auto_scaling: Option<AutoScaling>,
    /// Name of the AIMRuntimeConfig / AIMClusterRuntimeConfig; `default` when empty.
    pub runtime_config_name: Option<String>,
    pub storage: Option<StorageConfig>,
    pub routing: Option<RoutingConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,
    /// Container resources; defaults follow from the template's GPU count.
    pub resources: Option<ResourceRequirements>,
    /// Changes to the template's runtime parameters; they select or derive a template.
    pub overrides: Option<RuntimeParameters>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    pub service_account_name: Option<String>,
}

fn default_replicas() -> Option<i32> {
    Some(1)
}

/// The model a service serves.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("(has(self.name) ? 1 : 0) + (has(self.image) ? 1 : 0) + (has(self.custom) ? 1 : 0) == 1").message("exactly one of name, image, or custom must be specified"))]
pub struct ServiceModel {
    /// An AIMModel in the namespace, else an AIMClusterModel.
    pub name: Option<String>,
    /// A model image; a matching model is found or created.
    pub image: Option<String>,
    /// A model from explicit weights on a base image.
    pub custom: Option<CustomModel>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomModel {
    /// The serving image (an AIM base image).
    pub base_image: String,
    /// The weights to serve. Exactly one source.
    #[schemars(length(min = 1, max = 1))]
    #[x_kube(validation = Rule::new("size(self) >= 1").message("at least one model source must be specified"))]
    pub model_sources: Vec<ModelSource>,
    pub hardware: HardwareRequirements,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTemplateSelector {
    /// An AIMServiceTemplate in the namespace, else an AIMClusterServiceTemplate.
    pub name: Option<String>,
    /// Let auto-selection consider templates not optimised for the hardware.
    pub allow_unoptimized: Option<bool>,
}

/// The cache modes a manifest may name. `Always` and `Auto` are legacy
/// spellings of `Shared`; `Never` of `Dedicated`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum CachingModeSpec {
    Dedicated,
    #[default]
    Shared,
    Auto,
    Always,
    Never,
}

/// The two cache behaviours there really are.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum CacheMode {
    Dedicated,
    #[default]
    Shared,
}

impl CachingModeSpec {
    pub fn effective(self) -> CacheMode {
        match self {
            CachingModeSpec::Dedicated | CachingModeSpec::Never => CacheMode::Dedicated,
            CachingModeSpec::Shared | CachingModeSpec::Auto | CachingModeSpec::Always => {
                CacheMode::Shared
            }
        }
    }
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct ServiceCaching {
    #[serde(default = "default_caching_mode")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("caching mode is immutable after creation"))]
    pub mode: Option<CachingModeSpec>,
}

fn default_caching_mode() -> Option<CachingModeSpec> {
    Some(CachingModeSpec::Shared)
}

impl AIMServiceSpec {
    /// The cache mode in force, with legacy values mapped.
    pub fn cache_mode(&self) -> CacheMode {
        self.caching
            .as_ref()
            .and_then(|c| c.mode)
            .unwrap_or_default()
            .effective()
    }

    /// Autoscaling is on when either bound is given.
    pub fn autoscaling_enabled(&self) -> bool {
        self.min_replicas.is_some() || self.max_replicas.is_some()
    }
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoScaling {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<ScalingMetric>,
    /// aim extension: the scaling policy the scaler applies to every
    /// metric. With this or `behavior` set, the operator writes the KEDA
    /// ScaledObject itself (KServe cannot carry either).
    pub policy: Option<ScalingPolicy>,
    /// aim extension: the HPA's scaling behaviour for this service,
    /// instead of KServe's cluster-wide stabilisation windows.
    pub behavior: Option<ScalingBehavior>,
    /// aim extension, with `minReplicas: 0` only: seconds without demand
    /// (no request running, none held at the gateway) before the service
    /// goes back to zero replicas. KEDA's `cooldownPeriod`; 300 when unset.
    #[schemars(range(min = 0))]
    pub cooldown_period: Option<i32>,
}

impl AutoScaling {
    /// Whether any aim extension is set: then the operator, not KServe,
    /// owns the ScaledObject.
    pub fn uses_extensions(&self) -> bool {
        self.policy.is_some() || self.behavior.is_some() || self.cooldown_period.is_some()
    }
}

/// The policies `aim scaler` implements. See the scaler's documentation for
/// each one's parameters.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    /// The metric unchanged: plain KEDA arithmetic.
    #[default]
    Passthrough,
    /// Capacity per replica with headroom, held for a scale-down delay.
    Queue,
    /// A latency control law on a TTFT quantile.
    Slo,
    /// Cost-aware: utilisation and keep-alive set by an SLO-vs-cost weight.
    Cost,
    /// Trend and seasonal forecast at now + cold start.
    Predictive,
    /// Knative-style stable and panic windows.
    StablePanic,
}

impl PolicyName {
    /// The name the scaler's `policy` trigger key takes.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::Passthrough => "passthrough",
            PolicyName::Queue => "queue",
            PolicyName::Slo => "slo",
            PolicyName::Cost => "cost",
            PolicyName::Predictive => "predictive",
            PolicyName::StablePanic => "stable-panic",
        }
    }
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ScalingPolicy {
    pub name: PolicyName,
    /// The policy's parameters and the scaler's own trigger keys
    /// (`quantile`, `window`, `activationThreshold`, `valueIfMissing`,
    /// `clampMin`, `clampMax`), as strings: `season: "1d"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

/// The HPA v2 `behavior` block, per service.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingBehavior {
    pub scale_up: Option<ScalingRules>,
    pub scale_down: Option<ScalingRules>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Seconds of past recommendations the HPA considers: it scales up to
    /// the lowest, or down to the highest, of them.
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: Option<i32>,
    /// Which rate policy wins when several apply: `Max` (the default),
    /// `Min`, or `Disabled` to forbid this direction.
    pub select_policy: Option<SelectPolicy>,
    /// Rate limits: at most `value` pods (or percent) per `periodSeconds`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<RatePolicy>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SelectPolicy {
    Max,
    Min,
    Disabled,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RatePolicyType {
    Pods,
    Percent,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RatePolicy {
    #[serde(rename = "type")]
    pub type_: RatePolicyType,
    #[schemars(range(min = 1))]
    pub value: i32,
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: i32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ScalingMetricType {
    /// A per-pod vLLM metric, collected by the OpenTelemetry sidecar and
    /// read by the KEDA external scaler (AIM Engine's only type).
    #[default]
    PodMetric,
    /// aim extension: a metric KEDA reads from a Prometheus server with a
    /// PromQL query, written as KServe's `External` metric.
    External,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ScalingMetric {
    #[serde(rename = "type")]
    pub type_: ScalingMetricType,
    pub podmetric: Option<PodMetric>,
    /// aim extension, with `type: External`: the Prometheus backend.
    pub external: Option<ExternalMetric>,
}

impl ScalingMetric {
    /// The Prometheus source of an `External` metric, if this is one.
    pub fn prometheus(&self) -> Option<&ExternalMetricSource> {
        if self.type_ != ScalingMetricType::External {
            return None;
        }
        self.external.as_ref()?.metric.as_ref()
    }
}

/// KServe's `External` metric: KEDA's own `prometheus` scaler queries the
/// server, so no sidecar or aim scaler is involved.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ExternalMetric {
    pub metric: Option<ExternalMetricSource>,
    /// KEDA's `threshold` is `target.value`, compared per replica (KEDA's
    /// default `AverageValue`), whatever `target.type` says: KServe v0.16
    /// writes no metric type for external metrics.
    pub target: Option<MetricTarget>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExternalBackend {
    #[default]
    Prometheus,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalMetricSource {
    #[serde(default = "default_external_backend")]
    pub backend: Option<ExternalBackend>,
    /// The Prometheus server's base URL, e.g.
    /// `http://prometheus-operated.monitoring.svc:9090`.
    pub server_address: Option<String>,
    /// A PromQL query that returns exactly one series, e.g.
    /// `sum(vllm:num_requests_waiting{namespace="ml-team"})`.
    pub query: Option<String>,
    /// The tenant namespace KEDA sends to multi-tenant Prometheus
    /// front-ends (Thanos, Cortex); it does not filter the query.
    pub namespace: Option<String>,
}

fn default_external_backend() -> Option<ExternalBackend> {
    Some(ExternalBackend::Prometheus)
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct PodMetric {
    pub metric: Option<PodMetricSource>,
    pub target: Option<MetricTarget>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum MetricsBackend {
    #[default]
    Opentelemetry,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodMetricSource {
    #[serde(default = "default_backend")]
    pub backend: Option<MetricsBackend>,
    /// The KEDA external scaler's address, `host:port`.
    pub server_address: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metric_names: Vec<String>,
    /// e.g. `sum(vllm:num_requests_running{namespace="ml-team"})`.
    pub query: Option<String>,
    /// One of last_one, avg, max, min, rate, count.
    pub operation_over_time: Option<String>,
}

fn default_backend() -> Option<MetricsBackend> {
    Some(MetricsBackend::Opentelemetry)
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum MetricTargetType {
    #[default]
    Value,
    AverageValue,
    Utilization,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricTarget {
    #[serde(rename = "type")]
    pub type_: MetricTargetType,
    pub value: Option<String>,
    pub average_value: Option<String>,
    pub average_utilization: Option<i32>,
}

/// The states an AIMService reports. AIM Engine's enum has no
/// `NotAvailable`, yet its controller can compute it (a template whose GPUs
/// are absent) and then fails to write status. Our controller reports that
/// case as `Pending` with a `TemplateReady` reason that says which hardware
/// is missing, which keeps the documented five values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ServicePhase {
    #[default]
    Pending,
    Starting,
    Running,
    Degraded,
    Failed,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AIMServiceStatus {
    #[serde(default = "default_service_phase")]
    pub status: Option<ServicePhase>,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    pub resolved_model: Option<ResolvedReference>,
    pub resolved_template: Option<ResolvedReference>,
    pub resolved_runtime_config: Option<ResolvedReference>,
    pub routing: Option<ServiceRoutingStatus>,
    pub cache: Option<ServiceCacheStatus>,
    pub runtime: Option<ServiceRuntimeStatus>,
}

fn default_service_phase() -> Option<ServicePhase> {
    Some(ServicePhase::Pending)
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ServiceRoutingStatus {
    /// The rendered HTTP path prefix of the service's route.
    pub path: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceCacheStatus {
    pub template_cache_ref: Option<ResolvedReference>,
    /// How many times a failed cache was recreated for this service.
    pub retry_attempts: Option<i32>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRuntimeStatus {
    pub current_replicas: Option<i32>,
    pub desired_replicas: Option<i32>,
    pub min_replicas: Option<i32>,
    pub max_replicas: Option<i32>,
    /// Human-readable summary, e.g. `2/4 (1-4)`.
    pub replicas: Option<String>,
    /// Set while autoscaling is paused: KEDA leaves the replicas alone.
    pub paused: Option<bool>,
}
