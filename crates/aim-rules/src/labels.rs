//! Well-known labels, annotations and finalizers, and label
//! propagation from parents to the children they create.
//!
//! The keys are fixed by AIM Engine: an operator swap must find and adopt
//! the children the Go operator created, and the e2e tests select by them.

use std::collections::BTreeMap;

use aim_api::runtime_config::LabelPropagation;

/// The prefix of AIM's own keys; parent labels with it always propagate.
pub const AIM_PREFIX: &str = "aim.eai.amd.com/";

// Labels set on children.
pub const SERVICE: &str = "aim.eai.amd.com/service";
pub const TEMPLATE: &str = "aim.eai.amd.com/template";
pub const MODEL: &str = "aim.eai.amd.com/model";
pub const METRIC: &str = "aim.eai.amd.com/metric";
pub const PRECISION: &str = "aim.eai.amd.com/precision";
pub const ORIGIN: &str = "aim.eai.amd.com/origin";
pub const CUSTOM_MODEL: &str = "aim.eai.amd.com/custom-model";
pub const TEMPLATE_ALIAS: &str = "aim.eai.amd.com/template.alias";
pub const MODEL_SOURCE: &str = "aim.eai.amd.com/model-source";
pub const TEMPLATE_NAME: &str = "aim.eai.amd.com/template.name";
pub const TEMPLATE_SCOPE: &str = "aim.eai.amd.com/template.scope";
pub const TEMPLATE_INDEX: &str = "aim.eai.amd.com/template.index";
pub const TEMPLATE_CACHE_NAME: &str = "aim.eai.amd.com/template-cache.name";
pub const TEMPLATE_CREATED: &str = "aim.eai.amd.com/template-created";
pub const CACHE_NAME: &str = "aim.eai.amd.com/cache.name";
pub const CACHE_TYPE: &str = "aim.eai.amd.com/cache.type";
pub const COMPONENT: &str = "aim.eai.amd.com/component";
pub const SOURCE_MODEL: &str = "aim.eai.amd.com/source-model";
/// On an AIMService: "true" or "false", overriding the runtime config's
/// `autoscaling.pausedByDefault`. `aim pause` and `aim resume` set it.
pub const AUTOSCALING_PAUSED: &str = "aim.eai.amd.com/autoscaling-paused";
/// KEDA's own pause switch on a ScaledObject.
pub const KEDA_PAUSED: &str = "autoscaling.keda.sh/paused";

// Values of `aim.eai.amd.com/origin`.
pub const ORIGIN_AUTO_GENERATED: &str = "auto-generated";
pub const ORIGIN_DERIVED: &str = "derived";
pub const ORIGIN_MANUAL: &str = "manual";

// Values of `aim.eai.amd.com/cache.type` and `aim.eai.amd.com/component`.
pub const CACHE_TYPE_ARTIFACT: &str = "artifact";
pub const CACHE_TYPE_TEMPLATE_CACHE: &str = "template-cache";
pub const COMPONENT_DOWNLOAD: &str = "download";
pub const COMPONENT_CHECK_SIZE: &str = "check-size";

// Kubernetes recommended labels.
pub const APP_COMPONENT: &str = "app.kubernetes.io/component";
pub const APP_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const APP_NAME: &str = "app.kubernetes.io/name";
pub const APP_COMPONENT_INFERENCE: &str = "inference";
pub const APP_COMPONENT_ROUTING: &str = "routing";
pub const APP_COMPONENT_DISCOVERY: &str = "discovery";
/// `app.kubernetes.io/managed-by` on InferenceServices, HTTPRoutes and
/// derived templates.
pub const MANAGED_BY_AIM_ENGINE: &str = "aim-engine";
/// `app.kubernetes.io/managed-by` on discovery Jobs.
pub const MANAGED_BY_AIM_CONTROLLER: &str = "aim-controller";
/// `app.kubernetes.io/name` on discovery Jobs.
pub const APP_NAME_DISCOVERY: &str = "aim-discovery";

// Annotations.
pub const RECONCILIATION_PAUSED: &str = "aim.eai.amd.com/reconciliation-paused";
pub const SOURCE_REGISTRY: &str = "aim.eai.amd.com/source-registry";
pub const SOURCE_REPOSITORY: &str = "aim.eai.amd.com/source-repository";
pub const SOURCE_TAG: &str = "aim.eai.amd.com/source-tag";
pub const KSERVE_AUTOSCALER_CLASS: &str = "serving.kserve.io/autoscalerClass";
pub const OTEL_SIDECAR_INJECT: &str = "sidecar.opentelemetry.io/inject";
pub const KSERVE_PROMETHEUS_PORT: &str = "prometheus.kserve.io/port";

// Finalizers.
pub const TEMPLATE_CACHE_CLEANUP_FINALIZER: &str = "aim.eai.amd.com/template-cache-cleanup";
pub const ARTIFACT_CLEANUP_FINALIZER: &str = "aim.eai.amd.com/artifactcleanup";

