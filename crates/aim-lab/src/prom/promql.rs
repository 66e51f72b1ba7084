//! The PromQL the lab evaluates: a query is parsed by `promql-parser` (a
//! port of Prometheus' own grammar) and compiled to a subset the lab can
//! evaluate over its scraped samples, exactly as Prometheus would. A query
//! outside the subset is refused with what the subset is; it is never
//! approximated.
//!
//! Evaluation follows Prometheus 3: instant selectors read each series'
//! latest sample in the lookback (open on the left) unless staleness ended
//! it; range selectors read `(t − range, t]`; `rate` and `increase`
//! extrapolate as Prometheus' `extrapolatedRate` does (towards the range's
//! edges when the samples reach within 1.1 average intervals of them, by
//! half an interval otherwise, never below the counter's zero); `irate`
//! reads the last two samples; aggregations drop every label and return
//! nothing for an empty input; arithmetic drops the metric name and
//! matches vectors one to one on their remaining labels.

use std::collections::HashMap;

use promql_parser::label::Matcher;
use promql_parser::parser::{self, Expr, LabelModifier, VectorMatchCardinality};

use super::tsdb::{FINISH_REASONS, METRIC_NAMES, SeriesRef, Tsdb};

/// What the subset is, for every refusal.
pub const SUPPORTED: &str = "the lab evaluates selectors of vllm:num_requests_running, vllm:num_requests_waiting, vllm:kv_cache_usage_perc and vllm:request_success_total with =, !=, =~ and !~ matchers on __name__, namespace, isvc, pod and finished_reason; sum, avg, min, max and count without by/without; rate, irate, increase, avg_over_time, max_over_time and min_over_time of a range selector; + - * / % ^ between numbers and vectors; parentheses and unary minus";

/// Labels a selector may match on: the ones the lab's series carry (the
/// chart's PodMonitor writes `namespace`, `isvc` and `pod`; vLLM writes
/// `finished_reason` on its success counter).
const LABELS: [&str; 5] = ["__name__", "namespace", "isvc", "pod", "finished_reason"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AggOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeFn {
    Rate,
    Irate,
    Increase,
    AvgOverTime,
    MaxOverTime,
    MinOverTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
}

#[derive(Debug, Clone)]
struct Selector {
    name: Option<String>,
    matchers: Vec<Matcher>,
}

#[derive(Debug, Clone)]
enum Node {
    Number(f64),
    Instant(Selector),
    Range {
        func: RangeFn,
        selector: Selector,
        range: f64,
    },
    Aggregate {
        op: AggOp,
        expr: Box<Node>,
    },
    Arith {
        op: ArithOp,
        lhs: Box<Node>,
        rhs: Box<Node>,
    },
    Neg(Box<Node>),
}

/// A query the lab can evaluate.
#[derive(Debug, Clone)]
pub struct Query {
    pub text: String,
    root: Node,
    /// The longest range any selector reads, seconds.
    pub longest_range: f64,
}

/// The labels that identify an element for vector matching (the metric
/// name is dropped by arithmetic). Aggregates have none; the namespace is
/// the same on every lab series, so a pod stands for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Signature {
    pod: Option<u32>,
    reason: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Element {
    signature: Signature,
    pub value: f64,
}

/// An evaluated query.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    Vector(Vec<Element>),
}

impl Query {
    /// Parses and compiles `text`. The error says what is wrong and what
    /// the lab supports; the caller names the field.
    pub fn compile(text: &str) -> Result<Query, String> {
        let expr = parser::parse(text).map_err(|e| format!("{text:?} is not valid PromQL: {e}"))?;
        let mut longest_range = 0.0;
        let root = compile(&expr, &mut longest_range)?;
        match expr.value_type() {
            parser::value::ValueType::Vector => {}
            parser::value::ValueType::Scalar => {
                return Err(format!(
                    "{text:?} evaluates to a scalar; KEDA's prometheus scaler decodes only an instant vector and would fail on every query: select a series, e.g. sum(vllm:num_requests_waiting)"
                ));
            }
            other => {
                return Err(format!(
                    "{text:?} evaluates to a {other}; KEDA needs an instant vector of one series ({SUPPORTED})"
                ));
            }
        }
        Ok(Query {
            text: text.to_owned(),
            root,
            longest_range,
        })
    }

