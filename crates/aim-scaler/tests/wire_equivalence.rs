//! The borrowing protobuf reader (`otlp_wire`) against the prost path it
//! replaces on the hot path: random OTLP requests, encoded by prost, must
//! leave the same store contents and the same ingest report either way,
//! and corrupted or merged encodings must fail with prost's error or
//! ingest exactly as prost decodes them.

use aim_scaler::ingest::{IngestConfig, IngestReport, ingest};
use aim_scaler::otlp_wire::{accepts, ingest_protobuf};
use aim_scaler::store::{NANOS_PER_SECOND, Store, StoreConfig};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::metrics::v1::{
    Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, exemplar, exponential_histogram_data_point::Buckets, metric::Data,
    number_data_point, summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use proptest::prelude::*;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

const NOW: u64 = 1_700_000_000 * NANOS_PER_SECOND;

fn store(max_series: usize) -> Store {
    Store::new(StoreConfig {
        max_series,
        ..StoreConfig::default()
    })
}

/// Everything the store holds, as text (Debug of every series, sorted):
/// two stores are alike when these are equal.
fn dump(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    for name in store.metric_names() {
        store.visit_metric(&name, NOW, |labels, series| {
            out.push(format!("{name} {labels} {series:?}"));
        });
    }
    out.sort();
    out.push(format!("series {}", store.series_count()));
    out
}

/// The prost path: decode, then convert.
fn via_prost(
    bytes: &[u8],
    max_series: usize,
) -> Result<(IngestReport, Vec<String>), prost::DecodeError> {
    let store = store(max_series);
    let request = ExportMetricsServiceRequest::decode(bytes)?;
    let report = ingest(&store, &request, &IngestConfig::default(), NOW);
    Ok((report, dump(&store)))
}

/// The borrowing path, as the receivers call it.
fn via_wire(
    bytes: &[u8],
    max_series: usize,
) -> Result<(IngestReport, Vec<String>), (prost::DecodeError, Vec<String>)> {
    let store = store(max_series);
    match ingest_protobuf(&store, bytes, &IngestConfig::default(), NOW) {
        Ok(report) => Ok((report, dump(&store))),
        Err(error) => Err((error, dump(&store))),
    }
}

/// Both paths agree on `bytes`: the same error (and nothing stored), or
/// the same report and store contents.
fn assert_alike(bytes: &[u8], max_series: usize) -> Result<(), TestCaseError> {
    match (via_prost(bytes, max_series), via_wire(bytes, max_series)) {
        (Ok(prost), Ok(wire)) => {
            prop_assert_eq!(&prost.0, &wire.0);
            prop_assert_eq!(&prost.1, &wire.1);
        }
        (Err(prost), Err((wire, stored))) => {
            prop_assert_eq!(prost.to_string(), wire.to_string());
            prop_assert_eq!(stored, vec!["series 0".to_owned()]);
        }
        (prost, wire) => prop_assert!(
            false,
            "prost {:?} but the wire path {:?}",
            prost.map(|r| r.0),
            wire.map(|r| r.0).map_err(|e| e.0)
        ),
    }
    Ok(())
}

// ---- random OTLP requests ----

fn short_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-c]{1,2}",
        Just("é".to_owned()),
        Just("Qwen/Qwen3-8B".to_owned()),
    ]
}

fn any_value() -> impl Strategy<Value = AnyValue> {
    let leaf = prop_oneof![
        Just(None),
        short_text().prop_map(|s| Some(any_value::Value::StringValue(s))),
        any::<bool>().prop_map(|b| Some(any_value::Value::BoolValue(b))),
        any::<i64>().prop_map(|i| Some(any_value::Value::IntValue(i))),
        prop_oneof![
            any::<f64>(),
            Just(0.5),
            Just(-0.0),
            Just(f64::NAN),
            Just(f64::INFINITY)
        ]
        .prop_map(|d| Some(any_value::Value::DoubleValue(d))),
        proptest::collection::vec(any::<u8>(), 0..3)
            .prop_map(|b| Some(any_value::Value::BytesValue(b))),
        any::<i32>().prop_map(|i| Some(any_value::Value::StringValueStrindex(i))),
    ]
    .prop_map(|value| AnyValue { value });
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(|values| AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values })),
            }),
            proptest::collection::vec(("[a-b]", proptest::option::of(inner)), 0..3).prop_map(
                |pairs| AnyValue {
                    value: Some(any_value::Value::KvlistValue(KeyValueList {
                        values: pairs
                            .into_iter()
                            .map(|(key, value)| KeyValue {
                                key,
                                value,
                                ..Default::default()
                            })
                            .collect(),
                    })),
                }
            ),
        ]
    })
}

