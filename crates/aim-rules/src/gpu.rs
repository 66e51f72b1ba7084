//! GPU detection from node labels and the template's GPU
//! component: which AMD GPU models a cluster has, whether a
//! template's hardware can run there, its node affinity and its
//! `hardwareSummary`.

use std::collections::{BTreeMap, BTreeSet};

use aim_api::common::HardwareRequirements;
use k8s_openapi::api::core::v1::{
    Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The node label holding the GPU's PCI device ID.
pub const DEVICE_ID_LABEL: &str = "amd.com/gpu.device-id";
/// The older spelling of [`DEVICE_ID_LABEL`].
pub const BETA_DEVICE_ID_LABEL: &str = "beta.amd.com/gpu.device-id";
/// The node label holding the GPU family, a fallback for the model.
pub const FAMILY_LABEL: &str = "amd.com/gpu.family";
/// The older spelling of [`FAMILY_LABEL`].
pub const BETA_FAMILY_LABEL: &str = "beta.amd.com/gpu.family";
/// The node label holding the VRAM per GPU, e.g. `192G`.
pub const VRAM_LABEL: &str = "amd.com/gpu.vram";
/// The older spelling of [`VRAM_LABEL`].
pub const BETA_VRAM_LABEL: &str = "beta.amd.com/gpu.vram";
/// The extended resource that counts AMD GPUs.
pub const DEFAULT_GPU_RESOURCE: &str = "amd.com/gpu";

/// Reasons of the template's `GPUReady` condition.
pub const REASON_GPU_AVAILABLE: &str = "GPUAvailable";
pub const REASON_GPU_NOT_AVAILABLE: &str = "GPUNotAvailable";
pub const REASON_VRAM_NOT_AVAILABLE: &str = "VRAMNotAvailable";

const GIB: u64 = 1 << 30;

/// PCI device IDs (lowercase hex, no `0x`) and the model each one is.
pub const DEVICE_IDS: &[(&str, &str)] = &[
    ("738c", "MI100"),
    ("738e", "MI100"),
    ("7408", "MI250X"),
    ("740c", "MI250X"),
    ("740f", "MI210"),
    ("7410", "MI210"),
    ("74a0", "MI300A"),
    ("74a1", "MI300X"),
    ("74a9", "MI300X"),
    ("74b5", "MI300X"),
    ("74bd", "MI300X"),
    ("74a2", "MI308X"),
    ("74a8", "MI308X"),
    ("74b6", "MI308X"),
    ("74a5", "MI325X"),
    ("74b9", "MI325X"),
    ("75a0", "MI350X"),
    ("75b0", "MI350X"),
    ("75a3", "MI355X"),
    ("75b3", "MI355X"),
    ("7460", "V710"),
    ("7461", "V710"),
    ("7448", "W7900"),
    ("744a", "W7900"),
    ("7449", "W7800"),
    ("745e", "W7800"),
    ("73a2", "W6900X"),
    ("73a3", "W6800"),
    ("73ab", "W6800X"),
    ("73a1", "V620"),
    ("73ae", "V620"),
    ("7550", "RX9070"),
    ("744c", "RX7900"),
    ("73af", "RX6900"),
    ("73bf", "RX6800"),
];

/// VRAM per GPU, in GiB, for models whose nodes carry no VRAM label.
const STATIC_VRAM_GIB: &[(&str, u64)] = &[
    ("MI355X", 288),
    ("MI350X", 288),
    ("MI325X", 256),
    ("MI300X", 192),
    ("MI308X", 128),
    ("MI300A", 128),
    ("MI250X", 128),
    ("MI210", 64),
    ("MI100", 32),
    ("W7900", 48),
    ("W7800", 32),
    ("W6900X", 32),
    ("W6800", 32),
    ("W6800X", 32),
    ("V710", 28),
    ("V620", 32),
    ("RX9070", 16),
    ("RX7900", 24),
    ("RX6900", 16),
    ("RX6800", 16),
];

/// The model of a PCI device ID (any case, with or without `0x`);
/// `AMD-<ID>` (uppercase, so that it is its own normalized form) for an
/// ID the table does not know, `None` for an empty one.
pub fn device_id_model(device_id: &str) -> Option<String> {
    let id = clean_device_id(device_id);
    if id.is_empty() {
        return None;
    }
    Some(
        DEVICE_IDS
            .iter()
            .find(|(known, _)| *known == id)
            .map(|(_, model)| model.to_string())
            .unwrap_or_else(|| format!("AMD-{}", id.to_uppercase())),
    )
}

fn clean_device_id(device_id: &str) -> String {
    let lower = device_id.trim().to_lowercase();
    lower.strip_prefix("0x").unwrap_or(&lower).to_string()
}

/// The device IDs of a model (normalized), sorted. An `AMD-<id>` model
/// stands for its own ID.
pub fn model_device_ids(model: &str) -> Vec<String> {
    let model = normalize_gpu_model(model);
    let mut ids: Vec<String> = DEVICE_IDS
        .iter()
        .filter(|(_, m)| *m == model)
        .map(|(id, _)| id.to_string())
        .collect();
    if ids.is_empty()
        && let Some(id) = model.strip_prefix("AMD-")
    {
        ids.push(id.to_lowercase());
    }
    ids.sort();
    ids
}

/// Whether a token looks like a GPU model name: one or two letters, two to
/// four digits, up to two letters (`MI300X`, `W7900`, `RX9070`, `V710`).
fn is_model_token(token: &str) -> bool {
    let b = token.as_bytes();
    let letters = b.iter().take_while(|c| c.is_ascii_uppercase()).count();
    let digits = b[letters..]
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .count();
    let tail = &b[letters + digits..];
    (1..=2).contains(&letters)
        && (2..=4).contains(&digits)
        && tail.len() <= 2
        && tail.iter().all(|c| c.is_ascii_uppercase())
}

/// Normalizes a GPU model string: uppercase, `_` as `-`, split on `-`,
/// space, `/` and `:`, and the first token that looks like a model name,
/// skipping `AMD` and `INSTINCT` ("Instinct MI300X (rev 2)" → `MI300X`).
/// When no token looks like a model, the uppercased, trimmed text is
/// returned so that two spellings of an unknown model still compare equal.
pub fn normalize_gpu_model(model: &str) -> String {
    let upper = model.trim().to_uppercase().replace('_', "-");
    upper
        .split(['-', ' ', '/', ':'])
        .filter(|t| !t.is_empty() && *t != "AMD" && *t != "INSTINCT")
        .find(|t| is_model_token(t))
        .map(str::to_string)
        .unwrap_or(upper)
}

fn nonzero_count(value: &str) -> bool {
    value.trim().parse::<i64>().is_ok_and(|n| n != 0)
}

/// The GPU model of a node from its labels, in this order:
/// 1. `amd.com/gpu.device-id` (or `beta.amd.com/…`) looked up in the
///    device-ID table; an unknown ID gives `AMD-<id>`;
/// 2. a count-encoded key `amd.com/gpu.device-id.<id>` (or beta) with a
///    non-zero value;
/// 3. `amd.com/gpu.family` (or beta), or a count-encoded
///    `amd.com/gpu.family.<family>` with a non-zero value, normalized.
pub fn node_gpu_model(labels: &BTreeMap<String, String>) -> Option<String> {
    for key in [DEVICE_ID_LABEL, BETA_DEVICE_ID_LABEL] {
        if let Some(model) = labels.get(key).and_then(|v| device_id_model(v)) {
            return Some(model);
        }
    }
    for prefix in [DEVICE_ID_LABEL, BETA_DEVICE_ID_LABEL] {
        let encoded = labels.iter().find_map(|(k, v)| {
            let id = k.strip_prefix(prefix)?.strip_prefix('.')?;
            nonzero_count(v).then(|| device_id_model(id)).flatten()
        });
        if encoded.is_some() {
            return encoded;
        }
    }
    for key in [FAMILY_LABEL, BETA_FAMILY_LABEL] {
        if let Some(family) = labels.get(key).filter(|v| !v.trim().is_empty()) {
            return Some(normalize_gpu_model(family));
        }
    }
    for prefix in [FAMILY_LABEL, BETA_FAMILY_LABEL] {
        let encoded = labels.iter().find_map(|(k, v)| {
            let family = k.strip_prefix(prefix)?.strip_prefix('.')?;
            (nonzero_count(v) && !family.is_empty()).then(|| normalize_gpu_model(family))
        });
        if encoded.is_some() {
            return encoded;
        }
    }
    None
}

/// Parses a VRAM label value: a number with `G`/`Gi`/`GB` (2^30), `T`/`Ti`/
/// `TB` (2^40) or `M`/`Mi`/`MB` (2^20); a bare number is bytes.
pub fn parse_vram_label(value: &str) -> Option<u64> {
    let value = value.trim();
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "" => 1u64,
        "M" | "Mi" | "MB" => 1 << 20,
        "G" | "Gi" | "GB" => GIB,
        "T" | "Ti" | "TB" => 1 << 40,
        _ => return None,
    };
    let bytes = number * scale as f64;
    (bytes.is_finite() && bytes >= 0.0).then(|| bytes.round() as u64)
}

