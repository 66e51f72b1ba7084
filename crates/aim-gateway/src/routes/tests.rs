use super::*;
use serde_json::{Value, json};

fn class(name: &str, controller: &str) -> GatewayClass {
    serde_json::from_value(json!({
        "metadata": {"name": name, "generation": 1},
        "spec": {"controllerName": controller},
    }))
    .unwrap()
}

fn gateway(ns: &str, name: &str, listeners: Value) -> Gateway {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "generation": 2},
        "spec": {"gatewayClassName": "aim", "listeners": listeners},
    }))
    .unwrap()
}

fn route(ns: &str, name: &str, created: &str, spec: Value) -> HttpRoute {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "generation": 3, "creationTimestamp": created},
        "spec": spec,
    }))
    .unwrap()
}

fn service(ns: &str, name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }))
    .unwrap()
}

/// The operator's route: one PathPrefix rewritten to `/`, one backend.
fn operator_route(ns: &str, name: &str, prefix: &str, backend: &str) -> HttpRoute {
    route(
        ns,
        name,
        "2026-01-01T00:00:00Z",
        json!({
            "parentRefs": [{"name": "gw", "namespace": "infra"}],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
                "backendRefs": [{"group": "", "kind": "Service", "name": backend, "namespace": ns, "port": 80}],
            }],
        }),
    )
}

struct Fixture {
    classes: Vec<GatewayClass>,
    gateways: Vec<Gateway>,
    routes: Vec<HttpRoute>,
    services: Vec<Service>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl Fixture {
    fn new(routes: Vec<HttpRoute>) -> Self {
        Fixture {
            classes: vec![class("aim", CONTROLLER_NAME)],
            gateways: vec![gateway(
                "infra",
                "gw",
                json!([{"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}]),
            )],
            routes,
            services: vec![service("a", "sim-a"), service("a", "sim-b")],
            namespaces: BTreeMap::new(),
        }
    }

    fn plan(&self, scope: &Scope) -> Plan {
        plan(
            &World {
                classes: &self.classes,
                gateways: &self.gateways,
                routes: &self.routes,
                services: &self.services,
                namespaces: &self.namespaces,
            },
            scope,
        )
    }
}

fn cond<'a>(cs: &'a [Cond], t: &str) -> &'a Cond {
    cs.iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} in {cs:?}"))
}

fn route_cond(p: &Plan, name: &str, t: &str) -> Cond {
    let r = p
        .routes
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no status for {name}: {:?}", p.routes));
    cond(&r.parents[0].conditions, t).clone()
}

fn req<'a>(path: &'a str, headers: &'a http::HeaderMap) -> RequestView<'a> {
    RequestView {
        host: Some("x.example"),
        method: "POST",
        path,
        query: None,
        headers,
    }
}

fn routed<'a>(p: &'a Plan, r: &RequestView<'_>) -> Option<(&'a str, usize)> {
    p.table
        .route(r)
        .map(|e| (e.action.route.as_str(), e.action.rule))
}

#[test]
fn only_classes_with_aims_controller_name_are_accepted() {
    let mut f = Fixture::new(vec![]);
    f.classes.push(class("other", "example.com/gateway"));
    let p = f.plan(&Scope::default());
    assert_eq!(p.classes.len(), 1);
    assert_eq!(p.classes[0].name, "aim");
    let c = cond(&p.classes[0].conditions, "Accepted");
    assert!(c.status);
    assert_eq!(c.observed_generation, Some(1));
    // --gateway-class names another class: aim's class is left alone.
    let p = f.plan(&Scope {
        class: Some("aim-2".into()),
        gateway: None,
    });
    assert!(p.classes.is_empty() && p.gateways.is_empty());
}

#[test]
fn gateways_of_other_classes_get_no_status() {
    let mut f = Fixture::new(vec![]);
    f.gateways[0].spec.gateway_class_name = "other".into();
    f.classes.push(class("other", "example.com/gateway"));
    assert!(f.plan(&Scope::default()).gateways.is_empty());
}

