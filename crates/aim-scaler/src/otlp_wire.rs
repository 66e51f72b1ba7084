//! OTLP metrics ingest straight from the protobuf bytes.
//!
//! prost turns a request into owned `String`s and `Vec`s: for a KServe pod
//! that is some thirty allocations per data point (every attribute key and
//! value, every message), all freed right after the point is stored. This
//! module reads the wire format in place instead: attribute keys and
//! values are `&str` slices of the request buffer, and a point of a series
//! the store already holds allocates nothing.
//!
//! It works in two passes over the buffer:
//!
//! 1. [`accepts`] walks the whole request against the OTLP schema and
//!    checks everything prost checks (wire types of known fields, lengths,
//!    varints, UTF-8 of every `string` field, unknown fields skippable),
//!    so a malformed request stores nothing, as before.
//! 2. The ingest pass reads the fields the scaler uses and hands the store
//!    the same points, labels and report as [`crate::ingest::ingest`] does
//!    for the prost-decoded request.
//!
//! A request the first pass does not accept goes to prost and the existing
//! path: a malformed one then fails with prost's own error, and the few
//! legal shapes this reader leaves to prost (a singular message field or a
//! oneof repeated, which protobuf merges; groups; nesting deeper than
//! [`MAX_DEPTH`]) are ingested exactly as before. Encoders do not produce
//! those shapes, so in practice every well-formed request takes the fast
//! path. `tests/wire_equivalence.rs` checks both paths store the same
//! things for random requests and random corruptions of them.

use crate::ingest::{
    FLAG_NO_RECORDED_VALUE, IngestConfig, IngestReport, empty_name_problem,
    histogram_shape_problem, ingest, no_value_problem, not_finite_problem, temporality,
};
use crate::labels::{canonicalize_pairs, normalize_metric_name_cow};
use crate::store::{
    DistributionPoint, Nanos, PointData, ScalarPoint, SeriesKind, Store, Temporality,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

/// Nesting (messages within messages) beyond which a request is left to
/// prost. OTLP metrics nest nine deep; only attribute values (arrays of
/// arrays) go further, and prost refuses past 100.
pub const MAX_DEPTH: u32 = 48;

/// Decodes and ingests one binary `ExportMetricsServiceRequest`. Errors are
/// prost's, for requests prost rejects; nothing is stored then.
pub fn ingest_protobuf(
    store: &Store,
    bytes: &[u8],
    config: &IngestConfig,
    received: Nanos,
) -> Result<IngestReport, prost::DecodeError> {
    if accepts(bytes) {
        return Ok(ingest_accepted(store, bytes, config, received));
    }
    let request = ExportMetricsServiceRequest::decode(bytes)?;
    Ok(ingest(store, &request, config, received))
}

/// Whether the borrowing reader takes `bytes` (see the module's text);
/// otherwise [`ingest_protobuf`] leaves them to prost.
pub fn accepts(bytes: &[u8]) -> bool {
    validate(Msg::Request, bytes, 0).is_ok()
}

/// The reader declined the buffer: malformed, or a shape left to prost.
#[derive(Debug)]
struct Decline;

type Read<T> = Result<T, Decline>;

/// One field's payload as it sits on the wire.
#[derive(Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

/// Fields of one message, in wire order.
struct Fields<'a> {
    buf: &'a [u8],
}

fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { buf }
}

#[inline]
fn varint(buf: &mut &[u8]) -> Read<u64> {
    // Most varints on the wire (keys, lengths, flags) are one byte.
    if let Some((&byte, rest)) = buf.split_first()
        && byte < 0x80
    {
        *buf = rest;
        return Ok(u64::from(byte));
    }
    varint_long(buf)
}

fn varint_long(buf: &mut &[u8]) -> Read<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&byte, rest) = buf.split_first().ok_or(Decline)?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            // The tenth byte may only carry the top bit of a u64.
            return if i == 9 && byte > 1 {
                Err(Decline)
            } else {
                Ok(value)
            };
        }
    }
    Err(Decline)
}

fn take<'a>(buf: &mut &'a [u8], len: u64) -> Read<&'a [u8]> {
    if len > buf.len() as u64 {
        return Err(Decline);
    }
    let (head, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(head)
}

fn fixed64(buf: &mut &[u8]) -> Read<u64> {
    let bytes = take(buf, 8)?;
    Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| Decline)?))
}

