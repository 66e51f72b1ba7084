//! OTLP decoding (protobuf and JSON) and ingestion must never panic, and
//! queries over whatever got stored must not either.

#![no_main]

use aim_scaler::ingest::{IngestConfig, ingest};
use aim_scaler::query::{EvalRequest, Operation, evaluate, parse_query};
use aim_scaler::store::{Store, StoreConfig};
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;

const NOW: u64 = 1_700_000_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let request = if selector & 1 == 0 {
        ExportMetricsServiceRequest::decode(body).ok()
    } else {
        serde_json::from_slice::<ExportMetricsServiceRequest>(body).ok()
    };
    let Some(request) = request else { return };
    let store = Store::new(StoreConfig {
        max_series: 64,
        max_points_per_series: 16,
        ..StoreConfig::default()
    });
    let report = ingest(&store, &request, &IngestConfig::default(), NOW);
    let _ = report.partial_success();
    let names = store.metric_names();
    for name in names.iter().take(4) {
        for quantile in [None, Some(0.5)] {
            let Ok(query) = parse_query(&format!("sum({name:?})").replace('"', "")) else { continue };
            for operation in Operation::ALL {
                let _ = evaluate(
                    &store,
                    &EvalRequest { query: &query, operation, window: 120_000_000_000, now: NOW, quantile },
                );
            }
        }
    }
});