    /// The instant query at `t`. An error is one Prometheus returns for
    /// the same data (duplicate series in a vector match).
    pub fn eval(&self, db: &Tsdb, t: f64) -> Result<Value, String> {
        eval(&self.root, db, t)
    }
}

fn unsupported(what: impl std::fmt::Display) -> String {
    format!("{what} is outside what the lab models ({SUPPORTED})")
}

fn compile(expr: &Expr, longest_range: &mut f64) -> Result<Node, String> {
    Ok(match expr {
        Expr::NumberLiteral(n) => Node::Number(n.val),
        Expr::Paren(p) => compile(&p.expr, longest_range)?,
        Expr::Unary(u) => Node::Neg(Box::new(compile(&u.expr, longest_range)?)),
        Expr::VectorSelector(vs) => Node::Instant(selector(vs)?),
        Expr::Aggregate(a) => {
            let op = match a.op.to_string().as_str() {
                "sum" => AggOp::Sum,
                "avg" => AggOp::Avg,
                "min" => AggOp::Min,
                "max" => AggOp::Max,
                "count" => AggOp::Count,
                other => return Err(unsupported(format!("the aggregation {other:?}"))),
            };
            if a.param.is_some() {
                return Err(unsupported(format!("a parameter to {}", a.op)));
            }
            match &a.modifier {
                None => {}
                Some(LabelModifier::Include(l)) if l.labels.is_empty() => {}
                Some(_) => {
                    return Err(unsupported(format!(
                        "grouping ({} by/without) — KEDA reads one series",
                        a.op
                    )));
                }
            }
            Node::Aggregate {
                op,
                expr: Box::new(compile(&a.expr, longest_range)?),
            }
        }
        Expr::Binary(b) => {
            let op = match b.op.to_string().as_str() {
                "+" => ArithOp::Add,
                "-" => ArithOp::Sub,
                "*" => ArithOp::Mul,
                "/" => ArithOp::Div,
                "%" => ArithOp::Mod,
                "^" => ArithOp::Pow,
                other => return Err(unsupported(format!("the operator {other:?}"))),
            };
            if let Some(m) = &b.modifier
                && (m.matching.is_some()
                    || m.return_bool
                    || !matches!(m.card, VectorMatchCardinality::OneToOne))
            {
                return Err(unsupported(
                    "vector matching modifiers (on, ignoring, group_left, group_right, bool)",
                ));
            }
            Node::Arith {
                op,
                lhs: Box::new(compile(&b.lhs, longest_range)?),
                rhs: Box::new(compile(&b.rhs, longest_range)?),
            }
        }
        Expr::Call(c) => {
            let func = match c.func.name {
                "rate" => RangeFn::Rate,
                "irate" => RangeFn::Irate,
                "increase" => RangeFn::Increase,
                "avg_over_time" => RangeFn::AvgOverTime,
                "max_over_time" => RangeFn::MaxOverTime,
                "min_over_time" => RangeFn::MinOverTime,
                other => return Err(unsupported(format!("the function {other}()"))),
            };
            let [arg] = &c.args.args[..] else {
                return Err(unsupported(format!(
                    "{}() with {} arguments",
                    c.func.name,
                    c.args.args.len()
                )));
            };
            let Expr::MatrixSelector(ms) = arg.as_ref() else {
                return Err(unsupported(format!(
                    "{}() of anything but a range selector (a subquery, or an expression)",
                    c.func.name
                )));
            };
            let range = ms.range.as_secs_f64();
            *longest_range = f64::max(*longest_range, range);
            Node::Range {
                func,
                selector: selector(&ms.vs)?,
                range,
            }
        }
        Expr::MatrixSelector(_) => {
            return Err(unsupported(
                "a range selector outside rate(), irate(), increase() or *_over_time()",
            ));
        }
        Expr::Subquery(_) => return Err(unsupported("a subquery")),
        Expr::StringLiteral(_) => return Err(unsupported("a string")),
        Expr::Extension(_) => return Err(unsupported("an extension expression")),
    })
}