impl<'a> Fields<'a> {
    fn next_field(&mut self) -> Read<Option<(u32, Wire<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = varint(&mut self.buf)?;
        if key > u64::from(u32::MAX) {
            return Err(Decline);
        }
        let tag = (key >> 3) as u32;
        if tag == 0 {
            return Err(Decline);
        }
        let wire = match key & 7 {
            0 => Wire::Varint(varint(&mut self.buf)?),
            1 => Wire::Fixed64(fixed64(&mut self.buf)?),
            2 => {
                let len = varint(&mut self.buf)?;
                Wire::Bytes(take(&mut self.buf, len)?)
            }
            5 => {
                take(&mut self.buf, 4)?;
                Wire::Fixed32
            }
            // Groups (3, 4) are left to prost; 6 and 7 are not wire types.
            _ => return Err(Decline),
        };
        Ok(Some((tag, wire)))
    }
}

/// The ingest pass runs on validated bytes, where reading cannot fail;
/// iterating stops quietly if it ever did.
impl<'a> Iterator for Fields<'a> {
    type Item = (u32, Wire<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.next_field();
        debug_assert!(next.is_ok(), "validated bytes failed to read");
        next.ok().flatten()
    }
}

/// The messages of an `ExportMetricsServiceRequest`, for validation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Msg {
    Request,
    ResourceMetrics,
    Resource,
    EntityRef,
    ScopeMetrics,
    Scope,
    Metric,
    Gauge,
    Sum,
    Histogram,
    ExponentialHistogram,
    Summary,
    NumberPoint,
    HistogramPoint,
    ExponentialPoint,
    Buckets,
    SummaryPoint,
    Quantile,
    Exemplar,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

/// What a known field holds, as far as validation cares.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Field {
    /// int32/int64/uint32/uint64/sint32/bool/enum.
    Varint,
    /// fixed64/sfixed64/double.
    Fixed64,
    /// `string`: must be UTF-8.
    Str,
    Bytes,
    /// A repeated message.
    Repeated(Msg),
    /// A singular message: protobuf merges repeats, which is left to prost.
    Single(Msg),
    /// Repeated fixed64/double, packed or not.
    RepeatedFixed64,
    /// Repeated uint64, packed or not.
    RepeatedVarint,
    Unknown,
}

