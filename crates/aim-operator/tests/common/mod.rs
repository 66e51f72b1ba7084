//! Runs one operator per test binary, in-process, against the shared test
//! cluster. Tests in a binary share it, as they would share a real one.

#![allow(dead_code)]

pub mod kubelet;
pub mod registry;
pub mod token_server;

use std::sync::OnceLock;
use std::time::Duration;

use aim_api::AIMService;
use aim_api::service::ServicePhase;
use kube::api::Api;

pub const WAIT: Duration = Duration::from_secs(60);

static OPERATOR: OnceLock<std::net::SocketAddr> = OnceLock::new();

/// Starts the operator (once) on a thread of its own, so it outlives each
/// test's runtime, and returns its admin address.
pub fn operator() -> std::net::SocketAddr {
    *OPERATOR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let client = aim_testkit::client().await;
                // Reserve a free port for the admin server.
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap();
                let args = aim_operator::OperatorArgs {
                    admin_address: port,
                    namespace: "aim-system".into(),
                    no_leader_election: true,
                    identity: None,
                    scaler_address: "aim-scaler.aim-system.svc:4318".into(),
                };
                tx.send(port).unwrap();
                aim_operator::run_with(client, args, std::future::pending())
                    .await
                    .expect("operator runs");
            });
        });
        rx.recv().expect("operator started")
    })
}

/// Waits until the service reports `phase`, returning it.
pub async fn await_phase(api: &Api<AIMService>, name: &str, phase: ServicePhase) -> AIMService {
    aim_testkit::await_object(
        api,
        name,
        &format!("status {phase:?}"),
        WAIT,
        |s: &AIMService| s.status.as_ref().and_then(|st| st.status) == Some(phase),
    )
    .await
}

/// The condition `ty` of a service as (status, reason, message).
pub fn condition(svc: &AIMService, ty: &str) -> Option<(String, String, String)> {
    svc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}