fn selector(vs: &parser::VectorSelector) -> Result<Selector, String> {
    if vs.offset.is_some() || vs.at.is_some() {
        return Err(unsupported("offset and @ modifiers"));
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err(unsupported("\"or\" between label matchers"));
    }
    for m in &vs.matchers.matchers {
        if !LABELS.contains(&m.name.as_str()) {
            return Err(format!(
                "the matcher on label {:?}: the lab's series carry only the labels {} (vLLM's model_name and engine, and job, instance, service, … are not modelled); {SUPPORTED}",
                m.name,
                LABELS.join(", ")
            ));
        }
    }
    let s = Selector {
        name: vs.name.clone(),
        matchers: vs.matchers.matchers.clone(),
    };
    if !METRIC_NAMES.iter().any(|n| name_matches(&s, n)) {
        return Err(format!(
            "{} selects no metric the lab's pods export; {SUPPORTED}",
            vs.name
                .as_deref()
                .map_or_else(|| "the selector".to_owned(), |n| format!("{n:?}"))
        ));
    }
    Ok(s)
}

fn name_matches(s: &Selector, name: &str) -> bool {
    s.name.as_deref().is_none_or(|n| n == name)
        && s.matchers
            .iter()
            .filter(|m| m.name == "__name__")
            .all(|m| m.is_match(name))
}

fn selects(s: &Selector, db: &Tsdb, series: &SeriesRef<'_>) -> bool {
    name_matches(s, series.kind.name)
        && s.matchers.iter().all(|m| {
            let value = match m.name.as_str() {
                "__name__" => return true,
                "namespace" => db.namespace.as_str(),
                "isvc" => db.isvc.as_deref().unwrap_or(""),
                "pod" => series.pod_name,
                // An absent label matches as the empty string.
                _ => series.kind.finished_reason.unwrap_or(""),
            };
            m.is_match(value)
        })
}

fn signature(series: &SeriesRef<'_>) -> Signature {
    Signature {
        pod: Some(series.pod),
        reason: series
            .kind
            .finished_reason
            .and_then(|r| FINISH_REASONS.iter().position(|x| *x == r))
            .map(|i| i as u8),
    }
}

fn eval(node: &Node, db: &Tsdb, t: f64) -> Result<Value, String> {
    Ok(match node {
        Node::Number(v) => Value::Scalar(*v),
        Node::Instant(s) => Value::Vector(
            db.series()
                .filter(|series| selects(s, db, series))
                .filter_map(|series| {
                    series.instant(t).map(|value| Element {
                        signature: signature(&series),
                        value,
                    })
                })
                .collect(),
        ),
        Node::Range {
            func,
            selector,
            range,
        } => Value::Vector(
            db.series()
                .filter(|series| selects(selector, db, series))
                .filter_map(|series| {
                    let samples: Vec<(f64, f64)> = series.range(t, *range).collect();
                    range_fn(*func, &samples, t, *range).map(|value| Element {
                        signature: signature(&series),
                        value,
                    })
                })
                .collect(),
        ),
        Node::Aggregate { op, expr } => {
            let Value::Vector(v) = eval(expr, db, t)? else {
                return Err("an aggregation needs a vector".into());
            };
            if v.is_empty() {
                return Ok(Value::Vector(Vec::new()));
            }
            let values = v.iter().map(|e| e.value);
            let n = v.len() as f64;
            let value = match op {
                AggOp::Sum => values.sum(),
                AggOp::Avg => values.sum::<f64>() / n,
                AggOp::Min => values.fold(f64::NAN, f64::min),
                AggOp::Max => values.fold(f64::NAN, f64::max),
                AggOp::Count => n,
            };
            Value::Vector(vec![Element {
                signature: Signature::default(),
                value,
            }])
        }
        Node::Neg(inner) => match eval(inner, db, t)? {
            Value::Scalar(v) => Value::Scalar(-v),
            Value::Vector(v) => Value::Vector(
                v.into_iter()
                    .map(|e| Element {
                        value: -e.value,
                        ..e
                    })
                    .collect(),
            ),
        },
        Node::Arith { op, lhs, rhs } => {
            let (l, r) = (eval(lhs, db, t)?, eval(rhs, db, t)?);
            match (l, r) {
                (Value::Scalar(a), Value::Scalar(b)) => Value::Scalar(arith(*op, a, b)),
                (Value::Vector(v), Value::Scalar(b)) => Value::Vector(
                    v.into_iter()
                        .map(|e| Element {
                            value: arith(*op, e.value, b),
                            ..e
                        })
                        .collect(),
                ),
                (Value::Scalar(a), Value::Vector(v)) => Value::Vector(
                    v.into_iter()
                        .map(|e| Element {
                            value: arith(*op, a, e.value),
                            ..e
                        })
                        .collect(),
                ),
                (Value::Vector(l), Value::Vector(r)) => {
                    let mut right: HashMap<Signature, f64> = HashMap::new();
                    for e in &r {
                        if right.insert(e.signature, e.value).is_some() {
                            return Err(duplicate());
                        }
                    }
                    let mut seen = HashMap::new();
                    let mut out = Vec::new();
                    for e in &l {
                        if seen.insert(e.signature, ()).is_some() {
                            return Err(duplicate());
                        }
                        if let Some(b) = right.get(&e.signature) {
                            out.push(Element {
                                signature: e.signature,
                                value: arith(*op, e.value, *b),
                            });
                        }
                    }
                    Value::Vector(out)
                }
            }
        }
    })
}