/// The OTLP schema (opentelemetry-proto 1.x field numbers).
fn field(msg: Msg, tag: u32) -> Field {
    use Field::*;
    match (msg, tag) {
        (Msg::Request, 1) => Repeated(Msg::ResourceMetrics),
        (Msg::ResourceMetrics, 1) => Single(Msg::Resource),
        (Msg::ResourceMetrics, 2) => Repeated(Msg::ScopeMetrics),
        (Msg::ResourceMetrics, 3) => Str,
        (Msg::Resource, 1) => Repeated(Msg::KeyValue),
        (Msg::Resource, 2) => Varint,
        (Msg::Resource, 3) => Repeated(Msg::EntityRef),
        (Msg::EntityRef, 1..=4) => Str,
        (Msg::ScopeMetrics, 1) => Single(Msg::Scope),
        (Msg::ScopeMetrics, 2) => Repeated(Msg::Metric),
        (Msg::ScopeMetrics, 3) => Str,
        (Msg::Scope, 1 | 2) => Str,
        (Msg::Scope, 3) => Repeated(Msg::KeyValue),
        (Msg::Scope, 4) => Varint,
        (Msg::Metric, 1..=3) => Str,
        (Msg::Metric, 5) => Single(Msg::Gauge),
        (Msg::Metric, 7) => Single(Msg::Sum),
        (Msg::Metric, 9) => Single(Msg::Histogram),
        (Msg::Metric, 10) => Single(Msg::ExponentialHistogram),
        (Msg::Metric, 11) => Single(Msg::Summary),
        (Msg::Metric, 12) => Repeated(Msg::KeyValue),
        (Msg::Gauge, 1) => Repeated(Msg::NumberPoint),
        (Msg::Sum, 1) => Repeated(Msg::NumberPoint),
        (Msg::Sum, 2 | 3) => Varint,
        (Msg::Histogram, 1) => Repeated(Msg::HistogramPoint),
        (Msg::Histogram, 2) => Varint,
        (Msg::ExponentialHistogram, 1) => Repeated(Msg::ExponentialPoint),
        (Msg::ExponentialHistogram, 2) => Varint,
        (Msg::Summary, 1) => Repeated(Msg::SummaryPoint),
        (Msg::NumberPoint, 7) => Repeated(Msg::KeyValue),
        (Msg::NumberPoint, 2..=4 | 6) => Fixed64,
        (Msg::NumberPoint, 5) => Repeated(Msg::Exemplar),
        (Msg::NumberPoint, 8) => Varint,
        (Msg::HistogramPoint, 9) => Repeated(Msg::KeyValue),
        (Msg::HistogramPoint, 2..=5 | 11 | 12) => Fixed64,
        (Msg::HistogramPoint, 6 | 7) => RepeatedFixed64,
        (Msg::HistogramPoint, 8) => Repeated(Msg::Exemplar),
        (Msg::HistogramPoint, 10) => Varint,
        (Msg::ExponentialPoint, 1) => Repeated(Msg::KeyValue),
        (Msg::ExponentialPoint, 2..=5 | 7 | 12..=14) => Fixed64,
        (Msg::ExponentialPoint, 6 | 10) => Varint,
        (Msg::ExponentialPoint, 8 | 9) => Single(Msg::Buckets),
        (Msg::ExponentialPoint, 11) => Repeated(Msg::Exemplar),
        (Msg::Buckets, 1) => Varint,
        (Msg::Buckets, 2) => RepeatedVarint,
        (Msg::SummaryPoint, 7) => Repeated(Msg::KeyValue),
        (Msg::SummaryPoint, 2..=5) => Fixed64,
        (Msg::SummaryPoint, 6) => Repeated(Msg::Quantile),
        (Msg::SummaryPoint, 8) => Varint,
        (Msg::Quantile, 1 | 2) => Fixed64,
        (Msg::Exemplar, 7) => Repeated(Msg::KeyValue),
        (Msg::Exemplar, 2 | 3 | 6) => Fixed64,
        (Msg::Exemplar, 4 | 5) => Bytes,
        (Msg::KeyValue, 1) => Str,
        (Msg::KeyValue, 2) => Single(Msg::AnyValue),
        (Msg::KeyValue, 3) => Varint,
        (Msg::AnyValue, 1) => Str,
        (Msg::AnyValue, 2 | 3 | 8) => Varint,
        (Msg::AnyValue, 4) => Fixed64,
        (Msg::AnyValue, 5) => Single(Msg::ArrayValue),
        (Msg::AnyValue, 6) => Single(Msg::KeyValueList),
        (Msg::AnyValue, 7) => Bytes,
        (Msg::ArrayValue, 1) => Repeated(Msg::AnyValue),
        (Msg::KeyValueList, 1) => Repeated(Msg::KeyValue),
        _ => Unknown,
    }
}

/// Whether `tag` of `msg` belongs to a oneof with message variants, where
/// a repeat would merge or replace: the reader leaves those to prost.
fn in_oneof(msg: Msg, tag: u32) -> bool {
    matches!(
        (msg, tag),
        (Msg::Metric, 5 | 7 | 9 | 10 | 11) | (Msg::AnyValue, 1..=8)
    )
}