#[test]
fn a_gateway_is_accepted_and_counts_its_attached_routes() {
    let mut f = Fixture::new(vec![
        operator_route("a", "r1", "/a/one", "sim-a"),
        operator_route("a", "r2", "/a/two", "sim-b"),
    ]);
    f.gateways[0].spec.listeners.push(
        serde_json::from_value(json!({"name": "tls", "port": 443, "protocol": "HTTPS"})).unwrap(),
    );
    let p = f.plan(&Scope::default());
    let g = &p.gateways[0];
    assert!(cond(&g.conditions, "Accepted").status);
    assert!(cond(&g.conditions, "Programmed").status);
    assert_eq!(
        cond(&g.conditions, "Programmed").observed_generation,
        Some(2)
    );
    assert_eq!(g.listeners[0].attached_routes, 2);
    assert!(cond(&g.listeners[0].conditions, "Programmed").status);
    let tls = &g.listeners[1];
    assert_eq!(tls.attached_routes, 0);
    assert!(tls.supported_kinds.is_empty());
    let a = cond(&tls.conditions, "Accepted");
    assert_eq!((a.status, a.reason), (false, "UnsupportedProtocol"));
    assert!(!cond(&tls.conditions, "Programmed").status);
}

#[test]
fn a_gateway_without_a_servable_listener_is_not_accepted() {
    let mut f = Fixture::new(vec![]);
    f.gateways[0].spec.listeners[0].protocol = "TCP".into();
    let p = f.plan(&Scope::default());
    let a = cond(&p.gateways[0].conditions, "Accepted");
    assert_eq!((a.status, a.reason), (false, "ListenersNotValid"));
}

#[test]
fn a_listener_allowing_other_route_kinds_has_invalid_route_kinds() {
    let mut f = Fixture::new(vec![operator_route("a", "r", "/a", "sim-a")]);
    f.gateways[0].spec.listeners[0].allowed_routes =
        Some(serde_json::from_value(json!({"kinds": [{"kind": "GRPCRoute"}]})).unwrap());
    let p = f.plan(&Scope::default());
    let l = &p.gateways[0].listeners[0];
    let c = cond(&l.conditions, "ResolvedRefs");
    assert_eq!((c.status, c.reason), (false, "InvalidRouteKinds"));
    assert_eq!(
        route_cond(&p, "r", "Accepted").reason,
        "NotAllowedByListeners"
    );
}

#[test]
fn the_operators_route_is_accepted_resolved_and_rewritten() {
    let f = Fixture::new(vec![operator_route("a", "r", "/a/chat", "sim-a")]);
    let p = f.plan(&Scope::default());
    let a = route_cond(&p, "r", "Accepted");
    assert!(a.status, "{a:?}");
    assert_eq!(a.observed_generation, Some(3));
    assert!(route_cond(&p, "r", "ResolvedRefs").status);
    let h = http::HeaderMap::new();
    let e = p.table.route(&req("/a/chat/v1/completions", &h)).unwrap();
    let rewrite = e.action.rewrite.as_ref().unwrap().path.as_ref().unwrap();
    let PathKind::Prefix(prefix) = &e.path else {
        panic!("a prefix")
    };
    assert_eq!(
        rewrite_path("/a/chat/v1/completions", Some(prefix), rewrite),
        "/v1/completions"
    );
    assert_eq!(rewrite_path("/a/chat", Some(prefix), rewrite), "/");
    assert_eq!(
        p.table.backends().into_iter().collect::<Vec<_>>(),
        [BackendKey {
            namespace: "a".into(),
            name: "sim-a".into(),
            port: 80
        }]
    );
}

#[test]
fn bad_backend_refs_give_resolved_refs_false_with_the_spec_reason() {
    let rule = |backend: Value| json!({"parentRefs": [{"name": "gw", "namespace": "infra"}], "rules": [{"backendRefs": [backend]}]});
    let t = "2026-01-01T00:00:00Z";
    let f = Fixture::new(vec![
        route("a", "missing", t, rule(json!({"name": "nope", "port": 80}))),
        route(
            "a",
            "kind",
            t,
            rule(json!({"group": "example.com", "kind": "Bucket", "name": "b"})),
        ),
        route(
            "a",
            "other-ns",
            t,
            rule(json!({"name": "sim-a", "namespace": "b", "port": 80})),
        ),
        route("a", "port", t, rule(json!({"name": "sim-a", "port": 81}))),
        route("a", "no-port", t, rule(json!({"name": "sim-a"}))),
    ]);
    let p = f.plan(&Scope::default());
    for (name, reason, says) in [
        ("missing", "BackendNotFound", "no such Service"),
        ("kind", "InvalidKind", "Bucket"),
        ("other-ns", "RefNotPermitted", "ReferenceGrant"),
        ("port", "BackendNotFound", "no port 81"),
        ("no-port", "BackendNotFound", "port is required"),
    ] {
        let c = route_cond(&p, name, "ResolvedRefs");
        assert_eq!((c.status, c.reason), (false, reason), "{name}: {c:?}");
        assert!(c.message.contains(says), "{name}: {}", c.message);
        // The route is still accepted: its requests get a 500 naming the ref.
        assert!(route_cond(&p, name, "Accepted").status, "{name}");
    }
    let h = http::HeaderMap::new();
    let e = p.table.route(&req("/x", &h)).unwrap();
    assert!(e.action.choose().unwrap().target.is_err());
}

