//! `aim gateway --kubernetes`: the Gateway API's objects followed with
//! reflectors, planned by [`crate::routes::plan`], the table swapped into
//! the proxy at once, and status written back with server-side apply under
//! aim's own field manager, only where it changed.
//!
//! Each backend (a Service port) is a [`Service`] of its own: its
//! endpoints (from [`crate::backends`]), its picker state and its
//! flow-control queue. A backend that leaves every route is closed: held
//! requests are refused, in-flight ones finish.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::backends::{SERVICE_NAME_LABEL, endpoints_of};
use crate::proxy::Client;
use crate::routes::{self, BackendKey, Cond, Plan, Scope, Table, World};
use crate::service::Service;

/// The field manager aim's status is applied with.
pub const FIELD_MANAGER: &str = "aim-gateway";
const VERSION: &str = "v1";

fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(routes::GROUP, VERSION, kind))
}

/// What the proxy routes by, swapped whole when the cluster changes.
pub struct Router {
    table: RwLock<Arc<Table>>,
    backends: Mutex<BTreeMap<BackendKey, Arc<Service>>>,
    /// Set by the first [`Router::install`], from a fully read cluster.
    installed: AtomicBool,
    picker: aim_picker::PickerConfig,
    queue: aim_picker::QueueConfig,
    client: Client,
    scrape_interval: Duration,
}

impl Router {
    pub fn new(
        picker: aim_picker::PickerConfig,
        queue: aim_picker::QueueConfig,
        client: Client,
        scrape_interval: Duration,
    ) -> Arc<Self> {
        Arc::new(Router {
            table: RwLock::new(Arc::new(Table::default())),
            backends: Mutex::new(BTreeMap::new()),
            installed: AtomicBool::new(false),
            picker,
            queue,
            client,
            scrape_interval,
        })
    }

    /// The current table (a request keeps the one it started with).
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a table from the cluster is installed (`/readyz`).
    pub fn has_table(&self) -> bool {
        self.installed.load(Ordering::Acquire)
    }

    pub fn backend(&self, key: &BackendKey) -> Option<Arc<Service>> {
        self.lock().get(key).cloned()
    }

    /// Every backend, for `/metrics` and shutdown.
    pub fn services(&self) -> Vec<Arc<Service>> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<BackendKey, Arc<Service>>> {
        self.backends.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs a new table and each backend's endpoints. Backends keep
    /// their state (in-flight counts, reports, queue) from table to table.
    pub fn install(
        &self,
        table: Table,
        endpoints: BTreeMap<BackendKey, Vec<crate::endpoints::EndpointSpec>>,
    ) {
        let wanted = table.backends();
        let mut closed = Vec::new();
        {
            let mut backends = self.lock();
            for key in &wanted {
                let svc = backends.entry(key.clone()).or_insert_with(|| {
                    let picker = aim_picker::Picker::new(self.picker)
                        .expect("the picker configuration was checked at start");
                    Service::new(
                        key.to_string(),
                        picker,
                        self.queue,
                        self.client.clone(),
                        self.scrape_interval,
                    )
                });
                svc.apply(endpoints.get(key).map(Vec::as_slice).unwrap_or_default());
            }
            backends.retain(|k, svc| {
                let keep = wanted.contains(k);
                if !keep {
                    closed.push(svc.clone());
                }
                keep
            });
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        self.installed.store(true, Ordering::Release);
        for svc in closed {
            tracing::info!(backend = %svc.name, "backend left every route; its requests finish");
            svc.close();
        }
    }
}

/// The objects the gateway follows.
struct Stores {
    classes: Store<DynamicObject>,
    gateways: Store<DynamicObject>,
    routes: Store<DynamicObject>,
    services: Store<KubeService>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
}

/// Starts a reflector for `api`; every change wakes `notify`.
fn follow<K>(api: Api<K>, dyntype: K::DynamicType, notify: Arc<Notify>) -> Store<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype);
    let reader = writer.as_reader();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => notify.notify_one(),
                Err(e) => tracing::warn!(error = %e, "watch failed; retrying"),
            }
        }
    });
    reader
}

fn dynamic(client: &kube::Client, kind: &str, notify: Arc<Notify>) -> Store<DynamicObject> {
    let ar = resource(kind);
    follow(Api::all_with(client.clone(), &ar), ar, notify)
}

