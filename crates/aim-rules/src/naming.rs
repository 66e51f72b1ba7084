//! Derived object names, as AIM Engine derives them.
//!
//! Every child the operator creates is named `part1-part2-…-<hash>`: the
//! parts say what the object is, and the hash over its identifying inputs
//! keeps two objects apart whose parts sanitize to the same text. The exact
//! bytes matter only when adopting objects created by the Go operator, so
//! the hash inputs are encoded the way Go's `encoding/json` encodes them.

use aim_api::common::RuntimeParameters;
use aim_api::service::CustomModel;
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The longest name a Kubernetes object (an RFC 1123 label) may have.
pub const MAX_NAME_LEN: usize = 63;
/// The hash length of most derived names.
pub const DEFAULT_HASH_LEN: usize = 8;
/// What KServe appends to an InferenceService name when it names the
/// predictor's host (`-predictor-` before the namespace), and so what the
/// InferenceService name must leave room for.
const ISVC_RESERVED: usize = 11;
/// The shortest InferenceService name left after the namespace's share.
const ISVC_MIN_LEN: usize = 10;

/// A name could not be derived; the message names the input and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NamingError {
    #[error(
        "namespace too long: namespace \"{namespace}\" has {len} characters, which leaves \
         {available} for InferenceService names (63 - 11 - {len}); at least {min} are needed, \
         so use a namespace of at most {max_namespace} characters"
    )]
    NamespaceTooLong {
        namespace: String,
        len: usize,
        available: i64,
        min: usize,
        max_namespace: usize,
    },
    #[error(
        "spec.model.image is empty: set it to an image reference such as `registry/org/name:tag`"
    )]
    EmptyImage,
    #[error("spec.model.image \"{image}\" is not a valid image reference: {reason}")]
    InvalidImage { image: String, reason: String },
    #[error(
        "spec.model.custom.modelSources is empty: add one model source with a modelId and a sourceUri"
    )]
    NoModelSources,
}

/// Sanitizes one name part to an RFC 1123 label: lowercase, every character
/// other than `[a-z0-9-]` becomes `-`, `-` trimmed from both ends, cut to 63
/// characters and trailing `-` trimmed again. An empty result is `part`, so
/// that a derived name never has an empty component.
pub fn sanitize(part: &str) -> String {
    let label = sanitize_label(part);
    if label.is_empty() {
        "part".to_string()
    } else {
        label
    }
}

/// [`sanitize`] without the `part` fallback: the result may be empty. Path
/// segments use this, since an empty segment is simply dropped.
pub fn sanitize_label(value: &str) -> String {
    let mapped: String = value
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    // After mapping, the string is ASCII, so byte cuts are char cuts.
    let trimmed = mapped.trim_matches('-');
    let cut = &trimmed[..trimmed.len().min(MAX_NAME_LEN)];
    cut.trim_end_matches('-').to_string()
}

/// Whether `s` is a valid RFC 1123 label: 1–63 characters of `[a-z0-9-]`,
/// starting and ending with an alphanumeric.
pub fn is_rfc1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Encodes a JSON value exactly as Go's `encoding/json.Marshal` would:
/// compact; `<`, `>`, `&`, U+2028 and U+2029 escaped as `\u003c`, `\u003e`,
/// `\u0026`, `\u2028`, `\u2029`; `\b \f \n \r \t` as short escapes (Go
/// 1.22+), other control characters as `\u00xx`; object keys sorted (Go
/// sorts map keys); floats in Go's shortest form (`1` rather than `1.0`,
/// exponent form below 1e-6 and from 1e21 with a signed exponent).
///
/// Go structs encode their fields in declaration order, not sorted. Callers
/// hashing a struct whose Go field order is not alphabetical must encode it
/// themselves; none of the inputs this module hashes is such a struct.
pub fn go_json(value: &Value) -> String {
    let mut out = String::new();
    write_go_json(value, &mut out);
    out
}

fn write_go_json(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                out.push_str(&n.to_string());
            } else {
                out.push_str(&go_float(n.as_f64().unwrap_or(0.0)));
            }
        }
        Value::String(s) => write_go_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_string(key, out);
                out.push(':');
                write_go_json(&map[key], out);
            }
            out.push('}');
        }
    }
}