#[test]
fn listeners_admit_namespaces_as_from_says() {
    let mut f = Fixture::new(vec![operator_route("a", "r", "/a", "sim-a")]);
    f.gateways[0].spec.listeners[0].allowed_routes = None; // default: Same
    let p = f.plan(&Scope::default());
    let c = route_cond(&p, "r", "Accepted");
    assert_eq!((c.status, c.reason), (false, "NotAllowedByListeners"));
    assert!(p.table.entries.is_empty());
    assert_eq!(p.gateways[0].listeners[0].attached_routes, 0);

    f.gateways[0].spec.listeners[0].allowed_routes = Some(
        serde_json::from_value(json!({"namespaces": {"from": "Selector", "selector": {"matchLabels": {"aim/routes": "yes"}}}}))
            .unwrap(),
    );
    assert!(!route_cond(&f.plan(&Scope::default()), "r", "Accepted").status);
    f.namespaces
        .insert("a".into(), [("aim/routes".into(), "yes".into())].into());
    assert!(route_cond(&f.plan(&Scope::default()), "r", "Accepted").status);
}

#[test]
fn a_section_name_no_listener_has_is_no_matching_parent() {
    let mut r = operator_route("a", "r", "/a", "sim-a");
    r.spec.parent_refs[0].section_name = Some("https".into());
    let p = Fixture::new(vec![r.clone()]).plan(&Scope::default());
    let c = route_cond(&p, "r", "Accepted");
    assert_eq!((c.status, c.reason), (false, "NoMatchingParent"));
    assert!(c.message.contains("named https"), "{}", c.message);
    r.spec.parent_refs[0].section_name = Some("http".into());
    r.spec.parent_refs[0].port = Some(8080);
    let p = Fixture::new(vec![r]).plan(&Scope::default());
    assert_eq!(route_cond(&p, "r", "Accepted").reason, "NoMatchingParent");
}

#[test]
fn parent_refs_to_gateways_aim_does_not_serve_get_no_entry() {
    let mut r = operator_route("a", "r", "/a", "sim-a");
    r.spec.parent_refs.push(ParentRef {
        name: "elsewhere".into(),
        ..Default::default()
    });
    let p = Fixture::new(vec![r]).plan(&Scope::default());
    assert_eq!(p.routes[0].parents.len(), 1);
    assert_eq!(p.routes[0].parents[0].parent_ref.name, "gw");
    // Scoped to another Gateway, this route is none of aim's business.
    let f = Fixture::new(vec![operator_route("a", "r", "/a", "sim-a")]);
    let p = f.plan(&Scope {
        class: None,
        gateway: Some(("infra".into(), "other".into())),
    });
    assert!(p.routes.is_empty() && p.gateways.is_empty() && p.classes.is_empty());
}