fn parse<T: serde::de::DeserializeOwned + Default>(o: &DynamicObject) -> T {
    serde_json::to_value(o)
        .and_then(serde_json::from_value)
        .unwrap_or_else(|e| {
            tracing::warn!(name = ?o.metadata.name, error = %e, "cannot read object; ignoring it");
            T::default()
        })
}

/// Follows the cluster and keeps `router` and the status current until
/// the process ends.
pub async fn run(client: kube::Client, scope: Scope, router: Arc<Router>) {
    let notify = Arc::new(Notify::new());
    let stores = Stores {
        classes: dynamic(&client, "GatewayClass", notify.clone()),
        gateways: dynamic(&client, "Gateway", notify.clone()),
        routes: dynamic(&client, "HTTPRoute", notify.clone()),
        services: follow(Api::all(client.clone()), (), notify.clone()),
        slices: follow(Api::all(client.clone()), (), notify.clone()),
        pods: follow(Api::all(client.clone()), (), notify.clone()),
        namespaces: follow(Api::all(client.clone()), (), notify.clone()),
    };
    // Plan nothing from a half-read cluster: a missing Service would read
    // as BackendNotFound for a moment.
    let ready = async {
        let _ = stores.classes.wait_until_ready().await;
        let _ = stores.gateways.wait_until_ready().await;
        let _ = stores.routes.wait_until_ready().await;
        let _ = stores.services.wait_until_ready().await;
        let _ = stores.slices.wait_until_ready().await;
        let _ = stores.pods.wait_until_ready().await;
        let _ = stores.namespaces.wait_until_ready().await;
    };
    ready.await;
    tracing::info!(?scope, "following the Gateway API objects");
    let mut writer = StatusWriter::new(client);
    loop {
        let plan = reconcile(&stores, &scope, &router);
        writer.write(&stores, &plan).await;
        notify.notified().await;
        // Changes come in bursts (a rollout moves many pods): take them together.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reconcile(stores: &Stores, scope: &Scope, router: &Router) -> Plan {
    let classes: Vec<routes::GatewayClass> =
        stores.classes.state().iter().map(|o| parse(o)).collect();
    let gateways: Vec<routes::Gateway> = stores.gateways.state().iter().map(|o| parse(o)).collect();
    let http_routes: Vec<routes::HttpRoute> =
        stores.routes.state().iter().map(|o| parse(o)).collect();
    let services: Vec<KubeService> = stores
        .services
        .state()
        .iter()
        .map(|s| (**s).clone())
        .collect();
    let namespaces: BTreeMap<String, BTreeMap<String, String>> = stores
        .namespaces
        .state()
        .iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap_or_default(),
                n.metadata.labels.clone().unwrap_or_default(),
            )
        })
        .collect();
    let plan = routes::plan(
        &World {
            classes: &classes,
            gateways: &gateways,
            routes: &http_routes,
            services: &services,
            namespaces: &namespaces,
        },
        scope,
    );
    let slices = stores.slices.state();
    let pods = stores.pods.state();
    let mut endpoints = BTreeMap::new();
    for key in plan.table.backends() {
        let Some(svc) = services.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(&key.namespace)
                && s.metadata.name.as_deref() == Some(&key.name)
        }) else {
            continue;
        };
        let own_slices: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(&key.namespace)
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        == Some(&key.name)
            })
            .map(|s| &**s)
            .collect();
        let own_pods: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(&key.namespace))
            .map(|p| &**p)
            .collect();
        let set = endpoints_of(svc, key.port, &own_slices, &own_pods);
        endpoints.insert(key, set);
    }
    let Plan {
        table,
        classes,
        gateways,
        routes,
    } = plan;
    router.install(table, endpoints);
    Plan {
        table: Table::default(),
        classes,
        gateways,
        routes,
    }
}

// ---------------------------------------------------------------- status

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The conditions as JSON, each keeping the transition time it has in
/// `existing` when its status did not change.
pub fn conditions_json(desired: &[Cond], existing: Option<&Value>, now: &str) -> Vec<Value> {
    desired
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let before = existing
                .and_then(Value::as_array)
                .and_then(|a| a.iter().find(|e| e["type"] == c.type_));
            let time = before
                .filter(|b| b["status"] == status)
                .and_then(|b| b["lastTransitionTime"].as_str())
                .unwrap_or(now);
            let mut v = json!({
                "type": c.type_,
                "status": status,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": time,
            });
            if let Some(g) = c.observed_generation {
                v["observedGeneration"] = json!(g);
            }
            v
        })
        .collect()
}

