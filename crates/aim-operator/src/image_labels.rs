//! Image config labels to `ImageMetadata`, as AIM Engine reads them. Pure: the
//! registry client hands over the label map, this turns it into metadata or
//! a typed error naming the label and the fix.

use std::collections::BTreeMap;

use aim_api::common::{ImageMetadata, ModelMetadata, OciMetadata, RecommendedDeployment};

/// Label prefixes, tried in this order for every suffix.
pub const PREFIXES: [&str; 2] = ["com.amd.aim.", "org.amd.silogen."];
const OCI_PREFIX: &str = "org.opencontainers.image.";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error(
        "image label {label} is not a JSON array of deployments ({reason}): rebuild the image with a label like [{{\"gpuModel\":\"MI300X\",\"gpuCount\":1,\"precision\":\"fp8\",\"metric\":\"latency\"}}], or set spec.imageMetadata on the model"
    )]
    RecommendedDeployments { label: String, reason: String },
    #[error(
        "image label {label} has {value:?}, which is not a boolean: rebuild the image with true or false, or set spec.imageMetadata on the model"
    )]
    NotBool { label: String, value: String },
}

/// The first label `<prefix><suffix>` present, with its full key.
fn aim_label<'a>(labels: &'a BTreeMap<String, String>, suffix: &str) -> Option<(String, &'a str)> {
    PREFIXES.iter().find_map(|p| {
        let key = format!("{p}{suffix}");
        labels.get(&key).map(|v| (key, v.as_str()))
    })
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses `recommendedDeployments`: single quotes become double quotes and a
/// missing `[`…`]` is added, as images in the wild carry both spellings.
pub fn parse_deployments(
    label: &str,
    value: &str,
) -> Result<Vec<RecommendedDeployment>, LabelError> {
    let mut text = value.trim().replace('\'', "\"");
    if text.is_empty() {
        return Ok(Vec::new());
    }
    if !text.starts_with('[') {
        text = format!("[{text}]");
    }
    serde_json::from_str(&text).map_err(|e| LabelError::RecommendedDeployments {
        label: label.to_string(),
        reason: e.to_string(),
    })
}

/// Metadata from an image's config labels. An image without labels gives
/// empty metadata (no templates expected), not an error.
pub fn metadata_from_labels(
    labels: &BTreeMap<String, String>,
) -> Result<ImageMetadata, LabelError> {
    let text = |suffix: &str| aim_label(labels, suffix).map(|(_, v)| v.to_string());
    let hf_token_required = match aim_label(labels, "hfToken.required") {
        None => None,
        Some((key, v)) => match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" | "" => Some(false),
            _ => {
                return Err(LabelError::NotBool {
                    label: key,
                    value: v.to_string(),
                });
            }
        },
    };
    let recommended_deployments = match aim_label(labels, "model.recommendedDeployments") {
        Some((key, v)) => parse_deployments(&key, v)?,
        None => Vec::new(),
    };
    let model = ModelMetadata {
        canonical_name: text("model.canonicalName"),
        source: text("model.source"),
        tags: text("model.tags").map(|v| list(&v)).unwrap_or_default(),
        versions: text("model.versions").map(|v| list(&v)).unwrap_or_default(),
        variants: text("model.variants").map(|v| list(&v)).unwrap_or_default(),
        hf_token_required,
        title: text("title"),
        description_full: text("description.full"),
        release_notes: text("release.notes"),
        recommended_deployments,
    };
    let oci_text = |suffix: &str| labels.get(&format!("{OCI_PREFIX}{suffix}")).cloned();
    let oci = OciMetadata {
        title: oci_text("title"),
        description: oci_text("description"),
        licenses: oci_text("licenses"),
        vendor: oci_text("vendor"),
        authors: oci_text("authors"),
        source: oci_text("source"),
        documentation: oci_text("documentation"),
        created: oci_text("created"),
        revision: oci_text("revision"),
        version: oci_text("version"),
    };
    Ok(ImageMetadata {
        model: Some(model),
        oci: Some(oci),
        original_labels: Some(labels.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn aim_prefix_wins_over_silogen() {
        let m = metadata_from_labels(&labels(&[
            ("org.amd.silogen.model.canonicalName", "old/name"),
            ("com.amd.aim.model.canonicalName", "new/name"),
            ("org.amd.silogen.title", "Only silogen"),
        ]))
        .unwrap();
        let model = m.model.unwrap();
        assert_eq!(model.canonical_name.as_deref(), Some("new/name"));
        assert_eq!(model.title.as_deref(), Some("Only silogen"));
    }

    #[test]
    fn lists_are_split_and_trimmed() {
        let m = metadata_from_labels(&labels(&[
            ("com.amd.aim.model.tags", " chat, text ,,code"),
            ("com.amd.aim.model.versions", "1.0"),
        ]))
        .unwrap();
        let model = m.model.unwrap();
        assert_eq!(model.tags, vec!["chat", "text", "code"]);
        assert_eq!(model.versions, vec!["1.0"]);
        assert!(model.variants.is_empty());
    }

    #[test]
    fn single_quotes_and_missing_brackets_are_fixed() {
        let d = parse_deployments(
            "l",
            "{'gpuModel': 'MI300X', 'gpuCount': 1, 'precision': 'fp8', 'metric': 'latency'}",
        )
        .unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].gpu_model.as_deref(), Some("MI300X"));
        assert_eq!(d[0].gpu_count, Some(1));
    }

    #[test]
    fn bad_deployment_json_names_the_label() {
        let e = metadata_from_labels(&labels(&[(
            "org.amd.silogen.model.recommendedDeployments",
            "[{gpuModel: MI300X",
        )]))
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("org.amd.silogen.model.recommendedDeployments"),
            "{text}"
        );
        assert!(text.contains("spec.imageMetadata"), "{text}");
    }

    #[test]
    fn oci_keys_and_original_labels() {
        let l = labels(&[
            ("org.opencontainers.image.version", "0.8.5"),
            ("org.opencontainers.image.licenses", "MIT"),
            ("unrelated", "x"),
        ]);
        let m = metadata_from_labels(&l).unwrap();
        let oci = m.oci.unwrap();
        assert_eq!(oci.version.as_deref(), Some("0.8.5"));
        assert_eq!(oci.licenses.as_deref(), Some("MIT"));
        assert_eq!(m.original_labels.unwrap(), l);
    }

    #[test]
    fn no_labels_is_empty_metadata() {
        let m = metadata_from_labels(&BTreeMap::new()).unwrap();
        assert!(m.model.unwrap().recommended_deployments.is_empty());
    }

    #[test]
    fn hf_token_required_must_be_boolean() {
        let ok = metadata_from_labels(&labels(&[("com.amd.aim.hfToken.required", "True")]));
        assert_eq!(ok.unwrap().model.unwrap().hf_token_required, Some(true));
        let bad = metadata_from_labels(&labels(&[("com.amd.aim.hfToken.required", "maybe")]));
        assert!(matches!(bad, Err(LabelError::NotBool { .. })));
    }
}
