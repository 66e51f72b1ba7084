//! The HTTPRoute path prefix of a service.
//!
//! A `pathTemplate` such as `/{.metadata.namespace}/chat/{.metadata.name}`
//! is rendered against the AIMService object (as JSON). The docs promise
//! that the path is lowercased, URL-encoded and at most 200 characters, and
//! that a label or field that does not exist degrades the service. AIM
//! Engine's code instead falls back silently to `/<namespace>/<uid>`
//! and still creates the route; here every problem is a [`PathTemplateError`] that names the
//! expression and what to change, and the controller reports it as
//! [`REASON_PATH_TEMPLATE_INVALID`] and creates no route.
//!
//! # Rules
//!
//! 1. Each `{expr}` is a JSONPath into the AIMService: `.a.b`, `['key']`,
//!    `["key"]` and `[n]` steps, optionally after `$`. Wildcards, recursive
//!    descent, filters, slices and unions are refused. The value must exist
//!    and be a string, number or boolean.
//! 2. Values are trimmed and RFC 1123-sanitized (lowercase, other characters
//!    become `-`, `-` trimmed, at most 63 characters), except annotation
//!    values (`.metadata.annotations['k']`), which may contain `/` and so
//!    add segments.
//! 3. The rendered text gets a leading `/` and loses its trailing `/`; more
//!    than 200 characters is an error.
//! 4. It is split on `/`; empty segments are dropped; each segment is
//!    RFC 1123-sanitized (so literal text and annotation values are
//!    lowercased too) and URL-encoded; the segments are joined again and the
//!    200-character limit checked once more. A path with no segment left is
//!    an error: a route on `/` would capture the whole gateway.
//!
//! On URL encoding: the docs say segments are URL-encoded, the
//! code only sanitizes. Both hold here: each segment is percent-encoded
//! (every byte outside RFC 3986's unreserved set `A-Z a-z 0-9 - . _ ~`
//! becomes `%XX`), but a sanitized segment consists of `[a-z0-9-]` only, so
//! the encoding never changes it and paths stay identical to AIM Engine's.

use serde_json::Value;
use thiserror::Error;

use crate::naming::sanitize_label;

/// The longest path prefix a route may have.
pub const MAX_PATH_LEN: usize = 200;
/// The condition reason for any [`PathTemplateError`].
pub const REASON_PATH_TEMPLATE_INVALID: &str = "PathTemplateInvalid";

/// Why a path template could not be rendered. Every message names the
/// template expression or value at fault and what to change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathTemplateError {
    #[error(
        "routing.pathTemplate \"{template}\" has an unbalanced `{brace}` at character {position}; \
         wrap each JSONPath in one pair of braces, e.g. `/{{.metadata.namespace}}/{{.metadata.name}}`"
    )]
    UnbalancedBraces {
        template: String,
        brace: char,
        position: usize,
    },
    #[error(
        "routing.pathTemplate expression `{{{expression}}}` is not supported: {reason}; use a \
         simple path such as `{{.metadata.name}}` or `{{.metadata.labels['team']}}`"
    )]
    UnsupportedExpression { expression: String, reason: String },
    #[error(
        "routing.pathTemplate expression `{{{expression}}}`: the AIMService has no label \"{key}\"; \
         add the label to the service or change routing.pathTemplate"
    )]
    MissingLabel { expression: String, key: String },
    #[error(
        "routing.pathTemplate expression `{{{expression}}}`: the AIMService has no annotation \
         \"{key}\"; add the annotation to the service or change routing.pathTemplate"
    )]
    MissingAnnotation { expression: String, key: String },
    #[error(
        "routing.pathTemplate expression `{{{expression}}}`: the AIMService has no field `{missing}`; \
         set it on the service or change routing.pathTemplate"
    )]
    MissingField { expression: String, missing: String },
    #[error(
        "routing.pathTemplate expression `{{{expression}}}` resolves to {kind}, not a single \
         value; point it at a string, number or boolean field"
    )]
    NotAScalar {
        expression: String,
        kind: &'static str,
    },
    #[error(
        "the rendered route path is {length} characters long, more than the limit of {limit}; \
         shorten routing.pathTemplate or the values it refers to"
    )]
    TooLong { length: usize, limit: usize },
    #[error(
        "routing.pathTemplate \"{template}\" renders to an empty path; it must leave at least \
         one non-empty segment, e.g. `/{{.metadata.namespace}}/{{.metadata.name}}`"
    )]
    EmptyPath { template: String },
}