fn go_float(f: f64) -> String {
    let abs = f.abs();
    if abs == 0.0 || (1e-6..1e21).contains(&abs) {
        format!("{f}")
    } else {
        // Rust writes `1e21` / `1.5e-7`; Go writes `1e+21` / `1.5e-7`.
        let s = format!("{f:e}");
        match s.split_once('e') {
            Some((mantissa, exp)) if !exp.starts_with('-') => format!("{mantissa}e+{exp}"),
            _ => s,
        }
    }
}

fn write_go_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The first `hash_len` lower-hex characters of sha256 over the Go JSON
/// encodings of `inputs` joined by `|`. `hash_len` is capped at 64.
pub fn hash_inputs(inputs: &[Value], hash_len: usize) -> String {
    let joined = inputs.iter().map(go_json).collect::<Vec<_>>().join("|");
    let digest = Sha256::digest(joined.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..hash_len.min(hex.len())].to_string()
}

/// `GenerateDerivedName` (AIM Engine's): sanitize each part, hash the inputs, then
/// fit the result into `max_len` by cutting the currently longest part one
/// character at a time (the first of equally long parts; trailing `-`
/// trimmed after each cut) until `parts + "-" + hash` fits.
///
/// A part cut down to nothing is dropped rather than left as an empty
/// component (Go would produce `--` or a leading `-`, an invalid name). This
/// only happens when `max_len` leaves less than one character per part.
/// The result is a valid RFC 1123 label whenever `max_len <= 63` and
/// `hash_len >= 1`, and never longer than `max(max_len, hash_len)`.
pub fn derived_name(
    parts: &[&str],
    hash_inputs_: &[Value],
    hash_len: usize,
    max_len: usize,
) -> String {
    let hash = hash_inputs(hash_inputs_, hash_len);
    let mut parts: Vec<String> = parts.iter().map(|p| sanitize(p)).collect();
    let joined_len = |parts: &[String]| -> usize {
        parts.iter().map(String::len).sum::<usize>() + parts.len().saturating_sub(1)
    };
    while !parts.is_empty() && joined_len(&parts) + 1 + hash.len() > max_len {
        let longest =
            parts.iter().enumerate().fold(
                0,
                |best, (i, p)| if p.len() > parts[best].len() { i } else { best },
            );
        let part = &mut parts[longest];
        part.pop();
        let keep = part.trim_end_matches('-').len();
        part.truncate(keep);
        if part.is_empty() {
            parts.remove(longest);
        }
    }
    if parts.is_empty() {
        return hash;
    }
    format!("{}-{hash}", parts.join("-"))
}

fn string_input(s: &str) -> Value {
    Value::String(s.to_string())
}

/// The InferenceService of a service: `[service]`, hashed over the
/// namespace, at most `63 - 11 - len(namespace)` characters so that KServe's
/// derived host names still fit.
///
/// Fails when that leaves fewer than 10 characters ("namespace too long").
pub fn isvc_name(service: &str, namespace: &str) -> Result<String, NamingError> {
    let available = MAX_NAME_LEN as i64 - ISVC_RESERVED as i64 - namespace.len() as i64;
    if available < ISVC_MIN_LEN as i64 {
        return Err(NamingError::NamespaceTooLong {
            namespace: namespace.to_string(),
            len: namespace.len(),
            available,
            min: ISVC_MIN_LEN,
            max_namespace: MAX_NAME_LEN - ISVC_RESERVED - ISVC_MIN_LEN,
        });
    }
    Ok(derived_name(
        &[service],
        &[string_input(namespace)],
        DEFAULT_HASH_LEN,
        available as usize,
    ))
}

/// The HTTPRoute of a service: `[service]`, hashed over the namespace.
pub fn httproute_name(service: &str, namespace: &str) -> String {
    derived_name(
        &[service],
        &[string_input(namespace)],
        DEFAULT_HASH_LEN,
        MAX_NAME_LEN,
    )
}

/// An image reference split into the pieces names are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageParts {
    /// The first path segment when it looks like a host (contains `.` or
    /// `:`, or is `localhost`), else `docker.io`.
    pub registry: String,
    /// The path after the registry, without tag or digest (no implicit
    /// `library/` is added for Docker Hub).
    pub repository: String,
    /// The last path component, sanitized.
    pub name: String,
    /// The tag, else the first 6 hex characters of the digest, else
    /// `latest`; sanitized (so `0.8.5` becomes `0-8-5`). When an image has
    /// both a tag and a digest, the tag is used.
    pub tag: String,
}