/// The controllers that label their children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Controller {
    Service,
    Model,
    ClusterModel,
    ServiceTemplate,
    ClusterServiceTemplate,
    TemplateCache,
    Artifact,
    ClusterModelSource,
}

impl Controller {
    pub fn as_str(self) -> &'static str {
        match self {
            Controller::Service => "service",
            Controller::Model => "model",
            Controller::ClusterModel => "cluster-model",
            Controller::ServiceTemplate => "service-template",
            Controller::ClusterServiceTemplate => "cluster-service-template",
            Controller::TemplateCache => "template-cache",
            Controller::Artifact => "artifact",
            Controller::ClusterModelSource => "cluster-model-source",
        }
    }

    /// `aim-<ctrl>-controller`: the `app.kubernetes.io/managed-by` value of
    /// the controller labels, and the controller's field manager.
    pub fn manager(self) -> String {
        format!("aim-{}-controller", self.as_str())
    }

    /// `aim.eai.amd.com/<ctrl>.name`, the key naming the parent.
    pub fn name_label(self) -> String {
        format!("{AIM_PREFIX}{}.name", self.as_str())
    }
}

/// The controller labels of a child: `app.kubernetes.io/managed-by:
/// aim-<ctrl>-controller` and `aim.eai.amd.com/<ctrl>.name: <parent>`. They
/// are added only where the child has no such key ([`add_missing`]); for a
/// Job's pod template the caller leaves out `managed-by`.
pub fn controller_labels(controller: Controller, parent_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (APP_MANAGED_BY.to_string(), controller.manager()),
        (controller.name_label(), parent_name.to_string()),
    ])
}

/// Adds `labels` to `child` where `child` has no value for the key yet:
/// the child's own keys win.
pub fn add_missing(child: &mut BTreeMap<String, String>, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        child.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

/// The parent labels a child inherits:
/// - every key with the `aim.eai.amd.com/` prefix, always;
/// - when the runtime config's `labelPropagation.enabled` is true and
///   `match` is non-empty, every key matching one of the patterns.
///
/// Patterns follow Go's `filepath.Match`: `*` is any run of characters
/// other than `/`, `?` one such character, `[…]` a class (`[^…]` negated,
/// `a-z` ranges) and `\` escapes. So `team/*` matches `team/app`, while `*`
/// alone does not match a prefixed key such as `example.com/team`. A
/// malformed pattern matches nothing, as in Go.
pub fn propagated_labels(
    parent_labels: &BTreeMap<String, String>,
    propagation: Option<&LabelPropagation>,
) -> BTreeMap<String, String> {
    let patterns: &[String] = match propagation {
        Some(p) if p.enabled == Some(true) => &p.r#match,
        _ => &[],
    };
    parent_labels
        .iter()
        .filter(|(k, _)| k.starts_with(AIM_PREFIX) || patterns.iter().any(|p| glob_match(p, k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Go `filepath.Match` on Unix (see [`propagated_labels`]). Returns false
/// for a malformed pattern.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Malformed patterns never match, even where a prefix would.
    validate(&p) && match_from(&p, &n)
}

fn validate(p: &[char]) -> bool {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                if i + 1 >= p.len() {
                    return false;
                }
                i += 2;
            }
            '[' => match parse_class(p, i, None) {
                Some((_, end)) => i = end,
                None => return false,
            },
            _ => i += 1,
        }
    }
    true
}

fn match_from(p: &[char], n: &[char]) -> bool {
    let Some((&first, rest)) = p.split_first() else {
        return n.is_empty();
    };
    match first {
        '*' => {
            // Try every split of non-separator characters.
            for k in 0..=n.len() {
                if match_from(rest, &n[k..]) {
                    return true;
                }
                if k < n.len() && n[k] == '/' {
                    break;
                }
            }
            false
        }
        '?' => !n.is_empty() && n[0] != '/' && match_from(rest, &n[1..]),
        '[' => match (n.first(), parse_class(p, 0, n.first().copied())) {
            (Some(&c), Some((true, end))) if c != '/' => match_from(&p[end..], &n[1..]),
            _ => false,
        },
        '\\' => match (rest.first(), n.first()) {
            (Some(a), Some(b)) if a == b => match_from(&rest[1..], &n[1..]),
            _ => false,
        },
        c => n.first() == Some(&c) && match_from(rest, &n[1..]),
    }
}

/// Parses the class starting at `p[start] == '['`. Returns whether `c`
/// (if given) is in it and the index after the closing `]`; `None` when
/// the class is malformed.
fn parse_class(p: &[char], start: usize, c: Option<char>) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negated = p.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        let (lo, next) = class_char(p, i)?;
        i = next;
        let hi = if p.get(i) == Some(&'-') && p.get(i + 1) != Some(&']') {
            let (hi, next) = class_char(p, i + 1)?;
            i = next;
            hi
        } else {
            lo
        };
        if lo > hi {
            return None;
        }
        if let Some(c) = c
            && lo <= c
            && c <= hi
        {
            matched = true;
        }
    }
    Some((matched != negated, i))
}