/// Checks `buf` as a `msg` the way prost would decode it, declining
/// whatever prost would reject and the shapes left to it.
fn validate(msg: Msg, buf: &[u8], depth: u32) -> Read<()> {
    if depth > MAX_DEPTH {
        return Err(Decline);
    }
    let mut fields = fields(buf);
    // Singular message fields seen (tags below 32 in OTLP) and oneof
    // members seen.
    let mut singles = 0u32;
    let mut oneof_seen = false;
    while let Some((tag, wire)) = fields.next_field()? {
        let kind = field(msg, tag);
        if in_oneof(msg, tag) {
            if oneof_seen {
                return Err(Decline);
            }
            oneof_seen = true;
        }
        match (kind, wire) {
            (Field::Unknown, _) => {}
            (Field::Varint, Wire::Varint(_)) | (Field::Fixed64, Wire::Fixed64(_)) => {}
            (Field::Str, Wire::Bytes(bytes)) => {
                if !bytes.is_ascii() {
                    std::str::from_utf8(bytes).map_err(|_| Decline)?;
                }
            }
            (Field::Bytes, Wire::Bytes(_)) => {}
            (Field::Repeated(sub), Wire::Bytes(bytes)) => validate(sub, bytes, depth + 1)?,
            (Field::Single(sub), Wire::Bytes(bytes)) => {
                let bit = 1u32 << (tag & 31);
                if tag >= 32 || singles & bit != 0 {
                    return Err(Decline);
                }
                singles |= bit;
                validate(sub, bytes, depth + 1)?;
            }
            (Field::RepeatedFixed64, Wire::Fixed64(_)) => {}
            (Field::RepeatedFixed64, Wire::Bytes(bytes)) => {
                if !bytes.len().is_multiple_of(8) {
                    return Err(Decline);
                }
            }
            (Field::RepeatedVarint, Wire::Varint(_)) => {}
            (Field::RepeatedVarint, Wire::Bytes(mut bytes)) => {
                while !bytes.is_empty() {
                    varint(&mut bytes)?;
                }
            }
            // A known field with the wrong wire type: prost's error.
            _ => return Err(Decline),
        }
    }
    Ok(())
}

/// Text of a `string` field of validated bytes.
fn text(bytes: &[u8]) -> &str {
    let text = std::str::from_utf8(bytes);
    debug_assert!(text.is_ok(), "validated bytes hold UTF-8");
    text.unwrap_or("")
}

fn f64_of(bits: u64) -> f64 {
    f64::from_bits(bits)
}

/// A `KeyValue`'s key and its `AnyValue` bytes, if it has one.
fn key_value(bytes: &[u8]) -> (&str, Option<&[u8]>) {
    let (key, value) = key_value_bytes(bytes);
    (text(key), value)
}

/// [`key_value`] with the key's bytes.
fn key_value_bytes(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    let mut key: &[u8] = &[];
    let mut value = None;
    for (tag, wire) in fields(bytes) {
        match (tag, wire) {
            (1, Wire::Bytes(b)) => key = b,
            (2, Wire::Bytes(b)) => value = Some(b),
            _ => {}
        }
    }
    (key, value)
}

/// An attribute's label text: borrowed from the request when it is a
/// string, rendered like [`crate::ingest::render_any_value`] otherwise.
fn attribute_text(value: Option<&[u8]>) -> Cow<'_, str> {
    let Some(value) = value else {
        return Cow::Borrowed("");
    };
    // Validation let at most one oneof member through.
    for (tag, wire) in fields(value) {
        if let (1, Wire::Bytes(b)) = (tag, wire) {
            return Cow::Borrowed(text(b));
        }
    }
    let mut out = String::new();
    render(value, &mut out);
    Cow::Owned(out)
}

/// Appends an `AnyValue`'s text, as `render_any_value` writes it.
fn render(value: &[u8], out: &mut String) {
    for (tag, wire) in fields(value) {
        match (tag, wire) {
            (1, Wire::Bytes(b)) => out.push_str(text(b)),
            (2, Wire::Varint(v)) => out.push_str(if v != 0 { "true" } else { "false" }),
            (3, Wire::Varint(v)) => {
                let _ = write!(out, "{}", v as i64);
            }
            (4, Wire::Fixed64(bits)) => {
                let _ = write!(out, "{}", f64_of(bits));
            }
            (5, Wire::Bytes(array)) => {
                out.push('[');
                let mut first = true;
                for (tag, wire) in fields(array) {
                    if let (1, Wire::Bytes(item)) = (tag, wire) {
                        if !first {
                            out.push(',');
                        }
                        first = false;
                        render(item, out);
                    }
                }
                out.push(']');
            }
            (6, Wire::Bytes(list)) => {
                out.push('{');
                let mut first = true;
                for (tag, wire) in fields(list) {
                    if let (1, Wire::Bytes(kv)) = (tag, wire) {
                        if !first {
                            out.push(',');
                        }
                        first = false;
                        let (key, value) = key_value(kv);
                        out.push_str(key);
                        out.push('=');
                        if let Some(value) = value {
                            render(value, out);
                        }
                    }
                }
                out.push('}');
            }
            (7, Wire::Bytes(bytes)) => {
                for b in bytes {
                    let _ = write!(out, "{b:02x}");
                }
            }
            (8, Wire::Varint(v)) => {
                let _ = write!(out, "strindex:{}", v as i32);
            }
            _ => {}
        }
    }
}