/// Keys collide with each other and with the resource attributes copied
/// into labels, so duplicates and overrides happen often.
fn key_value() -> impl Strategy<Value = KeyValue> {
    let key = prop_oneof![
        Just("pod"),
        Just("deployment"),
        Just("host.name"),
        Just("k8s.pod.name"),
        Just("service.name"),
        Just(""),
    ];
    let value = prop_oneof![
        3 => short_text().prop_map(|s| Some(AnyValue {
            value: Some(any_value::Value::StringValue(s)),
        })),
        1 => proptest::option::of(any_value()),
    ];
    (key, value, prop_oneof![Just(0), any::<i32>()]).prop_map(|(key, value, key_strindex)| {
        KeyValue {
            key: key.to_owned(),
            value,
            key_strindex,
        }
    })
}

fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
    proptest::collection::vec(key_value(), 0..4)
}

fn time() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(NOW),
        (0u64..30).prop_map(|s| NOW - s * NANOS_PER_SECOND),
        Just(NOW - 1000 * NANOS_PER_SECOND),
        Just(NOW + NANOS_PER_SECOND),
        any::<u64>(),
    ]
}

fn flags() -> impl Strategy<Value = u32> {
    prop_oneof![4 => Just(0), 1 => Just(1), 1 => any::<u32>()]
}

fn double() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => (-5i32..50).prop_map(f64::from),
        1 => any::<f64>(),
        1 => Just(f64::NAN),
        1 => Just(f64::NEG_INFINITY),
    ]
}

fn exemplars() -> impl Strategy<Value = Vec<Exemplar>> {
    proptest::collection::vec(
        (
            attributes(),
            time(),
            proptest::option::of(prop_oneof![
                double().prop_map(exemplar::Value::AsDouble),
                any::<i64>().prop_map(exemplar::Value::AsInt),
            ]),
            proptest::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(
                |(filtered_attributes, time_unix_nano, value, span_id)| Exemplar {
                    filtered_attributes,
                    time_unix_nano,
                    value,
                    trace_id: span_id.clone(),
                    span_id,
                },
            ),
        0..2,
    )
}

fn number_point() -> impl Strategy<Value = NumberDataPoint> {
    (
        attributes(),
        time(),
        time(),
        proptest::option::of(prop_oneof![
            double().prop_map(number_data_point::Value::AsDouble),
            any::<i64>().prop_map(number_data_point::Value::AsInt),
        ]),
        flags(),
        exemplars(),
    )
        .prop_map(
            |(attributes, start, time, value, flags, exemplars)| NumberDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: time,
                value,
                flags,
                exemplars,
            },
        )
}

fn histogram_point() -> impl Strategy<Value = HistogramDataPoint> {
    (
        (attributes(), time(), time(), any::<u64>()),
        proptest::option::of(double()),
        proptest::collection::vec(0u64..100, 0..5),
        proptest::collection::vec(double(), 0..4),
        flags(),
        (
            proptest::option::of(double()),
            proptest::option::of(double()),
            exemplars(),
        ),
    )
        .prop_map(
            |(
                (attributes, start, time, count),
                sum,
                bucket_counts,
                explicit_bounds,
                flags,
                (min, max, exemplars),
            )| {
                HistogramDataPoint {
                    attributes,
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    count,
                    sum,
                    bucket_counts,
                    explicit_bounds,
                    exemplars,
                    flags,
                    min,
                    max,
                }
            },
        )
}

fn buckets() -> impl Strategy<Value = Option<Buckets>> {
    proptest::option::of(
        (any::<i32>(), proptest::collection::vec(any::<u64>(), 0..3)).prop_map(
            |(offset, bucket_counts)| Buckets {
                offset,
                bucket_counts,
            },
        ),
    )
}

fn exponential_point() -> impl Strategy<Value = ExponentialHistogramDataPoint> {
    (
        (attributes(), time(), time(), any::<u64>()),
        (proptest::option::of(double()), any::<i32>(), any::<u64>()),
        (buckets(), buckets()),
        flags(),
        (exemplars(), proptest::option::of(double()), double()),
    )
        .prop_map(
            |(
                (attributes, start, time, count),
                (sum, scale, zero_count),
                (positive, negative),
                flags,
                (exemplars, min, zero_threshold),
            )| ExponentialHistogramDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: time,
                count,
                sum,
                scale,
                zero_count,
                positive,
                negative,
                flags,
                exemplars,
                min,
                max: min,
                zero_threshold,
            },
        )
}