fn class_char(p: &[char], i: usize) -> Option<(char, usize)> {
    match *p.get(i)? {
        '\\' => Some((*p.get(i + 1)?, i + 2)),
        '-' | ']' => None,
        c => Some((c, i + 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parent() -> BTreeMap<String, String> {
        map(&[
            ("aim.eai.amd.com/tenant", "blue"),
            ("team", "research"),
            ("team-size", "4"),
            ("example.com/cost-center", "42"),
            ("example.com/owner", "ada"),
            ("app", "chat"),
        ])
    }

    fn propagation(enabled: Option<bool>, patterns: &[&str]) -> LabelPropagation {
        LabelPropagation {
            enabled,
            r#match: patterns.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn aim_labels_always_propagate() {
        let expected = map(&[("aim.eai.amd.com/tenant", "blue")]);
        assert_eq!(propagated_labels(&parent(), None), expected);
        let disabled = propagation(Some(false), &["*"]);
        assert_eq!(propagated_labels(&parent(), Some(&disabled)), expected);
        let unset = propagation(None, &["team"]);
        assert_eq!(propagated_labels(&parent(), Some(&unset)), expected);
        let empty = propagation(Some(true), &[]);
        assert_eq!(propagated_labels(&parent(), Some(&empty)), expected);
    }

    #[test]
    fn patterns_select_when_enabled() {
        let p = propagation(Some(true), &["team", "example.com/*"]);
        assert_eq!(
            propagated_labels(&parent(), Some(&p)),
            map(&[
                ("aim.eai.amd.com/tenant", "blue"),
                ("team", "research"),
                ("example.com/cost-center", "42"),
                ("example.com/owner", "ada"),
            ])
        );
        let p = propagation(Some(true), &["team*", "?pp"]);
        let got = propagated_labels(&parent(), Some(&p));
        assert_eq!(
            got.keys().map(String::as_str).collect::<Vec<_>>(),
            ["aim.eai.amd.com/tenant", "app", "team", "team-size"]
        );
        // `*` does not cross `/`, as in Go's filepath.Match.
        let p = propagation(Some(true), &["*"]);
        let got = propagated_labels(&parent(), Some(&p));
        assert!(!got.contains_key("example.com/owner"));
        assert!(got.contains_key("team"));
    }

    #[test]
    fn glob_semantics() {
        assert!(glob_match("a*c", "abbbc"));
        assert!(glob_match("a*", "a"));
        assert!(!glob_match("a*", "ab/c"));
        assert!(glob_match("*/*", "ab/c"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "a/c"));
        assert!(glob_match("[a-c]x", "bx"));
        assert!(!glob_match("[^a-c]x", "bx"));
        assert!(glob_match("[^a-c]x", "dx"));
        assert!(glob_match(r"a\*", "a*"));
        assert!(!glob_match(r"a\*", "ab"));
        assert!(!glob_match("abc", "abcd"));
        // Malformed patterns match nothing.
        assert!(!glob_match("[", "["));
        assert!(!glob_match("a[", "a"));
        assert!(!glob_match("[]", "x"));
        assert!(!glob_match("[z-a]", "b"));
        assert!(!glob_match("a\\", "a"));
    }

    #[test]
    fn controller_labels_and_add_missing() {
        let labels = controller_labels(Controller::TemplateCache, "tc-1");
        assert_eq!(
            labels,
            map(&[
                (
                    "app.kubernetes.io/managed-by",
                    "aim-template-cache-controller"
                ),
                ("aim.eai.amd.com/template-cache.name", "tc-1"),
            ])
        );
        assert_eq!(Controller::Service.manager(), "aim-service-controller");
        assert_eq!(
            Controller::ClusterModelSource.name_label(),
            "aim.eai.amd.com/cluster-model-source.name"
        );
        let mut child = map(&[("app.kubernetes.io/managed-by", "aim-engine")]);
        add_missing(&mut child, &labels);
        assert_eq!(child["app.kubernetes.io/managed-by"], "aim-engine");
        assert_eq!(child["aim.eai.amd.com/template-cache.name"], "tc-1");
    }

    proptest! {
        #[test]
        fn literal_patterns_match_only_themselves(a in "[a-z./-]{0,12}", b in "[a-z./-]{0,12}") {
            prop_assert!(glob_match(&a, &a));
            prop_assert_eq!(glob_match(&a, &b), a == b);
        }

        #[test]
        fn star_matches_any_segment(s in "[a-z.-]{0,12}") {
            prop_assert!(glob_match("*", &s));
            let prefixed = format!("x/{s}");
            prop_assert!(glob_match("x/*", &prefixed));
            prop_assert!(!glob_match("*", &prefixed));
        }
    }
}