/// Whether `existing` already says what `desired` says (transition times
/// aside), so no write is needed.
pub fn same_conditions(desired: &[Value], existing: Option<&Value>) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("lastTransitionTime");
        }
        v
    };
    let existing = existing.and_then(Value::as_array);
    desired.iter().all(|d| {
        existing.is_some_and(|e| {
            e.iter()
                .any(|x| x["type"] == d["type"] && strip(x) == strip(d))
        })
    })
}

struct StatusWriter {
    client: kube::Client,
    /// The last status body written per object, so a write that failed is
    /// retried and one that succeeded is not repeated before the store sees it.
    written: BTreeMap<String, Value>,
}

impl StatusWriter {
    fn new(client: kube::Client) -> Self {
        StatusWriter {
            client,
            written: BTreeMap::new(),
        }
    }

    async fn apply(
        &mut self,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        uid: Option<String>,
        status: Value,
    ) {
        // The uid keeps a recreated object (same name) from looking written.
        let key = status_key(kind, ns, name, uid.as_deref());
        if self.written.get(&key) == Some(&status) {
            return;
        }
        let ar = resource(kind);
        let api = match ns {
            Some(ns) => Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::<DynamicObject>::all_with(self.client.clone(), &ar),
        };
        let mut metadata = json!({"name": name});
        if let Some(ns) = ns {
            metadata["namespace"] = json!(ns);
        }
        let body = json!({
            "apiVersion": format!("{}/{VERSION}", routes::GROUP),
            "kind": kind,
            "metadata": metadata,
            "status": status,
        });
        match api
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(%kind, namespace = ns.unwrap_or(""), %name, "status written");
                self.written.insert(key, status);
            }
            Err(e) => {
                tracing::warn!(%kind, namespace = ns.unwrap_or(""), %name, error = %e, "cannot write status");
                self.written.remove(&key);
            }
        }
    }

    async fn write(&mut self, stores: &Stores, plan: &Plan) {
        // Forget what was written to objects that are gone.
        let live: BTreeSet<String> = [
            ("GatewayClass", &stores.classes),
            ("Gateway", &stores.gateways),
            ("HTTPRoute", &stores.routes),
        ]
        .into_iter()
        .flat_map(|(kind, store)| {
            store.state().into_iter().map(move |o| {
                let m = &o.metadata;
                status_key(
                    kind,
                    m.namespace.as_deref(),
                    m.name.as_deref().unwrap_or(""),
                    m.uid.as_deref(),
                )
            })
        })
        .collect();
        self.written.retain(|k, _| live.contains(k));
        let now = now();
        let find = |store: &Store<DynamicObject>, ns: Option<&str>, name: &str| {
            store.state().into_iter().find(|o| {
                o.metadata.name.as_deref() == Some(name) && o.metadata.namespace.as_deref() == ns
            })
        };
        for c in &plan.classes {
            let obj = find(&stores.classes, None, &c.name);
            let existing = obj.as_ref().map(|o| &o.data["status"]);
            let conditions =
                conditions_json(&c.conditions, existing.map(|s| &s["conditions"]), &now);
            if same_conditions(&conditions, existing.map(|s| &s["conditions"])) {
                continue;
            }
            self.apply(
                "GatewayClass",
                None,
                &c.name,
                obj.as_ref().and_then(|o| o.metadata.uid.clone()),
                json!({"conditions": conditions}),
            )
            .await;
        }
        for g in &plan.gateways {
            let obj = find(&stores.gateways, Some(&g.namespace), &g.name);
            let existing = obj
                .as_ref()
                .map(|o| o.data["status"].clone())
                .unwrap_or(Value::Null);
            let conditions = conditions_json(&g.conditions, Some(&existing["conditions"]), &now);
            let mut changed = !same_conditions(&conditions, Some(&existing["conditions"]));
            let mut listeners = Vec::new();
            for l in &g.listeners {
                let before = existing["listeners"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["name"] == l.name.as_str()));
                let conds = conditions_json(&l.conditions, before.map(|b| &b["conditions"]), &now);
                let kinds = serde_json::to_value(&l.supported_kinds).unwrap_or_default();
                changed |= before.is_none_or(|b| {
                    b["attachedRoutes"] != json!(l.attached_routes)
                        || b["supportedKinds"] != kinds
                        || !same_conditions(&conds, Some(&b["conditions"]))
                });
                listeners.push(json!({
                    "name": l.name,
                    "supportedKinds": kinds,
                    "attachedRoutes": l.attached_routes,
                    "conditions": conds,
                }));
            }
            if changed {
                self.apply(
                    "Gateway",
                    Some(&g.namespace),
                    &g.name,
                    obj.as_ref().and_then(|o| o.metadata.uid.clone()),
                    json!({"conditions": conditions, "listeners": listeners}),
                )
                .await;
            }
        }
        // The Gateways this process serves: its entries for other
        // Gateways (another aim gateway's scope) are not its to change.
        let served: BTreeSet<(String, String)> = plan
            .gateways
            .iter()
            .map(|g| (g.namespace.clone(), g.name.clone()))
            .collect();
        let mut planned = BTreeSet::new();
        for r in &plan.routes {
            planned.insert((r.namespace.clone(), r.name.clone()));
            let obj = find(&stores.routes, Some(&r.namespace), &r.name);
            let before: Vec<Value> = obj
                .as_ref()
                .and_then(|o| o.data["status"]["parents"].as_array().cloned())
                .unwrap_or_default();
            let mut ours = Vec::new();
            let mut changed = false;
            for p in &r.parents {
                let pref = serde_json::to_value(&p.parent_ref).unwrap_or_default();
                let old = before.iter().find(|b| {
                    b["controllerName"] == routes::CONTROLLER_NAME
                        && same_parent(&b["parentRef"], &pref)
                });
                let conds = conditions_json(&p.conditions, old.map(|o| &o["conditions"]), &now);
                changed |= old.is_none_or(|o| !same_conditions(&conds, Some(&o["conditions"])));
                ours.push(json!({
                    "parentRef": pref,
                    "controllerName": routes::CONTROLLER_NAME,
                    "conditions": conds,
                }));
            }
            let ours_before = before
                .iter()
                .filter(|b| is_ours(b, &r.namespace, &served))
                .count();
            changed |= ours_before != ours.len();
            if changed {
                let parents = merge_parents(&before, ours, &r.namespace, &served);
                let uid = obj.as_ref().and_then(|o| o.metadata.uid.clone());
                self.apply(
                    "HTTPRoute",
                    Some(&r.namespace),
                    &r.name,
                    uid,
                    json!({"parents": parents}),
                )
                .await;
            }
        }
        // Routes that left every served Gateway (a parentRef removed or
        // changed): their old entries from this process go.
        for obj in stores.routes.state() {
            let (Some(ns), Some(name)) = (&obj.metadata.namespace, &obj.metadata.name) else {
                continue;
            };
            if planned.contains(&(ns.clone(), name.clone())) {
                continue;
            }
            let before: Vec<Value> = obj.data["status"]["parents"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !before.iter().any(|b| is_ours(b, ns, &served)) {
                continue;
            }
            let parents = merge_parents(&before, Vec::new(), ns, &served);
            self.apply(
                "HTTPRoute",
                Some(ns),
                name,
                obj.metadata.uid.clone(),
                json!({"parents": parents}),
            )
            .await;
        }
    }
}