#[test]
fn hostnames_intersect_and_the_most_specific_wins() {
    assert_eq!(
        intersect_hostnames(
            Some("*.example.com"),
            &["a.example.com".into(), "b.other".into()]
        ),
        Some(vec!["a.example.com".into()])
    );
    assert_eq!(
        intersect_hostnames(Some("a.example.com"), &["*.example.com".into()]),
        Some(vec!["a.example.com".into()])
    );
    assert_eq!(
        intersect_hostnames(Some("a.example.com"), &["b.example.com".into()]),
        None
    );
    assert_eq!(intersect_hostnames(None, &[]), Some(vec![]));

    let t = "2026-01-01T00:00:00Z";
    let spec = |hosts: Value, backend: &str| {
        json!({"parentRefs": [{"name": "gw", "namespace": "infra"}], "hostnames": hosts,
               "rules": [{"backendRefs": [{"name": backend, "port": 80}]}]})
    };
    let mut f = Fixture::new(vec![
        route("a", "any", t, spec(json!([]), "sim-a")),
        route("a", "wild", t, spec(json!(["*.example"]), "sim-a")),
        route("a", "exact", t, spec(json!(["x.example"]), "sim-b")),
    ]);
    let p = f.plan(&Scope::default());
    let h = http::HeaderMap::new();
    let mut r = req("/", &h);
    assert_eq!(routed(&p, &r).unwrap().0, "a/exact");
    r.host = Some("y.example");
    assert_eq!(routed(&p, &r).unwrap().0, "a/wild");
    r.host = Some("elsewhere");
    assert_eq!(routed(&p, &r).unwrap().0, "a/any");

    f.gateways[0].spec.listeners[0].hostname = Some("only.example".into());
    let p = f.plan(&Scope::default());
    let c = route_cond(&p, "exact", "Accepted");
    assert_eq!((c.status, c.reason), (false, "NoMatchingListenerHostname"));
}

#[test]
fn path_prefixes_match_whole_segments() {
    assert!(prefix_matches("/v1", "/v1"));
    assert!(prefix_matches("/v1", "/v1/"));
    assert!(prefix_matches("/v1", "/v1/models"));
    assert!(!prefix_matches("/v1", "/v1x"));
    assert!(!prefix_matches("/v1", "/v"));
    assert!(prefix_matches("", "/anything"));
    // A prefix written with a trailing slash is the same prefix.
    let f = Fixture::new(vec![operator_route("a", "r", "/a/chat/", "sim-a")]);
    let p = f.plan(&Scope::default());
    let h = http::HeaderMap::new();
    assert!(p.table.route(&req("/a/chat", &h)).is_some());
    assert!(p.table.route(&req("/a/chatty", &h)).is_none());
}

#[test]
fn precedence_follows_the_spec_order() {
    let t_old = "2026-01-01T00:00:00Z";
    let t_new = "2026-02-01T00:00:00Z";
    let backend = json!([{"name": "sim-a", "port": 80}]);
    let rule = |m: Value| json!({"matches": [m], "backendRefs": backend});
    let spec = |rules: Vec<Value>| json!({"parentRefs": [{"name": "gw", "namespace": "infra"}], "rules": rules});
    let f = Fixture::new(vec![
        // Written in the reverse order of their precedence, across two routes.
        route(
            "a",
            "new",
            t_new,
            spec(vec![
                rule(json!({"path": {"type": "PathPrefix", "value": "/v1"}})),
                rule(
                    json!({"path": {"type": "PathPrefix", "value": "/v1"}, "headers": [{"name": "X-Tier", "value": "gold"}]}),
                ),
                rule(json!({"path": {"type": "PathPrefix", "value": "/v1"}, "method": "POST"})),
            ]),
        ),
        route(
            "a",
            "old",
            t_old,
            spec(vec![
                rule(json!({"path": {"type": "PathPrefix", "value": "/v1"}})),
                rule(json!({"path": {"type": "PathPrefix", "value": "/v1/chat"}})),
                rule(json!({"path": {"type": "Exact", "value": "/v1/chat/completions"}})),
                rule(
                    json!({"path": {"type": "PathPrefix", "value": "/v1"}, "method": "POST",
                        "queryParams": [{"name": "beta", "value": "1"}]}),
                ),
            ]),
        ),
    ]);
    let p = f.plan(&Scope::default());
    let mut h = http::HeaderMap::new();
    h.insert("x-tier", "gold".parse().unwrap());
    let mut r = req("/v1/chat/completions", &h);
    assert_eq!(routed(&p, &r), Some(("a/old", 2)), "exact first");
    r.path = "/v1/chat/x";
    assert_eq!(routed(&p, &r), Some(("a/old", 1)), "longest prefix");
    r.path = "/v1/models";
    r.query = Some("beta=1");
    assert_eq!(
        routed(&p, &r),
        Some(("a/old", 3)),
        "method, then more headers/query: the older route's method+query beats method alone"
    );
    r.query = None;
    assert_eq!(routed(&p, &r), Some(("a/new", 2)), "a method beats headers");
    r.method = "GET";
    assert_eq!(routed(&p, &r), Some(("a/new", 1)), "headers beat none");
    let none = http::HeaderMap::new();
    r.headers = &none;
    assert_eq!(
        routed(&p, &r),
        Some(("a/old", 0)),
        "ties go to the older route"
    );
    r.path = "/v2";
    assert_eq!(routed(&p, &r), None);
}