/// Splits an image reference (`[registry/]path[:tag][@algo:hex]`), trimmed.
pub fn parse_image(image: &str) -> Result<ImageParts, NamingError> {
    let image = image.trim();
    if image.is_empty() {
        return Err(NamingError::EmptyImage);
    }
    let invalid = |reason: &str| NamingError::InvalidImage {
        image: image.to_string(),
        reason: reason.to_string(),
    };
    let (reference, digest) = match image.split_once('@') {
        Some((reference, digest)) => (reference, Some(digest)),
        None => (image, None),
    };
    let digest_short = match digest {
        None => None,
        Some(d) => {
            let (_algo, hex) = d
                .split_once(':')
                .ok_or_else(|| invalid("the digest after `@` must look like `sha256:<hex>`"))?;
            if hex.len() < 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    "the digest after `@` must have at least 6 hexadecimal characters",
                ));
            }
            Some(hex[..6].to_ascii_lowercase())
        }
    };
    let segments: Vec<&str> = reference.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(invalid("it has an empty path segment"));
    }
    let first = segments[0];
    let has_registry =
        segments.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost");
    let (registry, path) = if has_registry {
        (first.to_string(), &segments[1..])
    } else {
        ("docker.io".to_string(), &segments[..])
    };
    let last = path[path.len() - 1];
    let (name, tag) = match last.split_once(':') {
        Some((name, tag)) => {
            if name.is_empty() || tag.is_empty() {
                return Err(invalid("the name or the tag after `:` is empty"));
            }
            (name, Some(tag))
        }
        None => (last, None),
    };
    let mut repo_segments: Vec<&str> = path[..path.len() - 1].to_vec();
    repo_segments.push(name);
    let tag = tag
        .map(str::to_string)
        .or(digest_short)
        .unwrap_or_else(|| "latest".to_string());
    Ok(ImageParts {
        registry,
        repository: repo_segments.join("/"),
        name: sanitize(name),
        tag: sanitize(&tag),
    })
}

/// The AIMModel created for `spec.model.image`: `[name, tag]`, hashed over
/// the trimmed image string.
pub fn image_model_name(image: &str) -> Result<String, NamingError> {
    let parts = parse_image(image)?;
    Ok(derived_name(
        &[&parts.name, &parts.tag],
        &[string_input(image.trim())],
        DEFAULT_HASH_LEN,
        MAX_NAME_LEN,
    ))
}

/// The AIMModel created for `spec.model.custom`: `[modelSources[0].modelId]`,
/// hashed over the base image, then each source's modelId and sourceUri and
/// its literal `AWS_ENDPOINT_URL` env value when that is non-empty.
pub fn custom_model_name(custom: &CustomModel) -> Result<String, NamingError> {
    let first = custom
        .model_sources
        .first()
        .ok_or(NamingError::NoModelSources)?;
    let mut inputs = vec![string_input(&custom.base_image)];
    for source in &custom.model_sources {
        inputs.push(string_input(&source.model_id));
        inputs.push(string_input(&source.source_uri));
        let endpoint = source
            .env
            .iter()
            .find(|e| e.name == "AWS_ENDPOINT_URL")
            .and_then(|e| e.value.as_deref())
            .filter(|v| !v.is_empty());
        if let Some(endpoint) = endpoint {
            inputs.push(string_input(endpoint));
        }
    }
    Ok(derived_name(
        &[&first.model_id],
        &inputs,
        DEFAULT_HASH_LEN,
        MAX_NAME_LEN,
    ))
}

/// The template derived from `base` for a service's `overrides`:
/// `[base, "ovr", gpu-model-lowercase?, "<n>gpu"?, precision?, metric?]`,
/// hashed (4 characters) over `"gpu", model, "count", n, "precision", p,
/// "metric", m`, each pair only when present. A GPU count is present when
/// `requests > 0`.
///
/// `None` when the overrides set none of these, i.e. there is nothing to
/// derive and the base template is used as it is.
pub fn derived_template_name(base: &str, overrides: &RuntimeParameters) -> Option<String> {
    let gpu = overrides.hardware.as_ref().and_then(|h| h.gpu.as_ref());
    let model = gpu
        .and_then(|g| g.model.as_deref())
        .filter(|m| !m.is_empty());
    let count = gpu.and_then(|g| g.requests).filter(|n| *n > 0);
    let precision = overrides.precision.map(|p| p.as_str());
    let metric = overrides.metric.map(|m| m.as_str());

    let mut parts: Vec<String> = vec![base.to_string(), "ovr".to_string()];
    let mut inputs: Vec<Value> = Vec::new();
    if let Some(model) = model {
        parts.push(model.to_lowercase());
        inputs.extend([string_input("gpu"), string_input(model)]);
    }
    if let Some(count) = count {
        parts.push(format!("{count}gpu"));
        inputs.extend([string_input("count"), Value::from(count)]);
    }
    if let Some(precision) = precision {
        parts.push(precision.to_string());
        inputs.extend([string_input("precision"), string_input(precision)]);
    }
    if let Some(metric) = metric {
        parts.push(metric.to_string());
        inputs.extend([string_input("metric"), string_input(metric)]);
    }
    if inputs.is_empty() {
        return None;
    }
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    Some(derived_name(&parts, &inputs, 4, MAX_NAME_LEN))
}