/// The VRAM per GPU of a model (normalized) from the static table.
pub fn static_vram_bytes(model: &str) -> Option<u64> {
    let model = normalize_gpu_model(model);
    STATIC_VRAM_GIB
        .iter()
        .find(|(m, _)| *m == model)
        .map(|(_, gib)| gib * GIB)
}

/// Parses a Kubernetes quantity into bytes (rounded up): decimal suffixes
/// `k M G T P E`, binary suffixes `Ki … Ei`, and `e<n>` exponents.
pub fn quantity_bytes(quantity: &Quantity) -> Option<u64> {
    let text = quantity.0.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: f64 = match suffix {
        "" => 1.0,
        "Ki" => 2f64.powi(10),
        "Mi" => 2f64.powi(20),
        "Gi" => 2f64.powi(30),
        "Ti" => 2f64.powi(40),
        "Pi" => 2f64.powi(50),
        "Ei" => 2f64.powi(60),
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse().ok()?),
        _ => return None,
    };
    let bytes = (number * scale).ceil();
    (bytes.is_finite() && bytes >= 0.0).then_some(bytes as u64)
}

/// One GPU model present in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// The extended resource that counts it (`amd.com/gpu`).
    pub resource_name: String,
    /// VRAM per GPU in bytes, from the node label or the static table;
    /// `None` when neither knows.
    pub vram_bytes: Option<u64>,
}

