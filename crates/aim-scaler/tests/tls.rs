//! TLS on the shared ports, and certificate reload when the files change.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

struct Pair {
    cert_pem: String,
    key_pem: String,
}

fn self_signed() -> Pair {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    Pair {
        cert_pem: generated.cert.pem(),
        key_pem: generated.signing_key.serialize_pem(),
    }
}

fn write(dir: &Path, pair: &Pair) {
    // Key first, then certificate: a reload between the two writes would
    // fail to load and keep the old pair, as designed.
    std::fs::write(dir.join("tls.key"), &pair.key_pem).unwrap();
    std::fs::write(dir.join("tls.crt"), &pair.cert_pem).unwrap();
}

async fn spec_over_tls(address: std::net::SocketAddr, ca_pem: &str) -> Result<(), String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut client =
        aim_scaler::proto::externalscaler::external_scaler_client::ExternalScalerClient::new(
            channel,
        );
    let metadata = kserve_metadata(
        "default",
        "huggingface-fbopt",
        "vllm:num_requests_running",
        "4",
        None,
    );
    client
        .get_metric_spec(scaled_object(
            "default",
            "huggingface-fbopt-predictor",
            metadata,
        ))
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls_and_reloads_a_rotated_certificate() {
    let dir = std::env::temp_dir().join(format!("aim-scaler-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = self_signed();
    let second = self_signed();
    write(&dir, &first);
    let scaler = start_scaler(|args| {
        args.tls_cert = Some(dir.join("tls.crt"));
        args.tls_key = Some(dir.join("tls.key"));
        args.tls_reload_interval = Duration::from_millis(100);
    })
    .await;
    let address = scaler.addresses[1];

    spec_over_tls(address, &first.cert_pem)
        .await
        .expect("first certificate is served");
    assert!(
        spec_over_tls(address, &second.cert_pem).await.is_err(),
        "not yet rotated"
    );

    // Rotate as cert-manager would; mtimes need to move.
    tokio::time::sleep(Duration::from_millis(20)).await;
    write(&dir, &second);
    let mut rotated = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if spec_over_tls(address, &second.cert_pem).await.is_ok() {
            rotated = true;
            break;
        }
    }
    assert!(rotated, "the new certificate is served without a restart");
    assert!(
        spec_over_tls(address, &first.cert_pem).await.is_err(),
        "the old one is gone"
    );

    // Plaintext clients are refused on a TLS port.
    let plain = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut client =
            aim_scaler::proto::externalscaler::external_scaler_client::ExternalScalerClient::new(
                channel,
            );
        let metadata = kserve_metadata("default", "x", "m", "4", None);
        assert!(
            client
                .get_metric_spec(scaled_object("default", "x-predictor", metadata))
                .await
                .is_err()
        );
    }
    scaler.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
