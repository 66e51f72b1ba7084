//! The Gateway API, planned without I/O: from the GatewayClasses, Gateways,
//! HTTPRoutes, Services and Namespaces the cluster has, [`plan`] computes
//! the routing table the proxy follows and the status aim writes back.
//!
//! What is implemented follows the Gateway API's own documents (the
//! `gateway.networking.k8s.io/v1` types and their field comments):
//!
//! - A GatewayClass is aim's when its `controllerName` is [`CONTROLLER_NAME`];
//!   aim accepts it and serves the Gateways of that class.
//! - A Gateway's HTTP listeners are programmed; other protocols are refused
//!   per listener (`UnsupportedProtocol`), route kinds other than HTTPRoute
//!   give `InvalidRouteKinds`. `attachedRoutes` counts the accepted routes.
//! - An HTTPRoute attaches to a listener its parentRef names (by
//!   `sectionName` and `port` when given) that allows its namespace
//!   (`Same`, `All`, or a label selector) and shares a hostname with it.
//! - Matches: path `Exact` and `PathPrefix` (whole segments: `/v1` matches
//!   `/v1` and `/v1/models`, not `/v1x`), headers and query parameters
//!   `Exact`, method. Precedence among rules is the spec's: exact path, then
//!   the longest prefix, then a method, then the most header matches, then
//!   the most query matches, then the oldest route, then the route's
//!   namespace/name, then rule and match order. A request's hostname picks
//!   first: an exact hostname beats a wildcard, which beats none.
//! - Filters: `RequestHeaderModifier` and `URLRewrite` (hostname, full
//!   path, prefix). Other filters and `RegularExpression` matches make the
//!   route `Accepted=False` with reason `UnsupportedValue`.
//! - backendRefs: Services in the route's namespace with a port the
//!   Service has, chosen by weight. A bad one (`InvalidKind`,
//!   `BackendNotFound`, `RefNotPermitted` for another namespace: aim does
//!   not read ReferenceGrants) keeps its weight, and the requests it would
//!   get are answered 500, as the spec asks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

/// The `controllerName` of the GatewayClasses aim serves.
pub const CONTROLLER_NAME: &str = "aim.eai.amd.com/gateway";
/// The Gateway API's group.
pub const GROUP: &str = "gateway.networking.k8s.io";

// ---------------------------------------------------------------- inputs