/// The GPU models of a cluster, keyed by model. The first node listed with
/// a model decides its VRAM.
pub fn cluster_gpus(nodes: &[Node]) -> BTreeMap<String, GpuInfo> {
    let mut gpus = BTreeMap::new();
    for node in nodes {
        let Some(labels) = node.metadata.labels.as_ref() else {
            continue;
        };
        let Some(model) = node_gpu_model(labels) else {
            continue;
        };
        gpus.entry(model.clone()).or_insert_with(|| {
            let labelled = [VRAM_LABEL, BETA_VRAM_LABEL]
                .iter()
                .find_map(|k| labels.get(*k).and_then(|v| parse_vram_label(v)));
            GpuInfo {
                resource_name: DEFAULT_GPU_RESOURCE.to_string(),
                vram_bytes: labelled.or_else(|| static_vram_bytes(&model)),
            }
        });
    }
    gpus
}

/// Whether hardware needs a GPU: `gpu.requests > 0` or a GPU model named.
pub fn requires_gpu(hardware: &HardwareRequirements) -> bool {
    hardware.gpu.as_ref().is_some_and(|g| {
        g.requests.unwrap_or(0) > 0 || g.model.as_deref().is_some_and(|m| !m.trim().is_empty())
    })
}

/// The outcome of the template's GPU check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuAvailability {
    /// The hardware needs a GPU and the cluster has a fitting one.
    Available,
    /// The hardware needs a GPU the cluster lacks. `reason` is
    /// [`REASON_GPU_NOT_AVAILABLE`] or [`REASON_VRAM_NOT_AVAILABLE`].
    NotAvailable {
        reason: &'static str,
        message: String,
    },
    /// The hardware needs no GPU.
    NotRequired,
}