fn duplicate() -> String {
    "many-to-many matching not allowed: matching labels must be unique on one side".into()
}

fn arith(op: ArithOp, a: f64, b: f64) -> f64 {
    match op {
        ArithOp::Add => a + b,
        ArithOp::Sub => a - b,
        ArithOp::Mul => a * b,
        ArithOp::Div => a / b,
        // Go's math.Mod: the sign of the dividend, as Rust's `%`.
        ArithOp::Mod => a % b,
        ArithOp::Pow => a.powf(b),
    }
}

fn range_fn(func: RangeFn, samples: &[(f64, f64)], t: f64, range: f64) -> Option<f64> {
    let (first, last) = (samples.first()?, samples.last()?);
    let n = samples.len() as f64;
    Some(match func {
        RangeFn::AvgOverTime => samples.iter().map(|s| s.1).sum::<f64>() / n,
        RangeFn::MaxOverTime => samples.iter().map(|s| s.1).fold(f64::NAN, f64::max),
        RangeFn::MinOverTime => samples.iter().map(|s| s.1).fold(f64::NAN, f64::min),
        RangeFn::Irate => {
            let [.., prev, last] = samples else {
                return None;
            };
            let dt = last.0 - prev.0;
            if dt <= 0.0 {
                return None;
            }
            // A drop is a counter reset: the counter restarted from 0.
            let delta = if last.1 < prev.1 {
                last.1
            } else {
                last.1 - prev.1
            };
            delta / dt
        }
        RangeFn::Rate | RangeFn::Increase => {
            if samples.len() < 2 {
                return None;
            }
            let mut result = last.1 - first.1;
            for pair in samples.windows(2) {
                if pair[1].1 < pair[0].1 {
                    result += pair[0].1;
                }
            }
            let sampled = last.0 - first.0;
            let average = sampled / (n - 1.0);
            let threshold = average * 1.1;
            let mut to_start = first.0 - (t - range);
            let mut to_end = t - last.0;
            if to_start >= threshold {
                to_start = average / 2.0;
            }
            // A counter cannot go below zero: stop extrapolating there.
            if result > 0.0 && first.1 >= 0.0 {
                to_start = to_start.min(sampled * (first.1 / result));
            }
            if to_end >= threshold {
                to_end = average / 2.0;
            }
            let mut factor = if sampled != 0.0 {
                (sampled + to_start + to_end) / sampled
            } else {
                1.0
            };
            if func == RangeFn::Rate {
                factor /= range;
            }
            result * factor
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prom::tsdb::{RUNNING, SERIES_PER_TARGET, SUCCESS, Values, WAITING};

    fn db() -> Tsdb {
        Tsdb::new(15.0, 600.0, "inference", "vllm-sim", 1)
    }

    fn values(running: f64, waiting: f64, stops: f64) -> Values {
        let mut v = [0.0; SERIES_PER_TARGET];
        v[RUNNING] = running;
        v[WAITING] = waiting;
        v[SUCCESS] = stops;
        v
    }

    fn scalar_of(q: &str, db: &Tsdb, t: f64) -> Vec<f64> {
        match Query::compile(q).unwrap().eval(db, t).unwrap() {
            Value::Vector(v) => {
                let mut out: Vec<f64> = v.iter().map(|e| e.value).collect();
                out.sort_by(f64::total_cmp);
                out
            }
            Value::Scalar(s) => vec![s],
        }
    }

    #[test]
    fn selectors_aggregations_and_arithmetic() {
        let mut db = db();
        db.append(0, 10.0, values(3.0, 1.0, 0.0));
        db.append(1, 12.0, values(5.0, 2.0, 0.0));
        assert_eq!(
            scalar_of("vllm:num_requests_running", &db, 20.0),
            [3.0, 5.0]
        );
        assert_eq!(
            scalar_of("sum(vllm:num_requests_running)", &db, 20.0),
            [8.0]
        );
        assert_eq!(
            scalar_of(
                r#"sum(vllm:num_requests_waiting{namespace="inference"})"#,
                &db,
                20.0
            ),
            [3.0]
        );
        assert!(
            scalar_of(
                r#"sum(vllm:num_requests_waiting{namespace="other"})"#,
                &db,
                20.0
            )
            .is_empty()
        );
        assert_eq!(
            scalar_of(r#"vllm:num_requests_running{pod=~"vllm-sim-1"}"#, &db, 20.0),
            [5.0]
        );
        // No InferenceService: the isvc label is absent, which matches "".
        assert_eq!(
            scalar_of(r#"vllm:num_requests_running{isvc=""}"#, &db, 20.0).len(),
            2
        );
        db.isvc = Some("qwen-chat-0a1b2c3d".into());
        assert_eq!(
            scalar_of(
                r#"vllm:num_requests_running{isvc=~"qwen-chat-.*"}"#,
                &db,
                20.0
            )
            .len(),
            2
        );
        assert!(scalar_of(r#"vllm:num_requests_running{isvc=""}"#, &db, 20.0).is_empty());
        assert_eq!(
            scalar_of("avg(vllm:num_requests_running)", &db, 20.0),
            [4.0]
        );
        assert_eq!(
            scalar_of("max(vllm:num_requests_running)", &db, 20.0),
            [5.0]
        );
        assert_eq!(
            scalar_of("min(vllm:num_requests_running)", &db, 20.0),
            [3.0]
        );
        assert_eq!(
            scalar_of("count(vllm:num_requests_running)", &db, 20.0),
            [2.0]
        );
        assert_eq!(
            scalar_of(
                "sum(vllm:num_requests_running) + sum(vllm:num_requests_waiting)",
                &db,
                20.0
            ),
            [11.0]
        );
        // One to one per pod, then summed.
        assert_eq!(
            scalar_of(
                "sum(vllm:num_requests_running + vllm:num_requests_waiting)",
                &db,
                20.0
            ),
            [11.0]
        );
        assert_eq!(
            scalar_of("sum(vllm:num_requests_running) / 2", &db, 20.0),
            [4.0]
        );
        assert_eq!(
            scalar_of("-(2 * sum(vllm:num_requests_running))", &db, 20.0),
            [-16.0]
        );
        assert_eq!(
            scalar_of("sum by () (vllm:num_requests_running)", &db, 20.0),
            [8.0]
        );
        // Every finish reason is a series of its own.
        assert_eq!(scalar_of("vllm:request_success_total", &db, 20.0).len(), 10);
        assert_eq!(
            scalar_of(
                r#"vllm:request_success_total{finished_reason="stop"}"#,
                &db,
                20.0
            )
            .len(),
            2
        );
        // Before any scrape: nothing, and an aggregate of nothing is nothing.
        assert!(scalar_of("sum(vllm:num_requests_running)", &db, 5.0).is_empty());
    }

    #[test]
    fn duplicate_series_in_a_vector_match_is_prometheus_error() {
        let mut db = db();
        db.append(0, 10.0, values(3.0, 1.0, 0.0));
        let q = Query::compile(r#"{__name__=~"vllm:num_requests_.*"} + 1"#).unwrap();
        assert!(q.eval(&db, 20.0).is_ok());
        let q = Query::compile(r#"{__name__=~"vllm:num_requests_.*"} + vllm:num_requests_running"#)
            .unwrap();
        assert!(q.eval(&db, 20.0).unwrap_err().contains("many-to-many"));
    }

    #[test]
    fn rate_and_increase_extrapolate_as_prometheus_does() {
        // One request a second, scraped every 15 s from t = 15.
        let mut db = db();
        for k in 1..=8 {
            let t = 15.0 * f64::from(k);
            db.append(0, t, values(0.0, 0.0, t));
        }
        let q = r#"rate(vllm:request_success_total{finished_reason="stop"}[1m])"#;
        // At t = 120 the range (60, 120] holds 75..120: 4 samples, 45 s
        // apart end to end, 15 s on average; 15 s to the start is within
        // 1.1 × 15 s, so the increase is extrapolated to the full minute.
        assert!((scalar_of(q, &db, 120.0)[0] - 1.0).abs() < 1e-12);
        let inc = r#"increase(vllm:request_success_total{finished_reason="stop"}[1m])"#;
        assert!((scalar_of(inc, &db, 120.0)[0] - 60.0).abs() < 1e-9);
        // At t = 127 the last sample is 7 s old (within 1.1 intervals), the
        // first 2 s past the start: extrapolated to both edges again.
        assert!((scalar_of(inc, &db, 127.0)[0] - 60.0).abs() < 1e-9);
        // Two minutes after the last scrape the range holds one sample: no
        // rate.
        assert!(scalar_of(q, &db, 170.0).is_empty());
        // A counter that started inside the range is not extrapolated
        // below zero: samples 0, 15, 30 at t = 15, 30, 45; at t = 50 the
        // range (−10, 50] would reach 25 s before the first sample, but the
        // counter was 0 there, so the increase stops at its zero point.
        let mut fresh = Tsdb::new(15.0, 600.0, "inference", "vllm-sim", 1);
        for k in 1..=3 {
            let t = 15.0 * f64::from(k);
            fresh.append(0, t, values(0.0, 0.0, t - 15.0));
        }
        let got = scalar_of(inc, &fresh, 50.0)[0];
        // sampled 30 s, to start min(7.5, 30 × 0 / 30 = 0) = 0, to end
        // 5 s < 16.5: 30 × (30 + 0 + 5) / 30 = 35.
        assert!((got - 35.0).abs() < 1e-9, "{got}");
    }

    #[test]
    fn irate_and_over_time_functions() {
        let mut db = db();
        for (k, v) in [(1, 0.0), (2, 30.0), (3, 45.0)] {
            db.append(0, 15.0 * f64::from(k), values(v, 0.0, v));
        }
        let irate = r#"irate(vllm:request_success_total{finished_reason="stop"}[1m])"#;
        assert_eq!(scalar_of(irate, &db, 50.0), [1.0]);
        assert_eq!(
            scalar_of("avg_over_time(vllm:num_requests_running[1m])", &db, 50.0),
            [25.0]
        );
        assert_eq!(
            scalar_of("max_over_time(vllm:num_requests_running[1m])", &db, 50.0),
            [45.0]
        );
        assert_eq!(
            scalar_of("min_over_time(vllm:num_requests_running[21s])", &db, 50.0),
            [30.0]
        );
        // A reset: the counter restarted.
        db.append(0, 60.0, values(5.0, 0.0, 5.0));
        assert_eq!(scalar_of(irate, &db, 61.0), [5.0 / 15.0]);
    }

    #[test]
    fn outside_the_subset_is_refused_with_what_the_subset_is() {
        for (query, says) in [
            ("sum by (pod) (vllm:num_requests_running)", "grouping"),
            ("topk(1, vllm:num_requests_running)", "topk"),
            (
                "histogram_quantile(0.9, vllm:time_to_first_token_seconds)",
                "histogram_quantile",
            ),
            ("vllm:num_requests_running > 2", ">"),
            ("vllm:num_requests_running offset 1m", "offset"),
            (r#"vllm:num_requests_running{job="vllm"}"#, "\"job\""),
            (
                "vllm:time_to_first_token_seconds_count",
                "selects no metric",
            ),
            ("rate(vllm:request_success_total[5m:1m])", "subquery"),
            ("vllm:num_requests_running[1m]", "range selector"),
            ("1 + 1", "scalar"),
            ("sum(vllm:num_requests_running", "not valid PromQL"),
            ("a + on(pod) vllm:num_requests_running", "matching"),
        ] {
            let e = Query::compile(query).unwrap_err();
            assert!(e.contains(says), "{query}: {e}");
            assert!(
                e.contains("not valid PromQL")
                    || e.contains("scalar")
                    || e.contains("sum, avg, min, max and count"),
                "{query}: the error says what is supported: {e}"
            );
        }
        let q = Query::compile(
            "sum(rate(vllm:request_success_total[90s])) + sum(avg_over_time(vllm:num_requests_running[5m]))",
        )
        .unwrap();
        assert_eq!(q.longest_range, 300.0);
    }
}