type Label<'a> = (&'a str, Cow<'a, str>);

/// Buffers reused from point to point, so a known series allocates nothing.
#[derive(Default)]
struct Scratch<'a> {
    labels: Vec<Label<'a>>,
    buckets: Vec<u64>,
    bound_bits: Vec<u64>,
    bounds: Vec<f64>,
    quantiles: Vec<(f64, f64)>,
}

/// What every point of one metric shares.
struct Context<'a, 's> {
    store: &'s Store,
    resource: &'s [Label<'a>],
    received: Nanos,
    name: &'s str,
}

impl Context<'_, '_> {
    fn time_or_now(&self, time: u64) -> Nanos {
        if time == 0 { self.received } else { time }
    }
}

fn ingest_accepted(
    store: &Store,
    bytes: &[u8],
    config: &IngestConfig,
    received: Nanos,
) -> IngestReport {
    let mut report = IngestReport::default();
    // Room for a KServe pod's labels without growing.
    let mut scratch = Scratch {
        labels: Vec::with_capacity(16),
        ..Scratch::default()
    };
    let mut resource: Vec<Label<'_>> = Vec::with_capacity(8);
    for (tag, wire) in fields(bytes) {
        let (1, Wire::Bytes(resource_metrics)) = (tag, wire) else {
            continue;
        };
        resource.clear();
        for (tag, wire) in fields(resource_metrics) {
            if let (1, Wire::Bytes(r)) = (tag, wire) {
                for (tag, wire) in fields(r) {
                    if let (1, Wire::Bytes(kv)) = (tag, wire) {
                        let (key, value) = key_value_bytes(kv);
                        // Compared as bytes: most resource attributes are
                        // not copied, and need no text.
                        if config
                            .resource_attributes
                            .iter()
                            .any(|k| k.as_bytes() == key)
                        {
                            resource.push((text(key), attribute_text(value)));
                        }
                    }
                }
            }
        }
        for (tag, wire) in fields(resource_metrics) {
            let (2, Wire::Bytes(scope_metrics)) = (tag, wire) else {
                continue;
            };
            for (tag, wire) in fields(scope_metrics) {
                if let (2, Wire::Bytes(metric)) = (tag, wire) {
                    ingest_metric(
                        store,
                        &resource,
                        received,
                        metric,
                        &mut scratch,
                        &mut report,
                    );
                }
            }
        }
    }
    report
}

fn ingest_metric<'a>(
    store: &Store,
    resource: &[Label<'a>],
    received: Nanos,
    metric: &'a [u8],
    scratch: &mut Scratch<'a>,
    report: &mut IngestReport,
) {
    let mut name = "";
    let mut data = None;
    for (tag, wire) in fields(metric) {
        match (tag, wire) {
            (1, Wire::Bytes(b)) => name = text(b),
            (5 | 7 | 9 | 10 | 11, Wire::Bytes(b)) => data = Some((tag, b)),
            _ => {}
        }
    }
    // A metric with no data is skipped on its own.
    let Some((kind, data)) = data else { return };
    let name = normalize_metric_name_cow(name);
    if name.is_empty() {
        report.rejected_invalid += fields(data).filter(|(tag, _)| *tag == 1).count() as u64;
        report.problem(empty_name_problem);
        return;
    }
    let ctx = Context {
        store,
        resource,
        received,
        name: &name,
    };
    // Aggregation temporality and monotonicity, wherever they sit.
    let mut temporality_value = 0i32;
    let mut monotonic = false;
    for (tag, wire) in fields(data) {
        match (tag, wire) {
            (2, Wire::Varint(v)) => temporality_value = v as i32,
            (3, Wire::Varint(v)) => monotonic = v != 0,
            _ => {}
        }
    }
    let points = fields(data).filter_map(|(tag, wire)| match (tag, wire) {
        (1, Wire::Bytes(point)) => Some(point),
        _ => None,
    });
    match kind {
        5 => points.for_each(|p| scalar(&ctx, &SeriesKind::Gauge, p, scratch, report)),
        7 => {
            let kind = SeriesKind::Sum {
                temporality: temporality(temporality_value),
                monotonic,
            };
            points.for_each(|p| scalar(&ctx, &kind, p, scratch, report));
        }
        9 => {
            let temporality = temporality(temporality_value);
            points.for_each(|p| histogram(&ctx, temporality, p, scratch, report));
        }
        10 => points.for_each(|p| exponential(&ctx, p, scratch, report)),
        _ => points.for_each(|p| summary(&ctx, p, scratch, report)),
    }
}