fn describe(cluster: &BTreeMap<String, GpuInfo>) -> String {
    if cluster.is_empty() {
        "no node has AMD GPU labels".to_string()
    } else {
        let models: Vec<&str> = cluster.keys().map(String::as_str).collect();
        format!("the cluster has {}", models.join(", "))
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.0}Gi", bytes as f64 / GIB as f64)
}

/// Checks a template's hardware against the cluster's GPUs, in this order:
/// - no GPU needed → [`GpuAvailability::NotRequired`];
/// - `minVram` set and no cluster GPU has at least that much →
///   `VRAMNotAvailable` (also when `minVram` is not a valid quantity);
/// - no model named: any GPU present → available, none → `GPUNotAvailable`;
/// - the named model (normalized) present → available, else
///   `GPUNotAvailable`.
pub fn gpu_availability(
    hardware: &HardwareRequirements,
    cluster: &BTreeMap<String, GpuInfo>,
) -> GpuAvailability {
    if !requires_gpu(hardware) {
        return GpuAvailability::NotRequired;
    }
    let gpu = hardware.gpu.clone().unwrap_or_default();
    if let Some(min) = &gpu.min_vram {
        let Some(min_bytes) = quantity_bytes(min) else {
            return GpuAvailability::NotAvailable {
                reason: REASON_VRAM_NOT_AVAILABLE,
                message: format!(
                    "hardware.gpu.minVram \"{}\" is not a valid quantity; use a size such as 64Gi",
                    min.0
                ),
            };
        };
        if !cluster
            .values()
            .any(|g| g.vram_bytes.is_some_and(|v| v >= min_bytes))
        {
            return GpuAvailability::NotAvailable {
                reason: REASON_VRAM_NOT_AVAILABLE,
                message: format!(
                    "no GPU in the cluster has at least {} of VRAM (hardware.gpu.minVram); {}",
                    min.0,
                    describe_vram(cluster)
                ),
            };
        }
    }
    match gpu
        .model
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        None if cluster.is_empty() => GpuAvailability::NotAvailable {
            reason: REASON_GPU_NOT_AVAILABLE,
            message: format!(
                "the template needs {} GPU(s) but {}; add GPU nodes or run on CPU",
                gpu.requests.unwrap_or(0),
                describe(cluster)
            ),
        },
        None => GpuAvailability::Available,
        Some(model) => {
            let wanted = normalize_gpu_model(model);
            if cluster.contains_key(&wanted) {
                GpuAvailability::Available
            } else {
                GpuAvailability::NotAvailable {
                    reason: REASON_GPU_NOT_AVAILABLE,
                    message: format!(
                        "GPU model {wanted} (hardware.gpu.model) is not present in the cluster; {}",
                        describe(cluster)
                    ),
                }
            }
        }
    }
}

fn describe_vram(cluster: &BTreeMap<String, GpuInfo>) -> String {
    if cluster.is_empty() {
        return describe(cluster);
    }
    let models: Vec<String> = cluster
        .iter()
        .map(|(m, g)| match g.vram_bytes {
            Some(v) => format!("{m} ({})", gib(v)),
            None => format!("{m} (VRAM unknown)"),
        })
        .collect();
    format!("the cluster has {}", models.join(", "))
}

