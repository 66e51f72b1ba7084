//! The metricQuery parser must never panic, and whatever it accepts must
//! print to a form that parses back to the same query.

#![no_main]

use aim_scaler::query::parse_query;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(query) = parse_query(text) {
        let printed = query.to_string();
        let reparsed = parse_query(&printed).expect("canonical form parses");
        assert_eq!(reparsed, query, "round trip of {text:?} via {printed:?}");
    }
});