/// Starts a point's labels with the resource's.
fn start_labels<'a>(labels: &mut Vec<Label<'a>>, resource: &[Label<'a>]) {
    labels.clear();
    labels.extend(resource.iter().cloned());
}

fn push_attribute<'a>(labels: &mut Vec<Label<'a>>, kv: &'a [u8]) {
    let (key, value) = key_value(kv);
    labels.push((key, attribute_text(value)));
}

fn append(
    ctx: &Context<'_, '_>,
    labels: &mut Vec<Label<'_>>,
    kind: &SeriesKind,
    point: PointData,
    report: &mut IngestReport,
) {
    canonicalize_pairs(labels);
    let outcome = ctx
        .store
        .append_pairs(ctx.name, labels, kind, point, ctx.received);
    report.count(outcome, ctx.name);
}

fn scalar<'a>(
    ctx: &Context<'a, '_>,
    kind: &SeriesKind,
    point: &'a [u8],
    scratch: &mut Scratch<'a>,
    report: &mut IngestReport,
) {
    start_labels(&mut scratch.labels, ctx.resource);
    let (mut start, mut time, mut flags) = (0, 0, 0u32);
    let mut value = None;
    for (tag, wire) in fields(point) {
        match (tag, wire) {
            (7, Wire::Bytes(kv)) => push_attribute(&mut scratch.labels, kv),
            (2, Wire::Fixed64(v)) => start = v,
            (3, Wire::Fixed64(v)) => time = v,
            (4, Wire::Fixed64(v)) => value = Some(f64_of(v)),
            (6, Wire::Fixed64(v)) => value = Some(v as i64 as f64),
            (8, Wire::Varint(v)) => flags = v as u32,
            _ => {}
        }
    }
    if flags & FLAG_NO_RECORDED_VALUE != 0 {
        report.ignored_no_recorded_value += 1;
        return;
    }
    let Some(value) = value else {
        report.rejected_invalid += 1;
        report.problem(|| no_value_problem(ctx.name));
        return;
    };
    if !value.is_finite() {
        report.rejected_invalid += 1;
        report.problem(|| not_finite_problem(ctx.name, value));
        return;
    }
    let point = ScalarPoint {
        time: ctx.time_or_now(time),
        start,
        value,
    };
    append(
        ctx,
        &mut scratch.labels,
        kind,
        PointData::Scalar(point),
        report,
    );
}

/// Appends the values of a repeated fixed64/double field, packed or not.
fn push_fixed64(values: &mut Vec<u64>, wire: Wire<'_>) {
    match wire {
        Wire::Fixed64(v) => values.push(v),
        Wire::Bytes(packed) => values.extend(
            packed
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())),
        ),
        _ => {}
    }
}

fn histogram<'a>(
    ctx: &Context<'a, '_>,
    temporality: Temporality,
    point: &'a [u8],
    scratch: &mut Scratch<'a>,
    report: &mut IngestReport,
) {
    start_labels(&mut scratch.labels, ctx.resource);
    scratch.buckets.clear();
    scratch.bound_bits.clear();
    let (mut start, mut time, mut count, mut flags) = (0, 0, 0u64, 0u32);
    let mut sum = None;
    for (tag, wire) in fields(point) {
        match (tag, wire) {
            (9, Wire::Bytes(kv)) => push_attribute(&mut scratch.labels, kv),
            (2, Wire::Fixed64(v)) => start = v,
            (3, Wire::Fixed64(v)) => time = v,
            (4, Wire::Fixed64(v)) => count = v,
            (5, Wire::Fixed64(v)) => sum = Some(f64_of(v)),
            (6, wire) => push_fixed64(&mut scratch.buckets, wire),
            (7, wire) => push_fixed64(&mut scratch.bound_bits, wire),
            (10, Wire::Varint(v)) => flags = v as u32,
            _ => {}
        }
    }
    if flags & FLAG_NO_RECORDED_VALUE != 0 {
        report.ignored_no_recorded_value += 1;
        return;
    }
    scratch.bounds.clear();
    scratch
        .bounds
        .extend(scratch.bound_bits.iter().map(|&bits| f64_of(bits)));
    let (buckets, bounds) = (&scratch.buckets, &scratch.bounds);
    if !buckets.is_empty() && buckets.len() != bounds.len() + 1 {
        report.rejected_invalid += 1;
        report.problem(|| histogram_shape_problem(ctx.name, buckets.len(), bounds.len()));
        return;
    }
    let kind = SeriesKind::Histogram {
        temporality,
        bounds: Arc::from(if buckets.is_empty() {
            &[][..]
        } else {
            &bounds[..]
        }),
    };
    let point = DistributionPoint {
        time: ctx.time_or_now(time),
        start,
        count: count as f64,
        sum: sum.unwrap_or(0.0),
        buckets: Box::from(&buckets[..]),
        quantiles: Box::new([]),
    };
    append(
        ctx,
        &mut scratch.labels,
        &kind,
        PointData::Distribution(point),
        report,
    );
}