/// The node affinity of a template (`status.resolvedNodeAffinity`): one
/// required term `amd.com/gpu.device-id In [ids]`, the IDs sorted.
///
/// The IDs are those of `gpu.model`, or, with `minVram`, of every cluster
/// GPU model with at least that much VRAM. `None` when the hardware names
/// neither, or no ID is known.
pub fn node_affinity(
    hardware: &HardwareRequirements,
    cluster: &BTreeMap<String, GpuInfo>,
) -> Option<NodeAffinity> {
    let gpu = hardware.gpu.as_ref()?;
    let ids: BTreeSet<String> = match gpu
        .model
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        Some(model) => model_device_ids(model).into_iter().collect(),
        None => {
            let min = quantity_bytes(gpu.min_vram.as_ref()?)?;
            cluster
                .iter()
                .filter(|(_, g)| g.vram_bytes.is_some_and(|v| v >= min))
                .flat_map(|(m, _)| model_device_ids(m))
                .collect()
        }
    };
    if ids.is_empty() {
        return None;
    }
    Some(NodeAffinity {
        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: DEVICE_ID_LABEL.to_string(),
                    operator: "In".to_string(),
                    values: Some(ids.into_iter().collect()),
                }]),
                match_fields: None,
            }],
        }),
        preferred_during_scheduling_ignored_during_execution: None,
    })
}