impl PathTemplateError {
    /// The condition reason the service reports for this error.
    pub fn reason(&self) -> &'static str {
        REASON_PATH_TEMPLATE_INVALID
    }
}

/// The path used when neither the service nor its runtime config sets a
/// template: `/<namespace>/<uid>`.
pub fn default_path(namespace: &str, uid: &str) -> String {
    format!("/{namespace}/{uid}")
}

/// The route path of a service: `template` rendered when it is set and
/// non-empty, else [`default_path`]. `service` is the AIMService as JSON;
/// its namespace and UID are read from it for the default.
pub fn route_path(template: Option<&str>, service: &Value) -> Result<String, PathTemplateError> {
    match template {
        Some(t) if !t.trim().is_empty() => render(t, service),
        _ => {
            let meta = |key: &str| {
                service
                    .pointer(&format!("/metadata/{key}"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            Ok(default_path(&meta("namespace"), &meta("uid")))
        }
    }
}

/// Renders a path template against the AIMService JSON (see the module
/// docs for the rules).
pub fn render(template: &str, service: &Value) -> Result<String, PathTemplateError> {
    let mut raw = String::new();
    let mut chars = template.char_indices();
    while let Some((pos, c)) = chars.next() {
        match c {
            '{' => {
                let mut expression = String::new();
                let mut closed = false;
                for (inner_pos, inner) in chars.by_ref() {
                    match inner {
                        '}' => {
                            closed = true;
                            break;
                        }
                        '{' => {
                            return Err(PathTemplateError::UnbalancedBraces {
                                template: template.to_string(),
                                brace: '{',
                                position: inner_pos,
                            });
                        }
                        other => expression.push(other),
                    }
                }
                if !closed {
                    return Err(PathTemplateError::UnbalancedBraces {
                        template: template.to_string(),
                        brace: '{',
                        position: pos,
                    });
                }
                raw.push_str(&evaluate(expression.trim(), service)?);
            }
            '}' => {
                return Err(PathTemplateError::UnbalancedBraces {
                    template: template.to_string(),
                    brace: '}',
                    position: pos,
                });
            }
            other => raw.push(other),
        }
    }
    normalize(template, &raw)
}

fn normalize(template: &str, raw: &str) -> Result<String, PathTemplateError> {
    let mut path = if raw.starts_with('/') {
        raw.to_string()
    } else {
        format!("/{raw}")
    };
    while path.len() > 1 && path.ends_with('/') {
        path.pop();
    }
    check_length(&path)?;
    let segments: Vec<String> = path
        .split('/')
        .map(sanitize_label)
        .filter(|s| !s.is_empty())
        .map(|s| percent_encode(&s))
        .collect();
    if segments.is_empty() {
        return Err(PathTemplateError::EmptyPath {
            template: template.to_string(),
        });
    }
    let path = format!("/{}", segments.join("/"));
    check_length(&path)?;
    Ok(path)
}

fn check_length(path: &str) -> Result<(), PathTemplateError> {
    let length = path.chars().count();
    if length > MAX_PATH_LEN {
        return Err(PathTemplateError::TooLong {
            length,
            limit: MAX_PATH_LEN,
        });
    }
    Ok(())
}

/// Percent-encodes every byte outside RFC 3986's unreserved set.
pub fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One step of a simple JSONPath.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn unsupported(expression: &str, reason: &str) -> PathTemplateError {
    PathTemplateError::UnsupportedExpression {
        expression: expression.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_steps(expression: &str) -> Result<Vec<Step>, PathTemplateError> {
    if expression.is_empty() {
        return Err(unsupported(expression, "the expression is empty"));
    }
    let text = expression.strip_prefix('$').unwrap_or(expression);
    let bytes: Vec<char> = text.chars().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            '.' => {
                i += 1;
                if i < bytes.len() && bytes[i] == '.' {
                    return Err(unsupported(
                        expression,
                        "recursive descent `..` is not allowed",
                    ));
                }
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], '_' | '-'))
                {
                    i += 1;
                }
                if start == i {
                    let found = bytes
                        .get(i)
                        .map_or("the end".to_string(), |c| format!("`{c}`"));
                    return Err(unsupported(
                        expression,
                        &format!("expected a field name after `.`, found {found}"),
                    ));
                }
                steps.push(Step::Key(bytes[start..i].iter().collect()));
            }
            '[' => {
                i += 1;
                match bytes.get(i) {
                    Some(&quote @ ('\'' | '"')) => {
                        i += 1;
                        let start = i;
                        while i < bytes.len() && bytes[i] != quote {
                            i += 1;
                        }
                        if i >= bytes.len() || bytes.get(i + 1) != Some(&']') {
                            return Err(unsupported(
                                expression,
                                "a quoted key must be closed by a quote and `]`",
                            ));
                        }
                        steps.push(Step::Key(bytes[start..i].iter().collect()));
                        i += 2;
                    }
                    Some(c) if c.is_ascii_digit() => {
                        let start = i;
                        while i < bytes.len() && bytes[i].is_ascii_digit() {
                            i += 1;
                        }
                        if bytes.get(i) != Some(&']') {
                            return Err(unsupported(
                                expression,
                                "only a single index like `[0]` is allowed in brackets",
                            ));
                        }
                        let digits: String = bytes[start..i].iter().collect();
                        let index = digits
                            .parse()
                            .map_err(|_| unsupported(expression, "the index is too large"))?;
                        steps.push(Step::Index(index));
                        i += 1;
                    }
                    _ => {
                        return Err(unsupported(
                            expression,
                            "brackets may hold only a quoted key or an index; wildcards, \
                             filters, slices and unions are not allowed",
                        ));
                    }
                }
            }
            other => {
                return Err(unsupported(
                    expression,
                    &format!(
                        "unexpected `{other}`; a path is made of `.field` and `['key']` steps"
                    ),
                ));
            }
        }
    }
    if steps.is_empty() {
        return Err(unsupported(
            expression,
            "it selects the whole object, not a field",
        ));
    }
    Ok(steps)
}