fn exponential<'a>(
    ctx: &Context<'a, '_>,
    point: &'a [u8],
    scratch: &mut Scratch<'a>,
    report: &mut IngestReport,
) {
    start_labels(&mut scratch.labels, ctx.resource);
    let (mut start, mut time, mut count, mut flags) = (0, 0, 0u64, 0u32);
    let mut sum = None;
    for (tag, wire) in fields(point) {
        match (tag, wire) {
            (1, Wire::Bytes(kv)) => push_attribute(&mut scratch.labels, kv),
            (2, Wire::Fixed64(v)) => start = v,
            (3, Wire::Fixed64(v)) => time = v,
            (4, Wire::Fixed64(v)) => count = v,
            (5, Wire::Fixed64(v)) => sum = Some(f64_of(v)),
            (10, Wire::Varint(v)) => flags = v as u32,
            _ => {}
        }
    }
    if flags & FLAG_NO_RECORDED_VALUE != 0 {
        report.ignored_no_recorded_value += 1;
        return;
    }
    // Kept as count and sum only, like the prost path.
    let point = DistributionPoint {
        time: ctx.time_or_now(time),
        start,
        count: count as f64,
        sum: sum.unwrap_or(0.0),
        buckets: Box::new([]),
        quantiles: Box::new([]),
    };
    append(
        ctx,
        &mut scratch.labels,
        &SeriesKind::Summary,
        PointData::Distribution(point),
        report,
    );
}

fn summary<'a>(
    ctx: &Context<'a, '_>,
    point: &'a [u8],
    scratch: &mut Scratch<'a>,
    report: &mut IngestReport,
) {
    start_labels(&mut scratch.labels, ctx.resource);
    scratch.quantiles.clear();
    let (mut start, mut time, mut count, mut flags) = (0, 0, 0u64, 0u32);
    let mut sum = 0.0;
    for (tag, wire) in fields(point) {
        match (tag, wire) {
            (7, Wire::Bytes(kv)) => push_attribute(&mut scratch.labels, kv),
            (2, Wire::Fixed64(v)) => start = v,
            (3, Wire::Fixed64(v)) => time = v,
            (4, Wire::Fixed64(v)) => count = v,
            (5, Wire::Fixed64(v)) => sum = f64_of(v),
            (6, Wire::Bytes(q)) => {
                let (mut quantile, mut value) = (0.0, 0.0);
                for (tag, wire) in fields(q) {
                    match (tag, wire) {
                        (1, Wire::Fixed64(v)) => quantile = f64_of(v),
                        (2, Wire::Fixed64(v)) => value = f64_of(v),
                        _ => {}
                    }
                }
                scratch.quantiles.push((quantile, value));
            }
            (8, Wire::Varint(v)) => flags = v as u32,
            _ => {}
        }
    }
    if flags & FLAG_NO_RECORDED_VALUE != 0 {
        report.ignored_no_recorded_value += 1;
        return;
    }
    let point = DistributionPoint {
        time: ctx.time_or_now(time),
        start,
        count: count as f64,
        sum,
        buckets: Box::new([]),
        quantiles: Box::from(&scratch.quantiles[..]),
    };
    append(
        ctx,
        &mut scratch.labels,
        &SeriesKind::Summary,
        PointData::Distribution(point),
        report,
    );
}