fn summary_point() -> impl Strategy<Value = SummaryDataPoint> {
    (
        (attributes(), time(), time(), any::<u64>()),
        double(),
        proptest::collection::vec((double(), double()), 0..3),
        flags(),
    )
        .prop_map(
            |((attributes, start, time, count), sum, quantiles, flags)| SummaryDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: time,
                count,
                sum,
                quantile_values: quantiles
                    .into_iter()
                    .map(|(quantile, value)| ValueAtQuantile { quantile, value })
                    .collect(),
                flags,
            },
        )
}

fn temporality() -> impl Strategy<Value = i32> {
    prop_oneof![Just(0), Just(1), Just(2), any::<i32>()]
}

fn points<T: std::fmt::Debug>(strategy: impl Strategy<Value = T>) -> impl Strategy<Value = Vec<T>> {
    proptest::collection::vec(strategy, 0..4)
}

fn data() -> impl Strategy<Value = Option<Data>> {
    proptest::option::weighted(
        0.9,
        prop_oneof![
            points(number_point()).prop_map(|data_points| Data::Gauge(Gauge { data_points })),
            (points(number_point()), temporality(), any::<bool>()).prop_map(
                |(data_points, aggregation_temporality, is_monotonic)| Data::Sum(Sum {
                    data_points,
                    aggregation_temporality,
                    is_monotonic,
                })
            ),
            (points(histogram_point()), temporality()).prop_map(
                |(data_points, aggregation_temporality)| Data::Histogram(Histogram {
                    data_points,
                    aggregation_temporality,
                })
            ),
            (points(exponential_point()), temporality()).prop_map(
                |(data_points, aggregation_temporality)| {
                    Data::ExponentialHistogram(ExponentialHistogram {
                        data_points,
                        aggregation_temporality,
                    })
                }
            ),
            points(summary_point()).prop_map(|data_points| Data::Summary(Summary { data_points })),
        ],
    )
}

fn metric() -> impl Strategy<Value = Metric> {
    let name = prop_oneof![
        Just("vllm:num_requests_running"),
        Just("a.b/c"),
        Just("a_b_c"),
        Just(""),
    ];
    (name, short_text(), short_text(), attributes(), data()).prop_map(
        |(name, description, unit, metadata, data)| Metric {
            name: name.to_owned(),
            description,
            unit,
            metadata,
            data,
        },
    )
}

fn resource() -> impl Strategy<Value = Option<Resource>> {
    proptest::option::weighted(
        0.8,
        (
            attributes(),
            any::<u32>(),
            proptest::collection::vec(
                (
                    short_text(),
                    short_text(),
                    proptest::collection::vec(short_text(), 0..2),
                )
                    .prop_map(|(schema_url, r#type, id_keys)| EntityRef {
                        schema_url,
                        r#type,
                        description_keys: id_keys.clone(),
                        id_keys,
                    }),
                0..2,
            ),
        )
            .prop_map(
                |(attributes, dropped_attributes_count, entity_refs)| Resource {
                    attributes,
                    dropped_attributes_count,
                    entity_refs,
                },
            ),
    )
}

fn scope_metrics() -> impl Strategy<Value = ScopeMetrics> {
    (
        proptest::option::of(
            (short_text(), short_text(), attributes(), any::<u32>()).prop_map(
                |(name, version, attributes, dropped_attributes_count)| InstrumentationScope {
                    name,
                    version,
                    attributes,
                    dropped_attributes_count,
                },
            ),
        ),
        proptest::collection::vec(metric(), 0..4),
        short_text(),
    )
        .prop_map(|(scope, metrics, schema_url)| ScopeMetrics {
            scope,
            metrics,
            schema_url,
        })
}

fn request() -> impl Strategy<Value = ExportMetricsServiceRequest> {
    proptest::collection::vec(
        (
            resource(),
            proptest::collection::vec(scope_metrics(), 0..3),
            short_text(),
        )
            .prop_map(|(resource, scope_metrics, schema_url)| ResourceMetrics {
                resource,
                scope_metrics,
                schema_url,
            }),
        0..3,
    )
    .prop_map(|resource_metrics| ExportMetricsServiceRequest { resource_metrics })
}

/// A length-delimited field: tag, length, bytes.
fn field(tag: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(tag, WireType::LengthDelimited, &mut out);
    encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// One corruption of an encoding.
#[derive(Clone, Debug)]
enum Damage {
    Overwrite(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Damage::Overwrite(at, byte)),
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..4))
            .prop_map(|(at, bytes)| Damage::Insert(at, bytes)),
        any::<usize>().prop_map(Damage::Remove),
    ]
}