#[test]
fn header_names_match_without_case_and_values_exactly() {
    let spec = json!({"parentRefs": [{"name": "gw", "namespace": "infra"}], "rules": [
        {"matches": [{"headers": [{"name": "X-Model", "value": "Big"}]}], "backendRefs": [{"name": "sim-b", "port": 80}]},
        {"backendRefs": [{"name": "sim-a", "port": 80}]},
    ]});
    let p =
        Fixture::new(vec![route("a", "r", "2026-01-01T00:00:00Z", spec)]).plan(&Scope::default());
    let mut h = http::HeaderMap::new();
    h.insert("x-model", "Big".parse().unwrap());
    assert_eq!(routed(&p, &req("/", &h)), Some(("a/r", 0)));
    h.insert("x-model", "big".parse().unwrap());
    assert_eq!(routed(&p, &req("/", &h)), Some(("a/r", 1)));
}

#[test]
fn weights_split_requests_exactly_and_zero_gets_none() {
    let spec = json!({"parentRefs": [{"name": "gw", "namespace": "infra"}], "rules": [{"backendRefs": [
        {"name": "sim-a", "port": 80, "weight": 3},
        {"name": "sim-b", "port": 80, "weight": 1},
        {"name": "nope", "port": 80, "weight": 0},
    ]}]});
    let p =
        Fixture::new(vec![route("a", "r", "2026-01-01T00:00:00Z", spec)]).plan(&Scope::default());
    let action = &p.table.entries[0].action;
    let mut counts = BTreeMap::<String, usize>::new();
    let mut run = Vec::new();
    for _ in 0..400 {
        let b = action.choose().unwrap();
        let name = b
            .target
            .as_ref()
            .map(|k| k.name.clone())
            .unwrap_or_default();
        run.push(name.clone());
        *counts.entry(name).or_default() += 1;
    }
    assert_eq!(counts.get("sim-a"), Some(&300));
    assert_eq!(counts.get("sim-b"), Some(&100));
    assert_eq!(counts.get(""), None, "weight 0 is never chosen");
    // Spread out, not in bursts: sim-b comes once in every four.
    assert!(
        run.chunks(4)
            .all(|c| c.iter().filter(|n| *n == "sim-b").count() == 1)
    );

    let zero = json!({"parentRefs": [{"name": "gw", "namespace": "infra"}], "rules": [{"backendRefs": [
        {"name": "sim-a", "port": 80, "weight": 0}]}]});
    let p =
        Fixture::new(vec![route("a", "r", "2026-01-01T00:00:00Z", zero)]).plan(&Scope::default());
    assert!(p.table.entries[0].action.choose().is_none());
}