fn render_steps(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| match s {
            Step::Key(k)
                if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                format!(".{k}")
            }
            Step::Key(k) => format!("['{k}']"),
            Step::Index(n) => format!("[{n}]"),
        })
        .collect()
}

fn evaluate(expression: &str, service: &Value) -> Result<String, PathTemplateError> {
    let steps = parse_steps(expression)?;
    let map_lookup = match steps.as_slice() {
        [Step::Key(m), Step::Key(field), Step::Key(key)]
            if m == "metadata" && (field == "labels" || field == "annotations") =>
        {
            Some((field.as_str(), key.clone()))
        }
        _ => None,
    };
    let mut current = service;
    for (i, step) in steps.iter().enumerate() {
        let next = match step {
            Step::Key(k) => current.as_object().and_then(|o| o.get(k)),
            Step::Index(n) => current.as_array().and_then(|a| a.get(*n)),
        };
        match next {
            Some(v) if !v.is_null() => current = v,
            _ => {
                return Err(match &map_lookup {
                    Some(("labels", key)) => PathTemplateError::MissingLabel {
                        expression: expression.to_string(),
                        key: key.clone(),
                    },
                    Some((_, key)) => PathTemplateError::MissingAnnotation {
                        expression: expression.to_string(),
                        key: key.clone(),
                    },
                    None => PathTemplateError::MissingField {
                        expression: expression.to_string(),
                        missing: render_steps(&steps[..=i]),
                    },
                });
            }
        }
    }
    let value = match current {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(_) => {
            return Err(PathTemplateError::NotAScalar {
                expression: expression.to_string(),
                kind: "a list",
            });
        }
        Value::Object(_) => {
            return Err(PathTemplateError::NotAScalar {
                expression: expression.to_string(),
                kind: "an object",
            });
        }
        Value::Null => unreachable!("null is reported as missing above"),
    };
    Ok(match map_lookup {
        Some(("annotations", _)) => value,
        _ => sanitize_label(value.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn service() -> Value {
        json!({
            "apiVersion": "aim.eai.amd.com/v1alpha1",
            "kind": "AIMService",
            "metadata": {
                "name": "Qwen-Chat",
                "namespace": "ml-team",
                "uid": "6f1c-42",
                "labels": {"team": "Research_Lab", "empty": ""},
                "annotations": {"route": "Org/Sub Path", "blank": "   "}
            },
            "spec": {
                "model": {"image": "amdenterpriseai/aim-qwen-qwen3-32b:0.8.5"},
                "replicas": 2,
                "env": [{"name": "A", "value": "x"}],
                "routing": {"enabled": true}
            }
        })
    }

    #[test]
    fn seed_example_renders() {
        assert_eq!(
            render("/{.metadata.namespace}/chat/{.metadata.name}", &service()).unwrap(),
            "/ml-team/chat/qwen-chat"
        );
    }

    #[test]
    fn labels_and_annotations() {
        assert_eq!(
            render("/{.metadata.labels['team']}", &service()).unwrap(),
            "/research-lab"
        );
        assert_eq!(
            render(r#"/x/{.metadata.labels["team"]}"#, &service()).unwrap(),
            "/x/research-lab"
        );
        // Annotation values keep their `/` and are sanitized per segment.
        assert_eq!(
            render("/{.metadata.annotations['route']}/v1", &service()).unwrap(),
            "/org/sub-path/v1"
        );
    }

    #[test]
    fn other_json_paths() {
        assert_eq!(render("{$.spec.replicas}", &service()).unwrap(), "/2");
        assert_eq!(
            render("/{.spec.routing.enabled}", &service()).unwrap(),
            "/true"
        );
        assert_eq!(render("/{.spec.env[0].name}", &service()).unwrap(), "/a");
        assert_eq!(
            render("/{ .metadata.uid }", &service()).unwrap(),
            "/6f1c-42"
        );
    }

    #[test]
    fn normalization() {
        assert_eq!(
            render("Team//{.metadata.name}///", &service()).unwrap(),
            "/team/qwen-chat"
        );
        assert_eq!(render("/A_B/./c", &service()).unwrap(), "/a-b/c");
        // An empty label value yields an empty segment, which is dropped.
        assert_eq!(
            render("/{.metadata.labels['empty']}/{.metadata.name}", &service()).unwrap(),
            "/qwen-chat"
        );
    }

    #[test]
    fn missing_label_names_the_key() {
        let err = render("/{.metadata.labels['owner']}", &service()).unwrap_err();
        assert_eq!(
            err,
            PathTemplateError::MissingLabel {
                expression: ".metadata.labels['owner']".into(),
                key: "owner".into()
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("no label \"owner\""), "{msg}");
        assert!(msg.contains("{.metadata.labels['owner']}"), "{msg}");
        assert!(msg.contains("add the label"), "{msg}");
        assert_eq!(err.reason(), "PathTemplateInvalid");

        let mut no_labels = service();
        no_labels["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("labels");
        assert!(matches!(
            render("/{.metadata.labels['team']}", &no_labels),
            Err(PathTemplateError::MissingLabel { .. })
        ));
    }

    #[test]
    fn missing_annotation_and_field() {
        assert!(matches!(
            render("/{.metadata.annotations['nope']}", &service()),
            Err(PathTemplateError::MissingAnnotation { key, .. }) if key == "nope"
        ));
        let err = render("/{.spec.routing.pathTemplate}", &service()).unwrap_err();
        assert_eq!(
            err,
            PathTemplateError::MissingField {
                expression: ".spec.routing.pathTemplate".into(),
                missing: ".spec.routing.pathTemplate".into()
            }
        );
        let err = render("/{.status.routing.path}", &service()).unwrap_err();
        assert!(err.to_string().contains("no field `.status`"), "{err}");
        assert!(matches!(
            render("/{.spec.env[3].name}", &service()),
            Err(PathTemplateError::MissingField { missing, .. }) if missing == ".spec.env[3]"
        ));
    }

    #[test]
    fn non_scalar_values_are_refused() {
        assert!(matches!(
            render("/{.metadata.labels}", &service()),
            Err(PathTemplateError::NotAScalar {
                kind: "an object",
                ..
            })
        ));
        assert!(matches!(
            render("/{.spec.env}", &service()),
            Err(PathTemplateError::NotAScalar { kind: "a list", .. })
        ));
    }

    #[test]
    fn unbalanced_braces_are_errors() {
        for (template, brace) in [
            ("/{.metadata.name", '{'),
            ("/.metadata.name}", '}'),
            ("/{.metadata.{name}}", '{'),
        ] {
            match render(template, &service()) {
                Err(PathTemplateError::UnbalancedBraces { brace: b, .. }) => {
                    assert_eq!(b, brace, "{template}")
                }
                other => panic!("{template}: {other:?}"),
            }
        }
    }

    #[test]
    fn unsupported_expressions_are_named() {
        for expr in [
            "",
            ".",
            "$",
            "..name",
            ".metadata.labels[*]",
            ".spec.env[?(@.name=='A')]",
            ".spec.env[0:1]",
            "range .items",
            ".metadata.labels['team",
        ] {
            let err = render(&format!("/{{{expr}}}"), &service()).unwrap_err();
            match &err {
                PathTemplateError::UnsupportedExpression { expression, .. } => {
                    assert_eq!(expression, expr.trim())
                }
                other => panic!("{expr}: {other:?}"),
            }
            assert!(err.to_string().contains("not supported"), "{err}");
        }
    }

    #[test]
    fn length_limit() {
        let ok = format!("/{}", vec!["a".repeat(49); 4].join("/"));
        assert_eq!(ok.len(), 200);
        assert_eq!(render(&ok, &service()).unwrap(), ok);
        let long = format!("{ok}b");
        let err = render(&long, &service()).unwrap_err();
        assert_eq!(
            err,
            PathTemplateError::TooLong {
                length: 201,
                limit: 200
            }
        );
        assert!(err.to_string().contains("201 characters"), "{err}");
        // Values are cut to 63 characters each before the limit applies.
        let mut svc = service();
        svc["metadata"]["labels"]["team"] = json!("t".repeat(100));
        assert_eq!(
            render("/{.metadata.labels['team']}", &svc).unwrap(),
            format!("/{}", "t".repeat(63))
        );
    }

    #[test]
    fn empty_paths_are_errors() {
        for template in [
            "",
            "/",
            "///",
            "/{.metadata.labels['empty']}",
            "/{.metadata.annotations['blank']}",
        ] {
            assert!(
                matches!(
                    render(template, &service()),
                    Err(PathTemplateError::EmptyPath { .. })
                ),
                "{template:?}"
            );
        }
    }

    #[test]
    fn default_and_route_path() {
        assert_eq!(default_path("ml-team", "6f1c-42"), "/ml-team/6f1c-42");
        assert_eq!(route_path(None, &service()).unwrap(), "/ml-team/6f1c-42");
        assert_eq!(
            route_path(Some("  "), &service()).unwrap(),
            "/ml-team/6f1c-42"
        );
        assert_eq!(
            route_path(Some("/{.metadata.name}"), &service()).unwrap(),
            "/qwen-chat"
        );
    }

    #[test]
    fn percent_encoding_of_reserved_bytes() {
        assert_eq!(percent_encode("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(percent_encode("a b/ü"), "a%20b%2F%C3%BC");
    }

    proptest! {
        #[test]
        fn rendered_paths_are_clean(literal in "[ -~]{0,250}", label in ".{0,80}") {
            let template = literal.replace(['{', '}'], "");
            let mut svc = service();
            svc["metadata"]["labels"]["team"] = json!(label);
            for t in [template.clone(), format!("{template}/{{.metadata.labels['team']}}")] {
                match render(&t, &svc) {
                    Ok(path) => {
                        prop_assert!(path.len() <= MAX_PATH_LEN);
                        prop_assert!(path.starts_with('/'));
                        prop_assert!(!path.ends_with('/'));
                        for seg in path[1..].split('/') {
                            prop_assert!(crate::naming::is_rfc1123_label(seg), "{seg}");
                        }
                        // Rendering is idempotent on its own output.
                        prop_assert_eq!(render(&path, &svc).unwrap(), path);
                    }
                    Err(PathTemplateError::TooLong { length, .. }) => prop_assert!(length > MAX_PATH_LEN),
                    Err(PathTemplateError::EmptyPath { .. }) => {}
                    Err(other) => prop_assert!(false, "unexpected {other:?}"),
                }
            }
        }
    }
}
