//! Turning the configuration prometheus-operator generates for a Prometheus
//! pod into one a local Prometheus process can load. Pure: bytes and
//! objects in, files out.
//!
//! In a cluster, the operator writes the configuration gzipped into the
//! Secret `prometheus-<name>` and the rule files into ConfigMaps
//! `prometheus-<name>-rulefiles-<n>`; the pod mounts the ConfigMaps under
//! `/etc/prometheus/rules/<configmap>/`, and its config-reloader sidecar
//! unzips the Secret, substitutes `$(POD_NAME)` and `$(SHARD)` from its
//! environment and asks Prometheus to reload. The bed's bridge does the
//! reloader's part here, plus what a process outside the cluster needs:
//! the Kubernetes service discovery reads the API through the cluster's
//! kubeconfig (there is no in-cluster service account), and the rule files
//! sit in a local directory laid out like the pod's mount.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

/// Where the pod mounts the rule ConfigMaps (prometheus-operator's
/// `RulesDir`).
pub const POD_RULES_DIR: &str = "/etc/prometheus/rules/";
/// Paths of the Prometheus pod's own filesystem that a local process does
/// not have.
const POD_PATHS: [&str; 2] = ["/etc/prometheus/", "/var/run/secrets/"];
/// The Secret key holding the gzipped configuration.
pub const CONFIG_KEY: &str = "prometheus.yaml.gz";

/// What the local process stands in for.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The cluster's admin kubeconfig, for every `kubernetes_sd_configs`.
    pub kubeconfig: PathBuf,
    /// The directory standing in for `/etc/prometheus/rules/`.
    pub rules_dir: PathBuf,
    /// `$(POD_NAME)`: the name the StatefulSet's first pod would have.
    pub pod_name: String,
}

/// A configuration ready to load, and the rule files it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub config: String,
    /// Paths relative to [`Layout::rules_dir`] (`<configmap>/<key>`).
    pub rule_files: Vec<(PathBuf, String)>,
}

/// Identifies the operator's output, so an unchanged input is not
/// reloaded and a refused one is not retried until it changes. It also
/// names the directory of that generation's rule files.
pub fn fingerprint(
    generated: &str,
    rule_configmaps: &BTreeMap<String, BTreeMap<String, String>>,
) -> u64 {
    // SipHash with fixed keys: the same input gives the same value for the
    // life of the bridge (which is all a fingerprint has to outlive).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    generated.hash(&mut h);
    rule_configmaps.hash(&mut h);
    h.finish()
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error(
        "Secret {secret} has no key {CONFIG_KEY}; prometheus-operator writes it there (is the Prometheus object reconciled? see the prometheus-operator log)"
    )]
    MissingKey { secret: String },
    #[error("{CONFIG_KEY} of Secret {secret} is not valid gzip: {detail}")]
    NotGzip { secret: String, detail: String },
    #[error("the generated configuration is not valid YAML: {0}")]
    NotYaml(String),
    #[error("the generated configuration is not a YAML mapping")]
    NotMapping,
    #[error(
        "the generated configuration refers to $({0}), which only POD_NAME and SHARD replace (the variables prometheus-operator's config reloader sets)"
    )]
    UnknownVariable(String),
    #[error(
        "{field} is {value:?}, a path inside the Prometheus pod that the local process does not have; the bed supports scrape configs without TLS files or credentials files"
    )]
    PodPath { field: String, value: String },
}

/// Unzips the operator's Secret data.
pub fn unzip(secret: &str, data: Option<&[u8]>) -> Result<String, ConfigError> {
    let bytes = data.ok_or_else(|| ConfigError::MissingKey {
        secret: secret.to_string(),
    })?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(|e| ConfigError::NotGzip {
            secret: secret.to_string(),
            detail: e.to_string(),
        })?;
    Ok(text)
}

/// The operator's configuration text and its rule ConfigMaps (name → data)
/// as the local process loads them.
pub fn render(
    generated: &str,
    rule_configmaps: &BTreeMap<String, BTreeMap<String, String>>,
    layout: &Layout,
) -> Result<Rendered, ConfigError> {
    let expanded = expand_variables(generated, &layout.pod_name)?;
    let mut doc: Value =
        serde_yaml::from_str(&expanded).map_err(|e| ConfigError::NotYaml(e.to_string()))?;
    if !doc.is_mapping() {
        return Err(ConfigError::NotMapping);
    }
    add_kubeconfig(&mut doc, &layout.kubeconfig);
    if let Some(Value::Sequence(files)) = doc.get_mut("rule_files") {
        for file in files.iter_mut() {
            if let Some(path) = file.as_str().and_then(|p| p.strip_prefix(POD_RULES_DIR)) {
                *file = Value::String(layout.rules_dir.join(path).display().to_string());
            }
        }
    }
    reject_pod_paths(&doc, "")?;
    let config = serde_yaml::to_string(&doc).map_err(|e| ConfigError::NotYaml(e.to_string()))?;
    let rule_files = rule_configmaps
        .iter()
        .flat_map(|(name, data)| {
            data.iter()
                .map(move |(key, text)| (Path::new(name).join(key), text.clone()))
        })
        .collect();
    Ok(Rendered { config, rule_files })
}

