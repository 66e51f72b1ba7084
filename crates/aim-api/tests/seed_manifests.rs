//! Tier 0: every AIMService manifest in the seed documents parses into the
//! Rust types, with defaults and the cache-mode mapping applied as AIM
//! Engine documents them. Tier 1 (`tier1_admission.rs`) applies the same
//! manifests to a real apiserver.

use std::path::PathBuf;

use aim_api::AIMService;
use aim_api::service::{CacheMode, CachingModeSpec};

/// `(file name, document)` for every AIMService in `examples/seeds/`.
fn seed_services() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/seeds");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("examples/seeds exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("aim-") || !name.ends_with(".yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in text.split("\n---\n") {
            if doc.contains("kind: AIMService\n") {
                out.push((name.clone(), doc.to_string()));
            }
        }
    }
    out
}

#[test]
fn every_seed_service_parses() {
    let manifests = seed_services();
    assert!(
        manifests.len() >= 14,
        "expected the seed examples, found {}",
        manifests.len()
    );
    for (origin, yaml) in manifests {
        let svc: AIMService =
            serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{origin}: {e}\n{yaml}"));
        let model = &svc.spec.model;
        let chosen = [
            model.name.is_some(),
            model.image.is_some(),
            model.custom.is_some(),
        ];
        assert_eq!(chosen.iter().filter(|b| **b).count(), 1, "{origin}");
    }
}

#[test]
fn legacy_cache_modes_map_to_the_two_real_ones() {
    assert_eq!(CachingModeSpec::Always.effective(), CacheMode::Shared);
    assert_eq!(CachingModeSpec::Auto.effective(), CacheMode::Shared);
    assert_eq!(CachingModeSpec::Shared.effective(), CacheMode::Shared);
    assert_eq!(CachingModeSpec::Never.effective(), CacheMode::Dedicated);
    assert_eq!(CachingModeSpec::Dedicated.effective(), CacheMode::Dedicated);
    let svc: AIMService = serde_yaml::from_str(
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: x}\nspec:\n  model: {image: a/b:1}\n",
    )
    .unwrap();
    assert_eq!(
        svc.spec.cache_mode(),
        CacheMode::Shared,
        "no caching block means Shared"
    );
    assert!(!svc.spec.autoscaling_enabled());
}