/// The key of an object's last written status.
fn status_key(kind: &str, ns: Option<&str>, name: &str, uid: Option<&str>) -> String {
    format!("{kind}/{}/{name}/{}", ns.unwrap_or(""), uid.unwrap_or(""))
}

/// Whether a `status.parents` entry is this process's: aim's controller
/// name, for a Gateway it serves (a parentRef's namespace defaults to the
/// route's).
fn is_ours(entry: &Value, route_ns: &str, served: &BTreeSet<(String, String)>) -> bool {
    if entry["controllerName"] != routes::CONTROLLER_NAME {
        return false;
    }
    let pref = &entry["parentRef"];
    let ns = pref["namespace"].as_str().unwrap_or(route_ns).to_string();
    let name = pref["name"].as_str().unwrap_or_default().to_string();
    served.contains(&(ns, name))
}

/// A route's `status.parents` with this process's entries replaced by
/// `ours`; other controllers' entries, and aim's for Gateways another
/// process serves, stay as they are.
fn merge_parents(
    before: &[Value],
    ours: Vec<Value>,
    route_ns: &str,
    served: &BTreeSet<(String, String)>,
) -> Vec<Value> {
    before
        .iter()
        .filter(|b| !is_ours(b, route_ns, served))
        .cloned()
        .chain(ours)
        .collect()
}