/// `$(NAME)` as prometheus-operator's config reloader substitutes it, for
/// the two variables it sets on a Prometheus pod. Any other reference would
/// fail there too.
fn expand_variables(text: &str, pod_name: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("$(") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if name_len == 0 || !after[name_len..].starts_with(')') {
            // Not a reference (e.g. a regex group after a `$`): kept as is.
            out.push_str("$(");
            rest = after;
            continue;
        }
        match &after[..name_len] {
            "POD_NAME" => out.push_str(pod_name),
            "SHARD" => out.push('0'),
            other => return Err(ConfigError::UnknownVariable(other.to_string())),
        }
        rest = &after[name_len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Every `kubernetes_sd_configs` entry, wherever it is (scrape configs,
/// Alertmanager discovery), reads the API through the kubeconfig. An entry
/// that names its own `api_server` keeps it: the two are exclusive.
fn add_kubeconfig(value: &mut Value, kubeconfig: &Path) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map.iter_mut() {
                if key.as_str() == Some("kubernetes_sd_configs")
                    && let Value::Sequence(entries) = child
                {
                    for entry in entries.iter_mut() {
                        if let Value::Mapping(sd) = entry
                            && !sd.contains_key("api_server")
                        {
                            sd.insert(
                                "kubeconfig_file".into(),
                                kubeconfig.display().to_string().into(),
                            );
                        }
                    }
                } else {
                    add_kubeconfig(child, kubeconfig);
                }
            }
        }
        Value::Sequence(items) => items
            .iter_mut()
            .for_each(|item| add_kubeconfig(item, kubeconfig)),
        _ => {}
    }
}

/// A path of the pod's filesystem left after the rewrite (a TLS file, a
/// bearer token file) would fail the reload with a message about a missing
/// file; naming the field says what to change.
fn reject_pod_paths(value: &Value, field: &str) -> Result<(), ConfigError> {
    match value {
        Value::String(s) if POD_PATHS.iter().any(|p| s.starts_with(p)) => {
            Err(ConfigError::PodPath {
                field: field.trim_start_matches('.').to_string(),
                value: s.clone(),
            })
        }
        Value::Mapping(map) => map_children(map)
            .try_for_each(|(key, child)| reject_pod_paths(child, &format!("{field}.{key}"))),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| reject_pod_paths(item, &format!("{field}[{i}]"))),
        _ => Ok(()),
    }
}

