//! The lab feeds a policy only what a live trigger can: every signal a
//! default row reads names a query and an `operationOverTime` that
//! `aim scaler` itself accepts.

use aim_lab::metrics::Signal;
use aim_scaler::query::{Operation, parse_query};

#[test]
fn every_live_signal_is_a_query_the_scaler_parses() {
    use clap::ValueEnum;
    let mut live = 0;
    for signal in Signal::value_variants() {
        let Some((query, operation)) = signal.live_query() else {
            // Only the gateway's arrival counter, which no default row reads.
            assert_eq!(*signal, Signal::ArrivalRate);
            continue;
        };
        live += 1;
        parse_query(query).unwrap_or_else(|e| panic!("{signal:?}: {query:?}: {e}"));
        if let Some(op) = operation {
            assert!(Operation::parse(op).is_some(), "{signal:?}: {op}");
        }
    }
    assert_eq!(live, Signal::value_variants().len() - 1);
}