/// parentRefs compare by their fields, the apiserver's defaults
/// (group, kind) aside.
fn same_parent(a: &Value, b: &Value) -> bool {
    let field = |v: &Value, k: &str, default: &str| v[k].as_str().unwrap_or(default).to_string();
    ["name", "namespace", "sectionName"]
        .iter()
        .all(|k| field(a, k, "") == field(b, k, ""))
        && field(a, "group", routes::GROUP) == field(b, "group", routes::GROUP)
        && field(a, "kind", "Gateway") == field(b, "kind", "Gateway")
        && a["port"] == b["port"]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_times_stay_while_the_status_does() {
        let c = |status| Cond {
            type_: "Accepted",
            status,
            reason: "Accepted",
            message: "m".into(),
            observed_generation: Some(4),
        };
        let old = json!([{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "m",
                          "observedGeneration": 4, "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
        let same = conditions_json(&[c(true)], Some(&old), "2026-06-01T00:00:00Z");
        assert_eq!(same[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert!(same_conditions(&same, Some(&old)));
        let flipped = conditions_json(&[c(false)], Some(&old), "2026-06-01T00:00:00Z");
        assert_eq!(flipped[0]["lastTransitionTime"], "2026-06-01T00:00:00Z");
        assert!(!same_conditions(&flipped, Some(&old)));
        // A new generation is a change even with the same verdict.
        let newer = conditions_json(
            &[Cond {
                observed_generation: Some(5),
                ..c(true)
            }],
            Some(&old),
            "2026-06-01T00:00:00Z",
        );
        assert!(!same_conditions(&newer, Some(&old)));
        assert!(!same_conditions(&same, None));
    }

    #[test]
    fn only_this_processs_entries_are_replaced() {
        let served: BTreeSet<(String, String)> = [("infra".to_string(), "gw".to_string())].into();
        let entry = |controller: &str, pref: Value| json!({"controllerName": controller, "parentRef": pref, "conditions": []});
        let mine = entry(
            routes::CONTROLLER_NAME,
            json!({"name": "gw", "namespace": "infra"}),
        );
        // The parentRef's namespace defaults to the route's.
        let mine_implicit = entry(routes::CONTROLLER_NAME, json!({"name": "gw"}));
        let other_controller = entry(
            "example.com/gw",
            json!({"name": "gw", "namespace": "infra"}),
        );
        let other_scope = entry(
            routes::CONTROLLER_NAME,
            json!({"name": "edge", "namespace": "infra"}),
        );
        assert!(is_ours(&mine, "apps", &served));
        assert!(is_ours(&mine_implicit, "infra", &served));
        assert!(!is_ours(&mine_implicit, "apps", &served));
        assert!(!is_ours(&other_controller, "apps", &served));
        assert!(!is_ours(&other_scope, "apps", &served));
        let before = vec![mine.clone(), other_controller.clone(), other_scope.clone()];
        let new = entry(
            routes::CONTROLLER_NAME,
            json!({"name": "gw", "namespace": "infra", "sectionName": "http"}),
        );
        assert_eq!(
            merge_parents(&before, vec![new.clone()], "apps", &served),
            vec![other_controller.clone(), other_scope.clone(), new]
        );
        // A route that left the served Gateway loses only that entry.
        assert_eq!(
            merge_parents(&before, Vec::new(), "apps", &served),
            vec![other_controller, other_scope]
        );
    }

    #[test]
    fn parent_refs_compare_with_defaults_filled_in() {
        let written = json!({"name": "gw", "namespace": "infra"});
        let read_back = json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw", "namespace": "infra"});
        assert!(same_parent(&written, &read_back));
        assert!(!same_parent(
            &written,
            &json!({"name": "gw", "namespace": "other"})
        ));
        assert!(!same_parent(
            &written,
            &json!({"name": "gw", "namespace": "infra", "sectionName": "http"})
        ));
    }
}
