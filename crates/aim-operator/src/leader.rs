//! Leader election with a coordination.k8s.io Lease, so several operator
//! replicas can run and exactly one reconciles. The holder renews the lease
//! every `renew`; a replica that cannot renew before the lease expires steps
//! down by stopping, and a standby takes over once the lease lapses.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

/// AIM Engine's election ID, so the two operators never lead at once.
pub const LEASE_NAME: &str = "3be10d2f.eai.amd.com";

#[derive(Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew: Duration,
}

/// Blocks until this replica holds the lease.
pub async fn acquire(client: &Client, cfg: &LeaderConfig) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    loop {
        if try_acquire(&api, cfg).await? {
            return Ok(());
        }
        tokio::time::sleep(cfg.renew).await;
    }
}

/// Renews the lease forever; returns when renewal failed for longer than the
/// lease duration (leadership lost).
pub async fn hold(client: Client, cfg: LeaderConfig) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.renew).await;
        match try_acquire(&api, &cfg).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::error!("another replica took the lease");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "renewing the leader lease failed"),
        }
        if last_ok.elapsed() > cfg.lease_duration {
            tracing::error!("could not renew the leader lease in time");
            return;
        }
    }
}

async fn try_acquire(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<bool, kube::Error> {
    try_acquire_named(api, LEASE_NAME, cfg).await
}

/// Takes or renews the Lease `name` for `cfg.identity`. A lease with an
/// empty holder is free (that is how `release` hands it back).
pub async fn try_acquire_named(
    api: &Api<Lease>,
    name: &str,
    cfg: &LeaderConfig,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let existing = api.get_opt(name).await?;
    let Some(lease) = existing else {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": cfg.namespace},
            "spec": {
                "holderIdentity": cfg.identity,
                "leaseDurationSeconds": cfg.lease_duration.as_secs(),
                "acquireTime": MicroTime(now), "renewTime": MicroTime(now), "leaseTransitions": 0
            }
        }))
        .expect("static lease");
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expired = spec.renew_time.as_ref().is_none_or(|t| {
        let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
        t.0.as_second() + secs < now.as_second()
    });
    if holder != cfg.identity && !expired && !holder.is_empty() {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(holder != cfg.identity);
    let mut patch = serde_json::json!({
        "metadata": {"resourceVersion": lease.metadata.resource_version},
        "spec": {
            "holderIdentity": cfg.identity,
            "leaseDurationSeconds": cfg.lease_duration.as_secs(),
            "renewTime": MicroTime(now),
            "leaseTransitions": transitions,
        }
    });
    if holder != cfg.identity {
        patch["spec"]["acquireTime"] = serde_json::json!(MicroTime(now));
    }
    // The resourceVersion makes this a compare-and-swap: two standbys racing
    // for an expired lease cannot both win.
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Hands the Lease `name` back if `identity` holds it, so the next
/// claimant need not wait for it to expire. Losing the race is fine: the
/// lease then belongs to someone else already.
pub async fn release(api: &Api<Lease>, name: &str, identity: &str) -> Result<(), kube::Error> {
    let Some(lease) = api.get_opt(name).await? else {
        return Ok(());
    };
    let holder = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref());
    if holder != Some(identity) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": lease.metadata.resource_version},
        "spec": {"holderIdentity": ""}
    });
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