#[test]
fn unsupported_matches_and_filters_are_refused_naming_the_field() {
    let t = "2026-01-01T00:00:00Z";
    let spec = |rule: Value| json!({"parentRefs": [{"name": "gw", "namespace": "infra"}], "rules": [rule]});
    let f = Fixture::new(vec![
        route(
            "a",
            "regex",
            t,
            spec(json!({"matches": [{"path": {"type": "RegularExpression", "value": "/v.*"}}]})),
        ),
        route(
            "a",
            "mirror",
            t,
            spec(json!({"filters": [{"type": "RequestMirror"}]})),
        ),
        route(
            "a",
            "hregex",
            t,
            spec(
                json!({"matches": [{"headers": [{"type": "RegularExpression", "name": "a", "value": "b"}]}]}),
            ),
        ),
        route(
            "a",
            "exact-rewrite",
            t,
            spec(json!({
            "matches": [{"path": {"type": "Exact", "value": "/x"}}],
            "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}]})),
        ),
    ]);
    let p = f.plan(&Scope::default());
    for (name, says) in [
        ("regex", "matches.path.type RegularExpression"),
        ("mirror", "filters type RequestMirror"),
        ("hregex", "matches.headers type RegularExpression"),
        ("exact-rewrite", "ReplacePrefixMatch needs every match"),
    ] {
        let c = route_cond(&p, name, "Accepted");
        assert_eq!((c.status, c.reason), (false, "UnsupportedValue"), "{name}");
        assert!(c.message.contains(says), "{name}: {}", c.message);
    }
    assert!(p.table.entries.is_empty());
}

#[test]
fn full_path_and_prefix_rewrites() {
    let full = PathModifier {
        type_: "ReplaceFullPath".into(),
        replace_full_path: Some("/v1/models".into()),
        replace_prefix_match: None,
    };
    assert_eq!(rewrite_path("/anything/at/all", None, &full), "/v1/models");
    let prefix = |to: &str| PathModifier {
        type_: "ReplacePrefixMatch".into(),
        replace_full_path: None,
        replace_prefix_match: Some(to.into()),
    };
    assert_eq!(
        rewrite_path("/foo/bar", Some("/foo"), &prefix("/xyz")),
        "/xyz/bar"
    );
    assert_eq!(rewrite_path("/foo", Some("/foo"), &prefix("/xyz/")), "/xyz");
    assert_eq!(rewrite_path("/foo/", Some("/foo"), &prefix("/")), "/");
}

#[test]
fn gateway_durations_parse_as_the_crds_write_them() {
    use std::time::Duration;
    assert_eq!(gateway_duration("120s"), Ok(Duration::from_secs(120)));
    assert_eq!(gateway_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(
        gateway_duration("1m500ms"),
        Ok(Duration::from_millis(60_500))
    );
    assert_eq!(gateway_duration("0s"), Ok(Duration::ZERO));
    for bad in ["", "10", "1d", "s", "123456s", "1h1m1s1ms1s", "1.5s", "-1s"] {
        let e = gateway_duration(bad).unwrap_err();
        assert!(e.starts_with(&format!("`{bad}`: ")), "{bad}: {e}");
    }
}

#[test]
fn a_rules_request_timeout_reaches_its_action() {
    let mut with = operator_route("a", "r", "/chat", "sim-a");
    with.spec.rules[0].timeouts = Some(Timeouts {
        request: Some("120s".into()),
        backend_request: None,
    });
    let mut zero = operator_route("a", "z", "/zero", "sim-a");
    zero.spec.rules[0].timeouts = Some(Timeouts {
        request: Some("0s".into()),
        backend_request: None,
    });
    let without = operator_route("a", "n", "/none", "sim-b");
    let p = Fixture::new(vec![with, zero, without]).plan(&Scope::default());
    let headers = http::HeaderMap::new();
    let timeout = |path: &str| {
        p.table
            .route(&req(path, &headers))
            .expect("routed")
            .action
            .request_timeout
    };
    assert_eq!(
        timeout("/chat/v1/completions"),
        Some(std::time::Duration::from_secs(120))
    );
    // Zero is no timeout, as the spec says.
    assert_eq!(timeout("/zero/v1/completions"), None);
    assert_eq!(timeout("/none/v1/completions"), None);
}

#[test]
fn backend_request_timeouts_and_bad_durations_are_refused_naming_the_field() {
    let with = |name: &str, t: Timeouts| {
        let mut r = operator_route("a", name, &format!("/{name}"), "sim-a");
        r.spec.rules[0].timeouts = Some(t);
        r
    };
    let p = Fixture::new(vec![
        with(
            "backend",
            Timeouts {
                request: None,
                backend_request: Some("10s".into()),
            },
        ),
        with(
            "bad",
            Timeouts {
                request: Some("2d".into()),
                backend_request: None,
            },
        ),
    ])
    .plan(&Scope::default());
    let c = route_cond(&p, "backend", "Accepted");
    assert!(!c.status);
    assert_eq!(c.reason, "UnsupportedValue");
    assert!(
        c.message.contains("spec.rules[0].timeouts.backendRequest"),
        "{}",
        c.message
    );
    let c = route_cond(&p, "bad", "Accepted");
    assert!(!c.status);
    assert!(
        c.message.starts_with("spec.rules[0].timeouts.request `2d`"),
        "{}",
        c.message
    );
}