fn apply(bytes: &mut Vec<u8>, damage: &Damage) {
    if bytes.is_empty() {
        return;
    }
    match damage {
        Damage::Overwrite(at, byte) => {
            let at = at % bytes.len();
            bytes[at] = *byte;
        }
        Damage::Truncate(at) => bytes.truncate(at % bytes.len()),
        Damage::Insert(at, new) => {
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, new.iter().copied());
        }
        Damage::Remove(at) => {
            let at = at % bytes.len();
            bytes.remove(at);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// Every request prost encodes takes the borrowing path (it is not
    /// left to prost) and stores what the prost path stores, with the same
    /// report; with a small series cap too, so rejections are compared.
    #[test]
    fn prost_encoded_requests_ingest_alike(request in request(), max_series in prop_oneof![Just(3usize), Just(10_000)]) {
        let bytes = request.encode_to_vec();
        prop_assert!(accepts(&bytes), "a prost encoding was left to prost");
        assert_alike(&bytes, max_series)?;
    }

    /// Corrupted encodings: prost's error (and nothing stored) where prost
    /// fails, otherwise the same ingest.
    #[test]
    fn corrupted_requests_fail_or_ingest_alike(request in request(), damages in proptest::collection::vec(damage(), 1..4)) {
        let mut bytes = request.encode_to_vec();
        for damage in &damages {
            apply(&mut bytes, damage);
        }
        assert_alike(&bytes, 10_000)?;
    }

    /// Protobuf merges a message sent in two pieces: two resources,
    /// metrics with two data fields, two scopes. The borrowing reader
    /// leaves those to prost, so the result is still prost's.
    #[test]
    fn merged_messages_ingest_alike(
        a in request(),
        b in request(),
        m1 in metric(),
        m2 in metric(),
        r1 in resource(),
        r2 in resource(),
    ) {
        // Two ExportMetricsServiceRequests back to back are one request.
        let mut bytes = a.encode_to_vec();
        bytes.extend(b.encode_to_vec());
        prop_assert!(accepts(&bytes));
        assert_alike(&bytes, 10_000)?;

        // One Metric sent as two: name, description, data merged.
        let mut metric = m1.encode_to_vec();
        metric.extend(m2.encode_to_vec());
        let scope = field(2, &metric);
        let resource_metrics = field(2, &scope);
        let mut with_resource = r1.map(|r| field(1, &r.encode_to_vec())).unwrap_or_default();
        with_resource.extend(r2.map(|r| field(1, &r.encode_to_vec())).unwrap_or_default());
        with_resource.extend(&resource_metrics);
        assert_alike(&field(1, &resource_metrics), 10_000)?;
        assert_alike(&field(1, &with_resource), 10_000)?;
    }
}

/// Repeated numeric fields may come packed (what prost writes) or one
/// value per field (what some encoders write); both read alike.
#[test]
fn unpacked_bucket_counts_and_bounds_read_like_packed() {
    let mut point = Vec::new();
    point.extend(field(
        9,
        &KeyValue {
            key: "pod".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("a".into())),
            }),
            ..Default::default()
        }
        .encode_to_vec(),
    ));
    encode_key(3, WireType::SixtyFourBit, &mut point);
    point.extend(NOW.to_le_bytes());
    for count in [1u64, 2, 3] {
        encode_key(6, WireType::SixtyFourBit, &mut point);
        point.extend(count.to_le_bytes());
    }
    for bound in [0.5f64, 1.0] {
        encode_key(7, WireType::SixtyFourBit, &mut point);
        point.extend(bound.to_le_bytes());
    }
    let histogram = field(1, &point);
    let mut metric = field(1, b"h");
    metric.extend(field(9, &histogram));
    let bytes = field(1, &field(2, &field(2, &metric)));
    assert!(accepts(&bytes));
    let (report, stored) = via_wire(&bytes, 10).unwrap();
    assert_eq!(report.stored, 1);
    assert!(stored[0].contains("buckets: [1, 2, 3]"), "{stored:?}");
    assert!(stored[0].contains("bounds: [0.5, 1.0]"), "{stored:?}");
    assert_alike(&bytes, 10).unwrap();
}