/// The metadata fields the planning reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Meta {
    pub name: String,
    pub namespace: Option<String>,
    pub generation: Option<i64>,
    /// RFC 3339 in UTC as the apiserver writes it, so it sorts as text.
    pub creation_timestamp: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl Meta {
    fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayClass {
    pub metadata: Meta,
    pub spec: GatewayClassSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayClassSpec {
    pub controller_name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Gateway {
    pub metadata: Meta,
    pub spec: GatewaySpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    pub listeners: Vec<Listener>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Listener {
    pub name: String,
    pub hostname: Option<String>,
    pub port: i32,
    pub protocol: String,
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AllowedRoutes {
    pub namespaces: Option<RouteNamespaces>,
    pub kinds: Option<Vec<RouteGroupKind>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteNamespaces {
    pub from: Option<String>,
    pub selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupKind {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRoute {
    pub metadata: Meta,
    pub spec: HttpRouteSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<ParentRef>,
    pub hostnames: Vec<String>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub filters: Vec<Filter>,
    pub backend_refs: Vec<BackendRef>,
    pub timeouts: Option<Timeouts>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Timeouts {
    pub request: Option<String>,
    pub backend_request: Option<String>,
}

/// A Gateway API duration: one to four `<number><unit>` parts, units `h`,
/// `m`, `s`, `ms`, each number at most five digits (the format the
/// Gateway API's CRDs validate; a subset of Go's duration syntax).
pub fn gateway_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = |why: &str| Err(format!("`{text}`: {why} (e.g. 120s, 1m30s, 500ms)"));
    if text.is_empty() {
        return bad("empty");
    }
    let mut total = std::time::Duration::ZERO;
    let mut parts = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return bad("each part is 1 to 5 digits and a unit");
        }
        let n: u64 = rest[..digits].parse().expect("ASCII digits");
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (std::time::Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (std::time::Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (std::time::Duration::from_secs(1), 1)
        } else {
            return bad("units are h, m, s and ms");
        };
        rest = &rest[len..];
        total += unit * u32::try_from(n).expect("at most 5 digits");
        parts += 1;
        if parts > 4 {
            return bad("at most four parts");
        }
    }
    Ok(total)
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Match {
    pub path: Option<PathMatch>,
    pub headers: Vec<ValueMatch>,
    pub query_params: Vec<ValueMatch>,
    pub method: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PathMatch {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ValueMatch {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Filter {
    #[serde(rename = "type")]
    pub type_: String,
    pub request_header_modifier: Option<HeaderModifier>,
    pub url_rewrite: Option<UrlRewrite>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderModifier {
    pub set: Vec<NameValue>,
    pub add: Vec<NameValue>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub type_: String,
    pub replace_full_path: Option<String>,
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BackendRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i32>,
    pub weight: Option<i32>,
    pub filters: Vec<serde_json::Value>,
}

/// Which Gateways this process serves: all of aim's classes, one class, or
/// one Gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub class: Option<String>,
    /// `(namespace, name)`.
    pub gateway: Option<(String, String)>,
}

/// Everything the planning reads.
#[derive(Debug)]
pub struct World<'a> {
    pub classes: &'a [GatewayClass],
    pub gateways: &'a [Gateway],
    pub routes: &'a [HttpRoute],
    pub services: &'a [Service],
    /// Labels by namespace, for listeners that select namespaces.
    pub namespaces: &'a BTreeMap<String, BTreeMap<String, String>>,
}

// ---------------------------------------------------------------- outputs

/// A status condition without its transition time (the writer keeps the
/// old time while the status stays the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
    pub observed_generation: Option<i64>,
}

impl Cond {
    fn new(type_: &'static str, status: bool, reason: &'static str, message: String) -> Self {
        Cond {
            type_,
            status,
            reason,
            message,
            observed_generation: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClassStatus {
    pub name: String,
    pub conditions: Vec<Cond>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerStatus {
    pub name: String,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub attached_routes: i32,
    pub conditions: Vec<Cond>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayStatus {
    pub namespace: String,
    pub name: String,
    pub conditions: Vec<Cond>,
    pub listeners: Vec<ListenerStatus>,
}

/// aim's entry in an HTTPRoute's `status.parents`, for one parentRef.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentStatus {
    pub parent_ref: ParentRef,
    pub conditions: Vec<Cond>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteStatus {
    pub namespace: String,
    pub name: String,
    pub parents: Vec<ParentStatus>,
}

/// A Service port a backendRef names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub namespace: String,
    pub name: String,
    pub port: i32,
}

impl std::fmt::Display for BackendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// One backendRef of a programmed rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// The Service port, or why requests sent here get a 500.
    pub target: Result<BackendKey, String>,
    pub weight: u32,
}

/// What a rule does with a request it matched.
#[derive(Debug)]
pub struct Action {
    pub route: String,
    pub rule: usize,
    pub backends: Vec<Backend>,
    pub header_modifiers: Vec<HeaderModifier>,
    pub rewrite: Option<UrlRewrite>,
    /// `timeouts.request` (none when unset or zero, which the spec reads
    /// as no timeout).
    pub request_timeout: Option<std::time::Duration>,
    /// Smooth weighted round robin: each backend's running credit.
    credit: Mutex<Vec<i64>>,
}

impl Action {
    pub(crate) fn new(
        route: String,
        rule: usize,
        backends: Vec<Backend>,
        filters: &[Filter],
        request_timeout: Option<std::time::Duration>,
    ) -> Self {
        let n = backends.len();
        Action {
            route,
            rule,
            backends,
            header_modifiers: filters
                .iter()
                .filter_map(|f| f.request_header_modifier.clone())
                .collect(),
            rewrite: filters.iter().find_map(|f| f.url_rewrite.clone()),
            request_timeout: request_timeout.filter(|t| !t.is_zero()),
            credit: Mutex::new(vec![0; n]),
        }
    }

    /// The next backend by weight (smooth weighted round robin: over any
    /// run of total-weight requests each backend gets exactly its weight,
    /// spread out, not in bursts). `None` when no backend has weight.
    pub fn choose(&self) -> Option<&Backend> {
        let total: i64 = self.backends.iter().map(|b| i64::from(b.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut credit = self.credit.lock().unwrap_or_else(|p| p.into_inner());
        let mut best = 0;
        for (i, b) in self.backends.iter().enumerate() {
            credit[i] += i64::from(b.weight);
            if credit[i] > credit[best] {
                best = i;
            }
        }
        credit[best] -= total;
        Some(&self.backends[best])
    }
}

/// One match of one rule, programmed.
#[derive(Debug)]
pub struct Entry {
    /// The hostnames it serves (empty: any).
    pub hostnames: Vec<String>,
    pub path: PathKind,
    pub method: Option<String>,
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub action: std::sync::Arc<Action>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKind {
    Exact(String),
    /// Kept without its trailing `/` (`/` itself is empty).
    Prefix(String),
}

/// The routing table: entries in the spec's precedence order.
#[derive(Debug, Default)]
pub struct Table {
    pub entries: Vec<Entry>,
}

/// What a request carries that routing looks at.
pub struct RequestView<'a> {
    /// The Host (or :authority) without a port.
    pub host: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

impl Table {
    /// The entry the request goes by: the best hostname match first, then
    /// the table's precedence order.
    pub fn route(&self, req: &RequestView<'_>) -> Option<&Entry> {
        let mut best: Option<(HostRank, &Entry)> = None;
        for e in &self.entries {
            let Some(rank) = host_rank(&e.hostnames, req.host) else {
                continue;
            };
            if best.as_ref().is_some_and(|(r, _)| *r >= rank) {
                continue;
            }
            if e.matches(req) {
                best = Some((rank, e));
            }
        }
        best.map(|(_, e)| e)
    }

    /// Every backend the table can send to.
    pub fn backends(&self) -> BTreeSet<BackendKey> {
        self.entries
            .iter()
            .flat_map(|e| e.action.backends.iter())
            .filter_map(|b| b.target.clone().ok())
            .collect()
    }
}

impl Entry {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathKind::Exact(p) => req.path == p,
            PathKind::Prefix(p) => prefix_matches(p, req.path),
        };
        path_ok
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(req.method))
            && self.headers.iter().all(|(name, value)| {
                req.headers
                    .get_all(name.as_str())
                    .iter()
                    .any(|v| v.as_bytes() == value.as_bytes())
            })
            && self
                .query
                .iter()
                .all(|(name, value)| query_pairs(req.query).any(|(n, v)| n == name && v == value))
    }
}

fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Path prefix matching by whole segments; `prefix` is kept without a
/// trailing `/`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// How well a set of hostnames matches a request's host: exact beats a
/// wildcard (longer suffix first), which beats "any". `None`: no match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct HostRank(u8, usize);

fn host_rank(hostnames: &[String], host: Option<&str>) -> Option<HostRank> {
    if hostnames.is_empty() {
        return Some(HostRank(0, 0));
    }
    let host = host?.to_ascii_lowercase();
    hostnames
        .iter()
        .filter_map(|h| match h.strip_prefix('*') {
            // `*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`.
            Some(suffix) => (host.ends_with(suffix) && host.len() > suffix.len())
                .then_some(HostRank(1, suffix.len())),
            None => (host == *h).then_some(HostRank(2, h.len())),
        })
        .max()
}

/// The hostnames both sides accept (empty: any), or `None` when they share
/// none. Either side's empty list accepts everything.
pub fn intersect_hostnames(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let Some(l) = listener.filter(|l| !l.is_empty()) else {
        return Some(route.iter().map(|h| h.to_ascii_lowercase()).collect());
    };
    let l = l.to_ascii_lowercase();
    if route.is_empty() {
        return Some(vec![l]);
    }
    let covers = |wild: &str, name: &str| {
        wild.strip_prefix('*')
            .is_some_and(|s| name.ends_with(s) && name.len() > s.len())
    };
    let mut out = BTreeSet::new();
    for r in route.iter().map(|r| r.to_ascii_lowercase()) {
        if r == l || covers(&l, &r) {
            out.insert(r);
        } else if covers(&r, &l) {
            out.insert(l.clone());
        }
    }
    (!out.is_empty()).then(|| out.into_iter().collect())
}

/// The request path after a URLRewrite: `matched` is the rule's prefix
/// (without trailing `/`) when it matched by prefix.
pub fn rewrite_path(path: &str, matched: Option<&str>, m: &PathModifier) -> String {
    match m.type_.as_str() {
        "ReplaceFullPath" => m.replace_full_path.clone().unwrap_or_else(|| "/".into()),
        "ReplacePrefixMatch" => {
            let Some(prefix) = matched else {
                return path.to_string();
            };
            let rest = &path[prefix.len().min(path.len())..];
            let replacement = m.replace_prefix_match.as_deref().unwrap_or("/");
            let base = replacement.trim_end_matches('/');
            let out = format!("{base}{rest}");
            if out.is_empty() { "/".into() } else { out }
        }
        _ => path.to_string(),
    }
}

/// The plan: the table and every status aim writes.
#[derive(Debug, Default)]
pub struct Plan {
    pub table: Table,
    pub classes: Vec<ClassStatus>,
    pub gateways: Vec<GatewayStatus>,
    pub routes: Vec<RouteStatus>,
}

// ---------------------------------------------------------------- planning

fn is_http_route_kind(k: &RouteGroupKind) -> bool {
    k.kind == "HTTPRoute" && k.group.as_deref().unwrap_or(GROUP) == GROUP
}

fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// A listener as planned: whether it is programmed, and whom it admits.
struct ListenerPlan<'a> {
    spec: &'a Listener,
    /// `None` when programmed; else the reason and message.
    invalid: Option<(&'static str, &'static str, String)>,
    attached: BTreeSet<(String, String)>,
}

impl ListenerPlan<'_> {
    fn admits_namespace(&self, gw_ns: &str, route_ns: &str, world: &World<'_>) -> bool {
        let ns = self
            .spec
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref());
        match ns.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
            "All" => true,
            "Selector" => {
                let labels = world.namespaces.get(route_ns).cloned().unwrap_or_default();
                ns.and_then(|n| n.selector.as_ref())
                    .is_some_and(|s| selector_matches(s, &labels))
            }
            _ => gw_ns == route_ns,
        }
    }
}

/// A rule or match value aim does not implement, named for the status.
fn unsupported(route: &HttpRoute) -> Option<String> {
    for (i, rule) in route.spec.rules.iter().enumerate() {
        for m in &rule.matches {
            if let Some(p) = &m.path {
                let t = p.type_.as_deref().unwrap_or("PathPrefix");
                if t != "PathPrefix" && t != "Exact" {
                    return Some(format!(
                        "spec.rules[{i}].matches.path.type {t} is not supported (use Exact or PathPrefix)"
                    ));
                }
            }
            for (field, list) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
                if let Some(v) = list
                    .iter()
                    .find(|v| v.type_.as_deref().unwrap_or("Exact") != "Exact")
                {
                    return Some(format!(
                        "spec.rules[{i}].matches.{field} type {} is not supported (use Exact)",
                        v.type_.as_deref().unwrap_or_default()
                    ));
                }
            }
        }
        for f in &rule.filters {
            let ok = match f.type_.as_str() {
                "RequestHeaderModifier" => f.request_header_modifier.is_some(),
                "URLRewrite" => f.url_rewrite.as_ref().is_some_and(|u| {
                    u.path.as_ref().is_none_or(|p| {
                        matches!(p.type_.as_str(), "ReplaceFullPath" | "ReplacePrefixMatch")
                    })
                }),
                _ => false,
            };
            if !ok {
                return Some(format!(
                    "spec.rules[{i}].filters type {} is not supported (aim implements RequestHeaderModifier and URLRewrite)",
                    f.type_
                ));
            }
            let prefix_rewrite = f
                .url_rewrite
                .as_ref()
                .and_then(|u| u.path.as_ref())
                .is_some_and(|p| p.type_ == "ReplacePrefixMatch");
            let all_prefix = !rule.matches.is_empty()
                && rule.matches.iter().all(|m| {
                    m.path
                        .as_ref()
                        .is_none_or(|p| p.type_.as_deref().unwrap_or("PathPrefix") == "PathPrefix")
                });
            if prefix_rewrite && !all_prefix && !rule.matches.is_empty() {
                return Some(format!(
                    "spec.rules[{i}]: ReplacePrefixMatch needs every match of the rule to be a PathPrefix"
                ));
            }
        }
        if rule.backend_refs.iter().any(|b| !b.filters.is_empty()) {
            return Some(format!(
                "spec.rules[{i}].backendRefs filters are not supported"
            ));
        }
        if let Some(t) = &rule.timeouts {
            if t.backend_request.is_some() {
                return Some(format!(
                    "spec.rules[{i}].timeouts.backendRequest is not supported (aim implements timeouts.request)"
                ));
            }
            if let Some(Err(why)) = t.request.as_deref().map(gateway_duration) {
                return Some(format!("spec.rules[{i}].timeouts.request {why}"));
            }
        }
    }
    None
}

/// Resolves one backendRef: the Service port, or the ResolvedRefs reason
/// and a message.
fn resolve_backend(
    b: &BackendRef,
    route_ns: &str,
    world: &World<'_>,
) -> Result<BackendKey, (&'static str, String)> {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    if !(group.is_empty() || group == "core") || kind != "Service" {
        return Err((
            "InvalidKind",
            format!(
                "backendRef {}: kind {kind} in group {group:?} is not supported; aim sends to core Services",
                b.name
            ),
        ));
    }
    let ns = b.namespace.as_deref().unwrap_or(route_ns);
    if ns != route_ns {
        return Err((
            "RefNotPermitted",
            format!(
                "backendRef {ns}/{}: another namespace needs a ReferenceGrant, which aim does not read yet; put the route in {ns}",
                b.name
            ),
        ));
    }
    let Some(port) = b.port else {
        return Err((
            "BackendNotFound",
            format!(
                "backendRef {}: port is required for a Service backend",
                b.name
            ),
        ));
    };
    let svc = world.services.iter().find(|s| {
        s.metadata.name.as_deref() == Some(&b.name) && s.metadata.namespace.as_deref() == Some(ns)
    });
    let Some(svc) = svc else {
        return Err((
            "BackendNotFound",
            format!("backendRef {ns}/{}: no such Service", b.name),
        ));
    };
    let ports: Vec<i32> = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| p.port)
        .collect();
    if !ports.contains(&port) {
        return Err((
            "BackendNotFound",
            format!(
                "backendRef {ns}/{}: the Service has no port {port} (it has {ports:?})",
                b.name
            ),
        ));
    }
    Ok(BackendKey {
        namespace: ns.to_string(),
        name: b.name.clone(),
        port,
    })
}

/// Whether aim serves a class, under `scope`.
fn serves_class(c: &GatewayClass, scope: &Scope) -> bool {
    c.spec.controller_name == CONTROLLER_NAME
        && scope.class.as_ref().is_none_or(|n| *n == c.metadata.name)
}

/// Computes the routing table and the status to write.
pub fn plan(world: &World<'_>, scope: &Scope) -> Plan {
    let mut out = Plan::default();
    // Classes: with --gateway, only the class of that Gateway is ours to accept.
    let gateway_class = scope.gateway.as_ref().and_then(|(ns, name)| {
        world
            .gateways
            .iter()
            .find(|g| g.metadata.ns() == ns && g.metadata.name == *name)
            .map(|g| g.spec.gateway_class_name.clone())
    });
    let classes: BTreeSet<&str> = world
        .classes
        .iter()
        .filter(|c| serves_class(c, scope))
        .filter(|c| {
            scope.gateway.is_none() || gateway_class.as_deref() == Some(c.metadata.name.as_str())
        })
        .map(|c| {
            out.classes.push(ClassStatus {
                name: c.metadata.name.clone(),
                conditions: vec![Cond {
                    observed_generation: c.metadata.generation,
                    ..Cond::new(
                        "Accepted",
                        true,
                        "Accepted",
                        "aim gateway serves this class".into(),
                    )
                }],
            });
            c.metadata.name.as_str()
        })
        .collect();

    // Gateways and their listeners.
    let mut gateways: Vec<(&Gateway, Vec<ListenerPlan<'_>>)> = world
        .gateways
        .iter()
        .filter(|g| classes.contains(g.spec.gateway_class_name.as_str()))
        .filter(|g| {
            scope
                .gateway
                .as_ref()
                .is_none_or(|(ns, n)| g.metadata.ns() == ns && g.metadata.name == *n)
        })
        .map(|g| {
            let listeners = g
                .spec
                .listeners
                .iter()
                .map(|l| {
                    let kinds = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref());
                    let invalid = if l.protocol != "HTTP" {
                        Some((
                            "Accepted",
                            "UnsupportedProtocol",
                            format!(
                                "protocol {} is not served; aim serves HTTP listeners",
                                l.protocol
                            ),
                        ))
                    } else if kinds.is_some_and(|k| k.iter().any(|k| !is_http_route_kind(k))) {
                        Some((
                            "ResolvedRefs",
                            "InvalidRouteKinds",
                            "allowedRoutes.kinds: aim serves HTTPRoute only".to_string(),
                        ))
                    } else {
                        None
                    };
                    ListenerPlan {
                        spec: l,
                        invalid,
                        attached: BTreeSet::new(),
                    }
                })
                .collect();
            (g, listeners)
        })
        .collect();

    // Routes, oldest first (the spec's tie-break), then by namespace/name.
    let mut routes: Vec<&HttpRoute> = world.routes.iter().collect();
    routes.sort_by(|a, b| {
        (
            &a.metadata.creation_timestamp,
            a.metadata.ns(),
            &a.metadata.name,
        )
            .cmp(&(
                &b.metadata.creation_timestamp,
                b.metadata.ns(),
                &b.metadata.name,
            ))
    });
    let mut entries: Vec<(SortKey, Entry)> = Vec::new();
    for (order, route) in routes.iter().enumerate() {
        let rns = route.metadata.ns();
        let generation = route.metadata.generation;
        let unsupported = unsupported(route);
        // backendRefs are resolved once per route.
        let mut unresolved: Option<(&'static str, String)> = None;
        let mut rule_backends: Vec<Vec<Backend>> = Vec::new();
        for rule in &route.spec.rules {
            let mut backends = Vec::new();
            for b in &rule.backend_refs {
                let target = resolve_backend(b, rns, world).map_err(|(reason, message)| {
                    if unresolved.is_none() {
                        unresolved = Some((reason, message.clone()));
                    }
                    message
                });
                backends.push(Backend {
                    target,
                    weight: b.weight.unwrap_or(1).max(0) as u32,
                });
            }
            rule_backends.push(backends);
        }
        let mut parents = Vec::new();
        let mut hostnames_served: Vec<Vec<String>> = Vec::new();
        for pref in &route.spec.parent_refs {
            if pref.group.as_deref().unwrap_or(GROUP) != GROUP
                || pref.kind.as_deref().unwrap_or("Gateway") != "Gateway"
            {
                continue;
            }
            let pns = pref.namespace.as_deref().unwrap_or(rns);
            let Some((gw, listeners)) = gateways
                .iter_mut()
                .find(|(g, _)| g.metadata.ns() == pns && g.metadata.name == pref.name)
            else {
                continue;
            };
            let gw_ns = gw.metadata.ns().to_string();
            let named: Vec<usize> = (0..listeners.len())
                .filter(|&i| {
                    let l = listeners[i].spec;
                    pref.section_name.as_ref().is_none_or(|s| *s == l.name)
                        && pref.port.is_none_or(|p| p == l.port)
                })
                .collect();
            let allowed: Vec<usize> = named
                .iter()
                .copied()
                .filter(|&i| {
                    listeners[i].invalid.is_none()
                        && listeners[i].admits_namespace(&gw_ns, rns, world)
                })
                .collect();
            let hosts: Vec<(usize, Vec<String>)> = allowed
                .iter()
                .filter_map(|&i| {
                    intersect_hostnames(
                        listeners[i].spec.hostname.as_deref(),
                        &route.spec.hostnames,
                    )
                    .map(|h| (i, h))
                })
                .collect();
            let accepted = if named.is_empty() {
                Cond::new(
                    "Accepted",
                    false,
                    "NoMatchingParent",
                    format!(
                        "Gateway {pns}/{} has no listener{}{}",
                        pref.name,
                        pref.section_name
                            .as_ref()
                            .map(|s| format!(" named {s}"))
                            .unwrap_or_default(),
                        pref.port
                            .map(|p| format!(" on port {p}"))
                            .unwrap_or_default()
                    ),
                )
            } else if allowed.is_empty() {
                Cond::new(
                    "Accepted",
                    false,
                    "NotAllowedByListeners",
                    format!(
                        "no listener of Gateway {pns}/{} admits HTTPRoutes from namespace {rns}",
                        pref.name
                    ),
                )
            } else if hosts.is_empty() {
                Cond::new(
                    "Accepted",
                    false,
                    "NoMatchingListenerHostname",
                    format!(
                        "the route's hostnames {:?} match no listener hostname of Gateway {pns}/{}",
                        route.spec.hostnames, pref.name
                    ),
                )
            } else if let Some(why) = &unsupported {
                Cond::new("Accepted", false, "UnsupportedValue", why.clone())
            } else {
                for (i, h) in &hosts {
                    listeners[*i]
                        .attached
                        .insert((rns.to_string(), route.metadata.name.clone()));
                    if !hostnames_served.contains(h) {
                        hostnames_served.push(h.clone());
                    }
                }
                Cond::new(
                    "Accepted",
                    true,
                    "Accepted",
                    format!("attached to Gateway {pns}/{}", pref.name),
                )
            };
            let resolved = match &unresolved {
                Some((reason, message)) => {
                    Cond::new("ResolvedRefs", false, reason, message.clone())
                }
                None => Cond::new(
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "every backendRef resolves".into(),
                ),
            };
            parents.push(ParentStatus {
                parent_ref: pref.clone(),
                conditions: [accepted, resolved]
                    .into_iter()
                    .map(|c| Cond {
                        observed_generation: generation,
                        ..c
                    })
                    .collect(),
            });
        }
        if parents.is_empty() {
            continue;
        }
        out.routes.push(RouteStatus {
            namespace: rns.to_string(),
            name: route.metadata.name.clone(),
            parents,
        });
        // Program the rules once per distinct hostname set.
        for (ri, rule) in route.spec.rules.iter().enumerate() {
            if hostnames_served.is_empty() {
                break;
            }
            let request_timeout = rule
                .timeouts
                .as_ref()
                .and_then(|t| t.request.as_deref())
                .and_then(|t| gateway_duration(t).ok());
            let action = std::sync::Arc::new(Action::new(
                format!("{rns}/{}", route.metadata.name),
                ri,
                rule_backends[ri].clone(),
                &rule.filters,
                request_timeout,
            ));
            let default_match = [Match::default()];
            let matches = if rule.matches.is_empty() {
                &default_match[..]
            } else {
                &rule.matches[..]
            };
            for (mi, m) in matches.iter().enumerate() {
                for hostnames in &hostnames_served {
                    let entry = entry_of(m, hostnames.clone(), action.clone());
                    let key = SortKey::of(&entry, order, ri, mi);
                    entries.push((key, entry));
                }
            }
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    out.table.entries = entries.into_iter().map(|(_, e)| e).collect();

    for (g, listeners) in &gateways {
        let generation = g.metadata.generation;
        let valid = listeners.iter().filter(|l| l.invalid.is_none()).count();
        let stamp = |c: Cond| Cond {
            observed_generation: generation,
            ..c
        };
        let conditions = if valid == 0 && !listeners.is_empty() {
            vec![
                Cond::new(
                    "Accepted",
                    false,
                    "ListenersNotValid",
                    "no listener can be served".into(),
                ),
                Cond::new(
                    "Programmed",
                    false,
                    "Invalid",
                    "no listener can be served".into(),
                ),
            ]
        } else {
            vec![
                Cond::new("Accepted", true, "Accepted", "aim gateway serves it".into()),
                Cond::new(
                    "Programmed",
                    true,
                    "Programmed",
                    "its routes are in aim gateway's table".into(),
                ),
            ]
        };
        out.gateways.push(GatewayStatus {
            namespace: g.metadata.ns().to_string(),
            name: g.metadata.name.clone(),
            conditions: conditions.into_iter().map(stamp).collect(),
            listeners: listeners
                .iter()
                .map(|l| {
                    let http = RouteGroupKind {
                        group: Some(GROUP.into()),
                        kind: "HTTPRoute".into(),
                    };
                    let conditions = match &l.invalid {
                        None => vec![
                            Cond::new("Accepted", true, "Accepted", "served".into()),
                            Cond::new("Programmed", true, "Programmed", "served".into()),
                            Cond::new("ResolvedRefs", true, "ResolvedRefs", "resolved".into()),
                        ],
                        Some((t, reason, message)) => {
                            let mut c = vec![Cond::new(t, false, reason, message.clone())];
                            if *t != "Accepted" {
                                c.push(Cond::new("Accepted", true, "Accepted", "read".into()));
                            }
                            c.push(Cond::new("Programmed", false, "Invalid", message.clone()));
                            if *t != "ResolvedRefs" {
                                c.push(Cond::new(
                                    "ResolvedRefs",
                                    true,
                                    "ResolvedRefs",
                                    "resolved".into(),
                                ));
                            }
                            c
                        }
                    };
                    ListenerStatus {
                        name: l.spec.name.clone(),
                        supported_kinds: if l.spec.protocol == "HTTP" {
                            vec![http]
                        } else {
                            Vec::new()
                        },
                        attached_routes: l.attached.len() as i32,
                        conditions: conditions.into_iter().map(stamp).collect(),
                    }
                })
                .collect(),
        });
    }
    out
}

fn entry_of(m: &Match, hostnames: Vec<String>, action: std::sync::Arc<Action>) -> Entry {
    let path = match &m.path {
        Some(PathMatch {
            type_: Some(t),
            value,
        }) if t == "Exact" => PathKind::Exact(value.clone().unwrap_or_else(|| "/".into())),
        Some(p) => PathKind::Prefix(
            p.value
                .as_deref()
                .unwrap_or("/")
                .trim_end_matches('/')
                .to_string(),
        ),
        None => PathKind::Prefix(String::new()),
    };
    Entry {
        hostnames,
        path,
        method: m.method.clone(),
        headers: m
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect(),
        query: m
            .query_params
            .iter()
            .map(|q| (q.name.clone(), q.value.clone()))
            .collect(),
        action,
    }
}

/// The spec's precedence, as a key that sorts the winner first.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SortKey {
    exact: std::cmp::Reverse<bool>,
    prefix_len: std::cmp::Reverse<usize>,
    method: std::cmp::Reverse<bool>,
    headers: std::cmp::Reverse<usize>,
    query: std::cmp::Reverse<usize>,
    /// Position of the route, oldest first.
    route: usize,
    rule: usize,
    matched: usize,
}

impl SortKey {
    fn of(e: &Entry, route: usize, rule: usize, matched: usize) -> Self {
        use std::cmp::Reverse as R;
        let (exact, len) = match &e.path {
            PathKind::Exact(p) => (true, p.len()),
            PathKind::Prefix(p) => (false, p.len()),
        };
        SortKey {
            exact: R(exact),
            prefix_len: R(len),
            method: R(e.method.is_some()),
            headers: R(e.headers.len()),
            query: R(e.query.len()),
            route,
            rule,
            matched,
        }
    }
}

#[cfg(test)]
mod tests;