/// The template's `status.hardwareSummary`: `"<n> x <model>"`, `"<model>"`
/// when no count is requested, `"<n> x GPU"` when no model is named, and
/// `"CPU"` when no GPU is needed.
pub fn hardware_summary(hardware: &HardwareRequirements) -> String {
    let gpu = hardware.gpu.as_ref();
    let count = gpu.and_then(|g| g.requests).unwrap_or(0);
    let model = gpu
        .and_then(|g| g.model.as_deref())
        .map(str::trim)
        .filter(|m| !m.is_empty());
    match (count, model) {
        (n, Some(model)) if n > 0 => format!("{n} x {model}"),
        (_, Some(model)) => model.to_string(),
        (n, None) if n > 0 => format!("{n} x GPU"),
        _ => "CPU".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aim_api::common::{CpuRequirements, GpuRequirements};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn node(pairs: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                labels: Some(labels(pairs)),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn hw(
        requests: Option<i32>,
        model: Option<&str>,
        min_vram: Option<&str>,
    ) -> HardwareRequirements {
        HardwareRequirements {
            gpu: Some(GpuRequirements {
                requests,
                model: model.map(Into::into),
                min_vram: min_vram.map(|q| Quantity(q.into())),
                resource_name: Some(DEFAULT_GPU_RESOURCE.into()),
            }),
            cpu: None,
        }
    }

    #[test]
    fn device_ids_map_to_models() {
        for (id, model) in [
            ("74a1", "MI300X"),
            ("0x74A1", "MI300X"),
            ("75b3", "MI355X"),
            ("75a0", "MI350X"),
            ("74b9", "MI325X"),
            ("7448", "W7900"),
            ("7550", "RX9070"),
            ("73a1", "V620"),
            ("7461", "V710"),
        ] {
            assert_eq!(device_id_model(id).as_deref(), Some(model), "{id}");
        }
        assert_eq!(device_id_model("0xBEEF").as_deref(), Some("AMD-BEEF"));
        assert_eq!(device_id_model(" "), None);
    }

    #[test]
    fn node_model_precedence() {
        assert_eq!(
            node_gpu_model(&labels(&[
                (DEVICE_ID_LABEL, "74a1"),
                (FAMILY_LABEL, "MI250X")
            ])),
            Some("MI300X".into())
        );
        assert_eq!(
            node_gpu_model(&labels(&[(BETA_DEVICE_ID_LABEL, "0x740c")])),
            Some("MI250X".into())
        );
        assert_eq!(
            node_gpu_model(&labels(&[
                ("amd.com/gpu.device-id.74a1", "0"),
                ("amd.com/gpu.device-id.75a3", "8"),
                (FAMILY_LABEL, "AI"),
            ])),
            Some("MI355X".into())
        );
        assert_eq!(
            node_gpu_model(&labels(&[(FAMILY_LABEL, "Instinct_MI300X")])),
            Some("MI300X".into())
        );
        assert_eq!(
            node_gpu_model(&labels(&[("beta.amd.com/gpu.family.MI210", "4")])),
            Some("MI210".into())
        );
        assert_eq!(
            node_gpu_model(&labels(&[("amd.com/gpu.device-id.74a1", "0")])),
            None
        );
        assert_eq!(
            node_gpu_model(&labels(&[("kubernetes.io/os", "linux")])),
            None
        );
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize_gpu_model("Instinct MI300X (rev 2)"), "MI300X");
        assert_eq!(normalize_gpu_model("amd_instinct_mi325x"), "MI325X");
        assert_eq!(normalize_gpu_model("AMD Radeon PRO W7900"), "W7900");
        assert_eq!(normalize_gpu_model("mi355x"), "MI355X");
        assert_eq!(normalize_gpu_model("AMD-74ff"), "AMD-74FF");
        assert_eq!(normalize_gpu_model(" weird gpu "), "WEIRD GPU");
    }

    #[test]
    fn vram_parsing() {
        assert_eq!(parse_vram_label("192G"), Some(192 * GIB));
        assert_eq!(parse_vram_label("1.5T"), Some(3 << 39));
        assert_eq!(parse_vram_label("64Gi"), Some(64 * GIB));
        assert_eq!(parse_vram_label("lots"), None);
        assert_eq!(quantity_bytes(&Quantity("64Gi".into())), Some(64 * GIB));
        assert_eq!(
            quantity_bytes(&Quantity("192G".into())),
            Some(192_000_000_000)
        );
        assert_eq!(quantity_bytes(&Quantity("1e3".into())), Some(1000));
        assert_eq!(quantity_bytes(&Quantity("big".into())), None);
    }

    #[test]
    fn cluster_map_first_node_wins_and_static_fallback() {
        let gpus = cluster_gpus(&[
            node(&[(DEVICE_ID_LABEL, "74a1"), (VRAM_LABEL, "191G")]),
            node(&[(DEVICE_ID_LABEL, "74a9"), (VRAM_LABEL, "999G")]),
            node(&[(FAMILY_LABEL, "MI210")]),
            node(&[(DEVICE_ID_LABEL, "beef")]),
            node(&[]),
            Node::default(),
        ]);
        assert_eq!(
            gpus.keys().map(String::as_str).collect::<Vec<_>>(),
            ["AMD-BEEF", "MI210", "MI300X"]
        );
        assert_eq!(gpus["MI300X"].vram_bytes, Some(191 * GIB));
        assert_eq!(gpus["MI300X"].resource_name, "amd.com/gpu");
        assert_eq!(gpus["MI210"].vram_bytes, Some(64 * GIB));
        assert_eq!(gpus["AMD-BEEF"].vram_bytes, None);
    }

    fn cluster() -> BTreeMap<String, GpuInfo> {
        cluster_gpus(&[
            node(&[(DEVICE_ID_LABEL, "74a1")]),
            node(&[(DEVICE_ID_LABEL, "740f")]),
        ])
    }

    #[test]
    fn availability_rules() {
        let c = cluster();
        assert_eq!(
            gpu_availability(&HardwareRequirements::default(), &c),
            GpuAvailability::NotRequired
        );
        assert_eq!(
            gpu_availability(&hw(Some(0), None, None), &c),
            GpuAvailability::NotRequired
        );
        let cpu = HardwareRequirements {
            gpu: None,
            cpu: Some(CpuRequirements {
                requests: Quantity("4".into()),
                limits: None,
            }),
        };
        assert_eq!(
            gpu_availability(&cpu, &BTreeMap::new()),
            GpuAvailability::NotRequired
        );
        assert_eq!(
            gpu_availability(&hw(Some(1), None, None), &c),
            GpuAvailability::Available
        );
        assert_eq!(
            gpu_availability(&hw(Some(1), Some("Instinct MI300X"), None), &c),
            GpuAvailability::Available
        );
        assert_eq!(
            gpu_availability(&hw(Some(0), Some("MI210"), None), &c),
            GpuAvailability::Available
        );
        match gpu_availability(&hw(Some(8), Some("MI355X"), None), &c) {
            GpuAvailability::NotAvailable { reason, message } => {
                assert_eq!(reason, "GPUNotAvailable");
                assert!(message.contains("MI355X"), "{message}");
                assert!(message.contains("MI210, MI300X"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match gpu_availability(&hw(Some(1), None, None), &BTreeMap::new()) {
            GpuAvailability::NotAvailable { reason, message } => {
                assert_eq!(reason, "GPUNotAvailable");
                assert!(message.contains("no node has AMD GPU labels"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn vram_availability() {
        let c = cluster();
        assert_eq!(
            gpu_availability(&hw(Some(1), None, Some("192Gi")), &c),
            GpuAvailability::Available
        );
        match gpu_availability(&hw(Some(1), None, Some("200Gi")), &c) {
            GpuAvailability::NotAvailable { reason, message } => {
                assert_eq!(reason, "VRAMNotAvailable");
                assert!(message.contains("200Gi"), "{message}");
                assert!(message.contains("MI300X (192Gi)"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match gpu_availability(&hw(Some(1), None, Some("lots")), &c) {
            GpuAvailability::NotAvailable { reason, message } => {
                assert_eq!(reason, "VRAMNotAvailable");
                assert!(
                    message.contains("hardware.gpu.minVram \"lots\""),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    fn affinity_ids(a: &NodeAffinity) -> Vec<String> {
        let term = &a
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms[0];
        let expr = &term.match_expressions.as_ref().unwrap()[0];
        assert_eq!(expr.key, "amd.com/gpu.device-id");
        assert_eq!(expr.operator, "In");
        expr.values.clone().unwrap()
    }

    #[test]
    fn affinity_by_model_and_by_vram() {
        let c = cluster();
        let a = node_affinity(&hw(Some(1), Some("mi300x"), None), &c).unwrap();
        assert_eq!(affinity_ids(&a), ["74a1", "74a9", "74b5", "74bd"]);
        let a = node_affinity(&hw(Some(1), None, Some("64Gi")), &c).unwrap();
        assert_eq!(
            affinity_ids(&a),
            ["740f", "7410", "74a1", "74a9", "74b5", "74bd"]
        );
        let a = node_affinity(&hw(Some(1), None, Some("100Gi")), &c).unwrap();
        assert_eq!(affinity_ids(&a), ["74a1", "74a9", "74b5", "74bd"]);
        assert_eq!(node_affinity(&hw(Some(1), None, Some("1Ti")), &c), None);
        assert_eq!(node_affinity(&hw(Some(1), None, None), &c), None);
        assert_eq!(node_affinity(&hw(Some(1), Some("H100"), None), &c), None);
        let a = node_affinity(&hw(Some(1), Some("AMD-BEEF"), None), &c).unwrap();
        assert_eq!(affinity_ids(&a), ["beef"]);
        assert_eq!(node_affinity(&HardwareRequirements::default(), &c), None);
    }

    #[test]
    fn summaries() {
        assert_eq!(
            hardware_summary(&hw(Some(2), Some("MI300X"), None)),
            "2 x MI300X"
        );
        assert_eq!(
            hardware_summary(&hw(Some(0), Some("MI300X"), None)),
            "MI300X"
        );
        assert_eq!(hardware_summary(&hw(None, Some("MI300X"), None)), "MI300X");
        assert_eq!(
            hardware_summary(&hw(Some(4), None, Some("64Gi"))),
            "4 x GPU"
        );
        assert_eq!(hardware_summary(&hw(Some(0), None, None)), "CPU");
        assert_eq!(hardware_summary(&HardwareRequirements::default()), "CPU");
    }

    proptest! {
        #[test]
        fn every_table_id_round_trips(idx in 0usize..DEVICE_IDS.len(), upper in any::<bool>(), prefix in any::<bool>()) {
            let (id, model) = DEVICE_IDS[idx];
            let mut text = if upper { id.to_uppercase() } else { id.to_string() };
            if prefix { text = format!("0x{text}"); }
            prop_assert_eq!(device_id_model(&text), Some(model.to_string()));
            prop_assert!(model_device_ids(model).contains(&id.to_string()));
            prop_assert_eq!(normalize_gpu_model(model), model);
        }
    }
}
