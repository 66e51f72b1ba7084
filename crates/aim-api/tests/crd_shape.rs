//! Tier 0: the generated CRDs match the committed YAML and carry AIM
//! Engine's names, scopes, short names, categories and printer columns.

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

fn repo_dir(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

/// The CRDs are committed twice: `deploy/crds` for kubectl users and the
/// Helm chart's `crds/`. Both must be exactly what the types generate.
#[test]
fn committed_crds_match_the_types() {
    for relative in ["deploy/crds", "deploy/chart/crds"] {
        let dir = repo_dir(relative);
        let expected = aim_api::crd_files();
        let mut stale = Vec::new();
        for (name, yaml) in &expected {
            let path = dir.join(name);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if &committed != yaml {
                stale.push(name.clone());
            }
        }
        let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{relative}: {e}"))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".aim.eai.amd.com.yaml"))
            .collect();
        let wanted: BTreeSet<String> = expected.iter().map(|(n, _)| n.clone()).collect();
        let extra: Vec<_> = on_disk.difference(&wanted).collect();
        assert!(
            stale.is_empty() && extra.is_empty(),
            "{relative} is out of date (changed: {stale:?}, extra: {extra:?}); regenerate with \
             `cargo run -p aim -- crds --out-dir deploy/crds && cargo run -p aim -- crds --out-dir deploy/chart/crds`"
        );
    }
}

fn crd(kind: &str) -> CustomResourceDefinition {
    aim_api::all_crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"))
}

fn columns(kind: &str) -> Vec<(String, String)> {
    crd(kind).spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.name, c.json_path))
        .collect()
}

#[test]
fn names_scopes_short_names_and_categories_follow_aim_engine() {
    let table = [
        ("AIMService", "Namespaced", "aimsvc"),
        ("AIMModel", "Namespaced", "aimmdl"),
        ("AIMClusterModel", "Cluster", "aimclmdl"),
        ("AIMServiceTemplate", "Namespaced", "aimtpl"),
        ("AIMClusterServiceTemplate", "Cluster", "aimcltpl"),
        ("AIMRuntimeConfig", "Namespaced", "aimrc"),
        ("AIMClusterRuntimeConfig", "Cluster", "aimclrc"),
        ("AIMTemplateCache", "Namespaced", "aimtc"),
        ("AIMArtifact", "Namespaced", "aimart"),
        ("AIMClusterModelSource", "Cluster", "aimclsrc"),
    ];
    assert_eq!(aim_api::all_crds().len(), table.len());
    for (kind, scope, short) in table {
        let c = crd(kind);
        assert_eq!(c.spec.scope, scope, "{kind} scope");
        assert_eq!(c.spec.group, "aim.eai.amd.com");
        assert_eq!(
            c.spec.names.short_names.clone().unwrap(),
            vec![short.to_string()]
        );
        assert_eq!(
            c.spec.names.categories.clone().unwrap(),
            vec!["aim".to_string(), "all".to_string()],
            "{kind} categories"
        );
        let plural = kind.to_lowercase() + "s";
        let plural = if kind == "AIMTemplateCache" {
            "aimtemplatecaches".to_string()
        } else {
            plural
        };
        assert_eq!(c.spec.names.plural, plural);
        assert_eq!(
            c.metadata.name.unwrap(),
            format!("{plural}.aim.eai.amd.com")
        );
        let v = &c.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind} status subresource"
        );
    }
}

#[test]
fn printer_columns_follow_aim_engine() {
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        columns("AIMService"),
        pairs(&[
            ("Status", ".status.status"),
            ("Model", ".status.resolvedModel.name"),
            ("Template", ".status.resolvedTemplate.name"),
            ("Replicas", ".status.runtime.replicas"),
            ("Age", ".metadata.creationTimestamp"),
        ])
    );
    assert_eq!(columns("AIMModel"), columns("AIMClusterModel"));
    assert_eq!(
        columns("AIMServiceTemplate"),
        columns("AIMClusterServiceTemplate")
    );
    assert_eq!(
        columns("AIMServiceTemplate")[2],
        (
            "Hardware".to_string(),
            ".status.hardwareSummary".to_string()
        )
    );
    assert!(columns("AIMRuntimeConfig").is_empty());
    let artifact = crd("AIMArtifact").spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap();
    let protocol = artifact.iter().find(|c| c.name == "Protocol").unwrap();
    assert_eq!(protocol.priority, Some(1));
    assert_eq!(
        columns("AIMClusterModelSource")[1],
        ("Models".to_string(), ".status.discoveredModels".to_string())
    );
}

#[test]
fn cluster_template_has_no_namespace_only_caching_field() {
    let spec_props = |kind: &str| {
        crd(kind).spec.versions[0]
            .schema
            .clone()
            .unwrap()
            .open_api_v3_schema
            .unwrap()
            .properties
            .unwrap()["spec"]
            .properties
            .clone()
            .unwrap()
    };
    assert!(spec_props("AIMServiceTemplate").contains_key("caching"));
    assert!(!spec_props("AIMClusterServiceTemplate").contains_key("caching"));
    assert!(spec_props("AIMClusterServiceTemplate").contains_key("modelName"));
}

#[test]
fn schemas_carry_no_nullable_markers() {
    let yaml = aim_api::all_crds_yaml();
    assert!(
        !yaml.contains("nullable"),
        "Option fields must not make the schema nullable"
    );
}