/// The Shared AIMTemplateCache of a template in a namespace:
/// `[template]`, hashed over the namespace.
pub fn template_cache_name_shared(template: &str, namespace: &str) -> String {
    derived_name(
        &[template],
        &[string_input(namespace)],
        DEFAULT_HASH_LEN,
        MAX_NAME_LEN,
    )
}

/// The Dedicated AIMTemplateCache of one service: `[template, service]`,
/// hashed over the service's UID.
pub fn template_cache_name_dedicated(template: &str, service: &str, service_uid: &str) -> String {
    derived_name(
        &[template, service],
        &[string_input(service_uid)],
        DEFAULT_HASH_LEN,
        MAX_NAME_LEN,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aim_api::common::{GpuRequirements, HardwareRequirements, Metric, ModelSource, Precision};
    use k8s_openapi::api::core::v1::EnvVar;
    use proptest::prelude::*;
    use serde_json::json;

    fn sha_prefix(text: &str, n: usize) -> String {
        let digest = Sha256::digest(text.as_bytes());
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()[..n]
            .to_string()
    }

    #[test]
    fn worked_example_isvc_name() {
        assert_eq!(
            isvc_name("qwen-chat", "ml-team").unwrap(),
            "qwen-chat-a04542d9"
        );
    }

    #[test]
    fn httproute_and_shared_cache_hash_the_namespace() {
        assert_eq!(httproute_name("qwen-chat", "ml-team"), "qwen-chat-a04542d9");
        assert_eq!(
            template_cache_name_shared("qwen-tpl", "ml-team"),
            "qwen-tpl-a04542d9"
        );
    }

    #[test]
    fn dedicated_cache_hashes_the_uid() {
        let name = template_cache_name_dedicated("tpl", "svc", "uid-1");
        assert_eq!(name, format!("tpl-svc-{}", sha_prefix("\"uid-1\"", 8)));
        assert_ne!(name, template_cache_name_dedicated("tpl", "svc", "uid-2"));
    }

    #[test]
    fn sanitize_rules() {
        assert_eq!(sanitize("Qwen3_32B.Instruct"), "qwen3-32b-instruct");
        assert_eq!(sanitize("--a--"), "a");
        assert_eq!(sanitize("___"), "part");
        assert_eq!(sanitize(""), "part");
        assert_eq!(sanitize_label(""), "");
        let long = format!("{}-{}", "a".repeat(62), "b".repeat(10));
        // Cut to 63 leaves "aaa…a-", whose trailing dash is trimmed.
        assert_eq!(sanitize(&long), "a".repeat(62));
        assert_eq!(sanitize("Ünïcode"), "n-code");
    }

    #[test]
    fn go_json_escapes_html_characters() {
        assert_eq!(go_json(&json!("a<b>&c")), r#""a\u003cb\u003e\u0026c""#);
        assert_eq!(
            go_json(&json!("line\nsep\u{2028}\u{1}\"\\")),
            r#""line\nsep\u2028\u0001\"\\""#
        );
        assert_eq!(
            go_json(&json!({"b": 1, "a": [true, null]})),
            r#"{"a":[true,null],"b":1}"#
        );
        assert_eq!(go_json(&json!(1.0)), "1");
        assert_eq!(go_json(&json!(0.5)), "0.5");
        assert_eq!(go_json(&json!(1e21)), "1e+21");
        assert_eq!(go_json(&json!(1.5e-7)), "1.5e-7");
        // The hash follows the escaped form, not serde_json's.
        assert_eq!(
            hash_inputs(&[json!("<&>")], 8),
            sha_prefix(r#""\u003c\u0026\u003e""#, 8)
        );
        assert_ne!(hash_inputs(&[json!("<&>")], 8), sha_prefix(r#""<&>""#, 8));
    }

    #[test]
    fn hash_joins_inputs_with_pipes() {
        assert_eq!(
            hash_inputs(&[json!("a"), json!(2), json!("b")], 10),
            sha_prefix(r#""a"|2|"b""#, 10)
        );
        assert_eq!(hash_inputs(&[json!("a")], 100).len(), 64);
    }

    #[test]
    fn long_names_are_fitted_by_cutting_the_longest_part() {
        let name = derived_name(&[&"x".repeat(80), "short"], &[json!("h")], 8, 63);
        assert_eq!(name.len(), 63);
        assert!(name.starts_with(&"x".repeat(48)));
        assert!(name.ends_with(&format!("-short-{}", sha_prefix("\"h\"", 8))));
        assert!(is_rfc1123_label(&name));
    }

    #[test]
    fn fitting_trims_dashes_left_at_the_cut() {
        // Cutting "aaaa-bbbb" to 5 leaves "aaaa-", which must lose its dash.
        let name = derived_name(&["aaaa-bbbb"], &[json!("h")], 4, 10);
        assert_eq!(name, format!("aaaa-{}", sha_prefix("\"h\"", 4)));
    }

    #[test]
    fn isvc_name_leaves_room_for_the_namespace() {
        let ns = "n".repeat(30);
        let name = isvc_name(&"s".repeat(60), &ns).unwrap();
        assert_eq!(name.len(), 63 - 11 - 30);
        let ok = "n".repeat(42);
        assert_eq!(isvc_name("svc", &ok).unwrap().len(), 10);
    }

    #[test]
    fn isvc_name_rejects_long_namespaces() {
        let ns = "n".repeat(43);
        let err = isvc_name("svc", &ns).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("namespace too long"), "{msg}");
        assert!(msg.contains(&ns), "{msg}");
        assert!(msg.contains("at most 42"), "{msg}");
    }

    #[test]
    fn parse_image_variants() {
        let p = parse_image("amdenterpriseai/aim-qwen-qwen3-32b:0.8.5").unwrap();
        assert_eq!(
            p,
            ImageParts {
                registry: "docker.io".into(),
                repository: "amdenterpriseai/aim-qwen-qwen3-32b".into(),
                name: "aim-qwen-qwen3-32b".into(),
                tag: "0-8-5".into(),
            }
        );
        let p = parse_image("localhost:5000/org/Model_X").unwrap();
        assert_eq!(p.registry, "localhost:5000");
        assert_eq!(p.repository, "org/Model_X");
        assert_eq!(p.name, "model-x");
        assert_eq!(p.tag, "latest");
        let p = parse_image("localhost/m").unwrap();
        assert_eq!(p.registry, "localhost");
        let p = parse_image("ghcr.io/a/b@sha256:ABCDEF0123").unwrap();
        assert_eq!(p.tag, "abcdef");
        assert_eq!(p.repository, "a/b");
        let p = parse_image("  ghcr.io/a/b:v1@sha256:abcdef0123  ").unwrap();
        assert_eq!(p.tag, "v1");
        let p = parse_image("ubuntu").unwrap();
        assert_eq!(
            (p.registry.as_str(), p.name.as_str()),
            ("docker.io", "ubuntu")
        );
    }

    #[test]
    fn parse_image_errors_name_the_field() {
        assert_eq!(parse_image("  "), Err(NamingError::EmptyImage));
        assert!(
            NamingError::EmptyImage
                .to_string()
                .contains("spec.model.image")
        );
        for bad in [
            "a//b",
            "a/b:",
            "a/b@sha256:xyz",
            "a/b@nodigest",
            "a/b@sha256:abc",
        ] {
            let err = parse_image(bad).unwrap_err();
            assert!(matches!(err, NamingError::InvalidImage { .. }), "{bad}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn image_model_name_hashes_the_trimmed_image() {
        let image = "amdenterpriseai/aim-qwen-qwen3-32b:0.8.5";
        let expected = format!(
            "aim-qwen-qwen3-32b-0-8-5-{}",
            sha_prefix(&format!("\"{image}\""), 8)
        );
        assert_eq!(image_model_name(image).unwrap(), expected);
        assert_eq!(image_model_name(&format!(" {image}\n")).unwrap(), expected);
    }

    fn source(id: &str, uri: &str, endpoint: Option<&str>) -> ModelSource {
        ModelSource {
            model_id: id.into(),
            source_uri: uri.into(),
            size: None,
            env: endpoint
                .map(|v| {
                    vec![EnvVar {
                        name: "AWS_ENDPOINT_URL".into(),
                        value: Some(v.into()),
                        value_from: None,
                    }]
                })
                .unwrap_or_default(),
        }
    }

    #[test]
    fn custom_model_name_inputs() {
        let mut custom = CustomModel {
            base_image: "ghcr.io/amd/aim-base:1".into(),
            model_sources: vec![source("Qwen/Qwen3-8B", "hf://Qwen/Qwen3-8B", None)],
            hardware: HardwareRequirements::default(),
        };
        let plain = custom_model_name(&custom).unwrap();
        assert_eq!(
            plain,
            format!(
                "qwen-qwen3-8b-{}",
                sha_prefix(
                    r#""ghcr.io/amd/aim-base:1"|"Qwen/Qwen3-8B"|"hf://Qwen/Qwen3-8B""#,
                    8
                )
            )
        );
        custom.model_sources[0] = source("Qwen/Qwen3-8B", "hf://Qwen/Qwen3-8B", Some(""));
        assert_eq!(custom_model_name(&custom).unwrap(), plain);
        custom.model_sources[0] = source(
            "Qwen/Qwen3-8B",
            "hf://Qwen/Qwen3-8B",
            Some("http://minio:9000"),
        );
        assert_eq!(
            custom_model_name(&custom).unwrap(),
            format!(
                "qwen-qwen3-8b-{}",
                sha_prefix(
                    r#""ghcr.io/amd/aim-base:1"|"Qwen/Qwen3-8B"|"hf://Qwen/Qwen3-8B"|"http://minio:9000""#,
                    8
                )
            )
        );
        custom.model_sources.clear();
        assert_eq!(custom_model_name(&custom), Err(NamingError::NoModelSources));
    }

    #[test]
    fn derived_template_names() {
        assert_eq!(
            derived_template_name("base", &RuntimeParameters::default()),
            None
        );
        // Hardware without model or count gives no parts either.
        let cpu_only = RuntimeParameters {
            hardware: Some(HardwareRequirements {
                gpu: Some(GpuRequirements {
                    requests: Some(0),
                    ..Default::default()
                }),
                cpu: None,
            }),
            ..Default::default()
        };
        assert_eq!(derived_template_name("base", &cpu_only), None);

        let full = RuntimeParameters {
            metric: Some(Metric::Latency),
            precision: Some(Precision::Fp8),
            hardware: Some(HardwareRequirements {
                gpu: Some(GpuRequirements {
                    requests: Some(2),
                    model: Some("MI300X".into()),
                    ..Default::default()
                }),
                cpu: None,
            }),
        };
        assert_eq!(
            derived_template_name("qwen-tpl", &full).unwrap(),
            format!(
                "qwen-tpl-ovr-mi300x-2gpu-fp8-latency-{}",
                sha_prefix(
                    r#""gpu"|"MI300X"|"count"|2|"precision"|"fp8"|"metric"|"latency""#,
                    4
                )
            )
        );
        let metric_only = RuntimeParameters {
            metric: Some(Metric::Throughput),
            ..Default::default()
        };
        assert_eq!(
            derived_template_name("t", &metric_only).unwrap(),
            format!(
                "t-ovr-throughput-{}",
                sha_prefix(r#""metric"|"throughput""#, 4)
            )
        );
    }

    proptest! {
        #[test]
        fn derived_names_fit_and_are_labels(
            parts in proptest::collection::vec(".{0,80}", 1..4),
            input in ".{0,20}",
            hash_len in 1usize..=12,
            max_len in 30usize..=63,
        ) {
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            let name = derived_name(&refs, &[Value::String(input)], hash_len, max_len);
            prop_assert!(name.len() <= max_len, "{} > {}", name.len(), max_len);
            prop_assert!(is_rfc1123_label(&name), "{name}");
        }

        #[test]
        fn sanitize_is_idempotent_and_valid(s in ".{0,100}") {
            let once = sanitize(&s);
            prop_assert!(is_rfc1123_label(&once), "{once}");
            prop_assert_eq!(sanitize(&once), once.clone());
        }

        #[test]
        fn tiny_limits_still_give_labels(parts in proptest::collection::vec("[a-z]{1,10}", 1..6), max_len in 1usize..20) {
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            let name = derived_name(&refs, &[json!("x")], 8, max_len);
            prop_assert!(is_rfc1123_label(&name), "{name}");
            prop_assert!(name.len() <= max_len.max(8));
        }
    }
}