fn map_children(map: &Mapping) -> impl Iterator<Item = (String, &Value)> {
    map.iter().map(|(k, v)| {
        let key = match k {
            Value::String(s) => s.clone(),
            other => serde_yaml::to_string(other)
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        (key, v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The shape prometheus-operator v0.85 generates for a PodMonitor and a
    /// ServiceMonitor with one rule ConfigMap (abridged).
    const GENERATED: &str = r#"global:
  evaluation_interval: 15s
  scrape_interval: 15s
  external_labels:
    prometheus: monitoring/aim
    prometheus_replica: $(POD_NAME)
rule_files:
- /etc/prometheus/rules/prometheus-aim-rulefiles-0/*.yaml
scrape_configs:
- job_name: podMonitor/aim-system/aim-inference/0
  kubernetes_sd_configs:
  - role: pod
  relabel_configs:
  - source_labels: [__tmp_hash, __tmp_disable_sharding]
    regex: $(SHARD);|.+;.+
    action: keep
  - target_label: x
    replacement: $1
- job_name: serviceMonitor/keda/aim-scaler/0
  kubernetes_sd_configs:
  - role: endpointslice
    namespaces:
      names: [keda]
"#;

    fn layout() -> Layout {
        Layout {
            kubeconfig: "/c/kubeconfig".into(),
            rules_dir: "/c/prometheus/rules/abc".into(),
            pod_name: "prometheus-aim-0".into(),
        }
    }

    fn rules() -> BTreeMap<String, BTreeMap<String, String>> {
        BTreeMap::from([(
            "prometheus-aim-rulefiles-0".to_string(),
            BTreeMap::from([(
                "aim-system-aim-scaling.yaml".to_string(),
                "groups: []\n".to_string(),
            )]),
        )])
    }

    fn rendered() -> Value {
        let out = render(GENERATED, &rules(), &layout()).unwrap();
        serde_yaml::from_str(&out.config).unwrap()
    }

    #[test]
    fn every_kubernetes_discovery_reads_through_the_kubeconfig() {
        let doc = rendered();
        for job in doc["scrape_configs"].as_sequence().unwrap() {
            assert_eq!(
                job["kubernetes_sd_configs"][0]["kubeconfig_file"], "/c/kubeconfig",
                "{job:?}"
            );
        }
        // The rest of the entry is the operator's.
        assert_eq!(
            doc["scrape_configs"][1]["kubernetes_sd_configs"][0]["namespaces"]["names"][0],
            "keda"
        );
    }

    #[test]
    fn rule_files_point_at_the_local_copy_of_the_mount() {
        let out = render(GENERATED, &rules(), &layout()).unwrap();
        let doc: Value = serde_yaml::from_str(&out.config).unwrap();
        assert_eq!(
            doc["rule_files"][0],
            "/c/prometheus/rules/abc/prometheus-aim-rulefiles-0/*.yaml"
        );
        assert_eq!(
            out.rule_files,
            vec![(
                PathBuf::from("prometheus-aim-rulefiles-0/aim-system-aim-scaling.yaml"),
                "groups: []\n".to_string()
            )]
        );
    }

    #[test]
    fn the_reloaders_variables_are_substituted_and_regex_groups_kept() {
        let doc = rendered();
        assert_eq!(
            doc["global"]["external_labels"]["prometheus_replica"],
            "prometheus-aim-0"
        );
        let relabel = &doc["scrape_configs"][0]["relabel_configs"];
        assert_eq!(relabel[0]["regex"], "0;|.+;.+");
        assert_eq!(relabel[1]["replacement"], "$1");
        assert_eq!(
            expand_variables("a$(b c $( $(X", "p").unwrap(),
            "a$(b c $( $(X"
        );
    }

    #[test]
    fn an_unknown_variable_is_refused_by_name() {
        let err = render("global: {x: $(NODE_NAME)}\n", &BTreeMap::new(), &layout()).unwrap_err();
        assert_eq!(err, ConfigError::UnknownVariable("NODE_NAME".into()));
        assert!(err.to_string().contains("$(NODE_NAME)"), "{err}");
    }

    #[test]
    fn a_pod_path_left_over_is_refused_naming_the_field() {
        let text = "scrape_configs:\n- job_name: x\n  tls_config:\n    ca_file: /etc/prometheus/certs/secret_ns_ca\n";
        let err = render(text, &BTreeMap::new(), &layout()).unwrap_err();
        assert_eq!(
            err,
            ConfigError::PodPath {
                field: "scrape_configs[0].tls_config.ca_file".into(),
                value: "/etc/prometheus/certs/secret_ns_ca".into()
            }
        );
    }

    #[test]
    fn broken_input_is_an_error_not_a_config() {
        assert!(matches!(
            render("scrape_configs: [\n", &BTreeMap::new(), &layout()),
            Err(ConfigError::NotYaml(_))
        ));
        assert_eq!(
            render("- a\n", &BTreeMap::new(), &layout()),
            Err(ConfigError::NotMapping)
        );
        let err = unzip("monitoring/prometheus-aim", Some(b"plain text")).unwrap_err();
        assert!(matches!(err, ConfigError::NotGzip { .. }), "{err}");
        let err = unzip("monitoring/prometheus-aim", None).unwrap_err();
        assert!(err.to_string().contains("prometheus.yaml.gz"), "{err}");
    }

    #[test]
    fn gzip_round_trip_and_fingerprint_follow_the_content() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(GENERATED.as_bytes()).unwrap();
        let bytes = gz.finish().unwrap();
        assert_eq!(unzip("s", Some(&bytes)).unwrap(), GENERATED);
        let a = fingerprint(GENERATED, &rules());
        assert_eq!(a, fingerprint(GENERATED, &rules()));
        let mut other_rules = rules();
        other_rules
            .get_mut("prometheus-aim-rulefiles-0")
            .unwrap()
            .insert("b.yaml".into(), "groups: []\n".into());
        assert_ne!(a, fingerprint(GENERATED, &other_rules));
        assert_ne!(a, fingerprint("global: {}\n", &rules()));
    }
}