/// Values prost reads leniently are read the same way: a bool stored as
/// 2, an int64 as a ten-byte varint, a uint32 flag wider than 32 bits.
#[test]
fn lenient_scalars_read_like_prost() {
    let mut flag = AnyValue::default().encode_to_vec();
    encode_key(2, WireType::Varint, &mut flag);
    encode_varint(2, &mut flag);
    let mut int = Vec::new();
    encode_key(3, WireType::Varint, &mut int);
    encode_varint(-7i64 as u64, &mut int);
    let mut point = Vec::new();
    for (key, value) in [("b", &flag), ("i", &int)] {
        let mut kv = field(1, key.as_bytes());
        kv.extend(field(2, value));
        point.extend(field(7, &kv));
    }
    encode_key(3, WireType::SixtyFourBit, &mut point);
    point.extend(NOW.to_le_bytes());
    encode_key(4, WireType::SixtyFourBit, &mut point);
    point.extend(1.5f64.to_le_bytes());
    encode_key(8, WireType::Varint, &mut point);
    encode_varint(1 << 33, &mut point);
    let mut metric = field(1, b"g");
    metric.extend(field(5, &field(1, &point)));
    let bytes = field(1, &field(2, &field(2, &metric)));
    assert!(accepts(&bytes));
    let (report, stored) = via_wire(&bytes, 10).unwrap();
    assert_eq!(
        report.stored, 1,
        "flags wider than 32 bits keep the low ones"
    );
    assert!(stored[0].contains(r#"b="true""#), "{stored:?}");
    assert!(stored[0].contains(r#"i="-7""#), "{stored:?}");
    assert_alike(&bytes, 10).unwrap();
}

/// Shapes the reader leaves to prost on purpose, and malformed input it
/// must not accept.
#[test]
fn left_to_prost_and_refused() {
    let metric = Metric {
        name: "g".into(),
        data: Some(Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                time_unix_nano: NOW,
                value: Some(number_data_point::Value::AsInt(3)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    let good = field(1, &field(2, &field(2, &metric.encode_to_vec())));
    assert!(accepts(&good));
    let (report, _) = via_wire(&good, 10).unwrap();
    assert_eq!(report.stored, 1);

    // A group (wire type 3) as an unknown field.
    let mut grouped = good.clone();
    encode_key(99, WireType::StartGroup, &mut grouped);
    encode_key(99, WireType::EndGroup, &mut grouped);
    assert!(!accepts(&grouped));
    assert_alike(&grouped, 10).unwrap();

    // Field 1 truncated; a known field with the wrong wire type; bad UTF-8
    // in a string the scaler does not even read (a metric's unit).
    let truncated = &good[..good.len() - 1];
    let mut wrong_type = Vec::new();
    encode_key(1, WireType::Varint, &mut wrong_type);
    encode_varint(5, &mut wrong_type);
    let mut bad_unit = metric.encode_to_vec();
    bad_unit.extend(field(3, &[0xff, 0xfe]));
    let bad_unit = field(1, &field(2, &field(2, &bad_unit)));
    for bad in [truncated, &wrong_type[..], &bad_unit[..]] {
        assert!(!accepts(bad));
        let (error, stored) = via_wire(bad, 10).unwrap_err();
        assert_eq!(stored, vec!["series 0".to_owned()]);
        assert_eq!(
            error.to_string(),
            ExportMetricsServiceRequest::decode(bad)
                .unwrap_err()
                .to_string()
        );
    }

    // A varint of ten bytes whose last byte overflows 64 bits, as a
    // point's flags: prost refuses it, so must the reader.
    let mut overflow = Vec::new();
    encode_key(3, WireType::SixtyFourBit, &mut overflow);
    overflow.extend(NOW.to_le_bytes());
    encode_key(8, WireType::Varint, &mut overflow);
    overflow.extend([0xff; 9]);
    overflow.push(0x02);
    let overflow = field(1, &field(2, &field(2, &field(5, &field(1, &overflow)))));
    assert!(!accepts(&overflow));
    assert_alike(&overflow, 10).unwrap();

    // Attribute values nested deeper than the reader goes.
    let mut value = AnyValue {
        value: Some(any_value::Value::StringValue("deep".into())),
    };
    for _ in 0..30 {
        value = AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue {
                values: vec![value],
            })),
        };
    }
    let mut deep = metric.clone();
    if let Some(Data::Gauge(g)) = &mut deep.data {
        g.data_points[0].attributes.push(KeyValue {
            key: "deep".into(),
            value: Some(value),
            ..Default::default()
        });
    }
    let deep = field(1, &field(2, &field(2, &deep.encode_to_vec())));
    assert!(!accepts(&deep));
    assert_alike(&deep, 10).unwrap();
}
