//! Request traces: the Azure LLM inference CSVs and Mooncake JSONL.
//!
//! Bad lines are errors that name the line, the field and what was
//! expected; nothing is skipped silently, because a silently shorter trace
//! would make every score on it wrong.

use std::path::Path;

/// One request arriving at the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    /// Seconds from the start of the trace.
    pub at: f64,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    /// Mooncake's 512-token prefix block ids (empty when the trace has none).
    pub hash_ids: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TraceError {
    #[error("{source_name}:{line}: field '{field}' = {value:?} is invalid: {reason}")]
    BadField {
        source_name: String,
        line: usize,
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{source_name}:{line}: {reason}")]
    BadLine {
        source_name: String,
        line: usize,
        reason: String,
    },
    #[error("{source_name}: the trace has no requests")]
    Empty { source_name: String },
    #[error(
        "cannot read trace {path}: {reason}. The traces this project ships are in traces/ at the repository root; pass --trace with a path that exists"
    )]
    Io { path: String, reason: String },
    #[error(
        "cannot tell the format of {path}: use a .csv (Azure: TIMESTAMP,ContextTokens,GeneratedTokens) or .jsonl (Mooncake) file, or pass --format"
    )]
    UnknownFormat { path: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceFormat {
    /// Azure LLM inference trace CSV.
    Azure,
    /// Mooncake JSONL.
    Mooncake,
}

/// Reads a trace file, picking the format from the extension unless given.
pub fn load(path: &Path, format: Option<TraceFormat>) -> Result<Vec<Arrival>, TraceError> {
    let name = path.display().to_string();
    let format = match format {
        Some(f) => f,
        None => match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => TraceFormat::Azure,
            Some("jsonl") | Some("json") => TraceFormat::Mooncake,
            _ => return Err(TraceError::UnknownFormat { path: name }),
        },
    };
    let text = std::fs::read_to_string(path).map_err(|e| TraceError::Io {
        path: name.clone(),
        reason: e.to_string(),
    })?;
    let file_name = path
        .file_name()
        .map_or(name, |n| n.to_string_lossy().into_owned());
    match format {
        TraceFormat::Azure => parse_azure(&text, &file_name),
        TraceFormat::Mooncake => parse_mooncake(&text, &file_name),
    }
}

/// `YYYY-MM-DD HH:MM:SS.fffffff` → seconds since the Unix epoch (UTC).
fn azure_timestamp(text: &str) -> Option<f64> {
    let (date, time) = text.trim().split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec = t.next()?.parse::<f64>().ok()?;
    if !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || h > 23
        || min > 59
        || !(0.0..61.0).contains(&sec)
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

fn tokens(
    source: &str,
    line: usize,
    field: &'static str,
    text: &str,
    min: u32,
) -> Result<u32, TraceError> {
    match text.trim().parse::<u32>() {
        Ok(v) if v >= min => Ok(v),
        _ => Err(TraceError::BadField {
            source_name: source.into(),
            line,
            field,
            value: text.into(),
            reason: if min == 0 {
                "expected a whole number of tokens"
            } else {
                "expected a whole number of tokens, at least 1"
            },
        }),
    }
}

/// Azure: `TIMESTAMP,ContextTokens,GeneratedTokens` with a header line.
/// Times become seconds from the first request; rows are sorted by time.
pub fn parse_azure(text: &str, source: &str) -> Result<Vec<Arrival>, TraceError> {
    let mut out = Vec::new();
    let mut origin: Option<f64> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || (n == 1 && line.starts_with("TIMESTAMP")) {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 3 {
            return Err(TraceError::BadLine {
                source_name: source.into(),
                line: n,
                reason: format!(
                    "expected 3 comma-separated fields (TIMESTAMP,ContextTokens,GeneratedTokens), found {}",
                    fields.len()
                ),
            });
        }
        let at = azure_timestamp(fields[0]).ok_or_else(|| TraceError::BadField {
            source_name: source.into(),
            line: n,
            field: "TIMESTAMP",
            value: fields[0].into(),
            reason: "expected a time like 2023-11-16 18:15:46.6805900",
        })?;
        let origin = *origin.get_or_insert(at);
        out.push(Arrival {
            at: at - origin,
            prompt_tokens: tokens(source, n, "ContextTokens", fields[1], 1)?,
            // Azure has rows with 0 generated tokens; the engine generates at
            // least one, as vLLM does.
            output_tokens: tokens(source, n, "GeneratedTokens", fields[2], 0)?.max(1),
            hash_ids: Vec::new(),
        });
    }
    finish(out, source)
}

#[derive(serde::Deserialize)]
struct MooncakeLine {
    timestamp: f64,
    input_length: u32,
    output_length: u32,
    #[serde(default)]
    hash_ids: Vec<u64>,
}

/// Mooncake: one JSON object per line with `timestamp` (ms),
/// `input_length`, `output_length` and `hash_ids`.
pub fn parse_mooncake(text: &str, source: &str) -> Result<Vec<Arrival>, TraceError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let row: MooncakeLine = serde_json::from_str(line).map_err(|e| TraceError::BadLine {
            source_name: source.into(),
            line: i + 1,
            reason: format!("{e}; expected {{\"timestamp\": ms, \"input_length\": n, \"output_length\": n, \"hash_ids\": [...]}}"),
        })?;
        if row.input_length == 0 || !row.timestamp.is_finite() || row.timestamp < 0.0 {
            let (field, value) = if row.input_length == 0 {
                ("input_length", "0".to_string())
            } else {
                ("timestamp", row.timestamp.to_string())
            };
            return Err(TraceError::BadField {
                source_name: source.into(),
                line: i + 1,
                field,
                value,
                reason: "input_length must be at least 1 and timestamp a non-negative number of milliseconds",
            });
        }
        out.push(Arrival {
            at: row.timestamp / 1000.0,
            prompt_tokens: row.input_length,
            output_tokens: row.output_length.max(1),
            hash_ids: row.hash_ids,
        });
    }
    finish(out, source)
}

fn finish(mut out: Vec<Arrival>, source: &str) -> Result<Vec<Arrival>, TraceError> {
    if out.is_empty() {
        return Err(TraceError::Empty {
            source_name: source.into(),
        });
    }
    out.sort_by(|a, b| a.at.total_cmp(&b.at));
    Ok(out)
}

/// Multiplies the arrival rate by `factor` without compressing time: each
/// request is repeated ⌊factor⌋ times, plus once more with probability of
/// the fraction, each copy shifted by up to ±0.5 s. Bursts keep their shape
/// and grow in height. Also the per-seed arrival jitter when `factor` is 1.
pub fn scale_rate(arrivals: &[Arrival], factor: f64, seed: u64) -> Vec<Arrival> {
    let mut rng = aim_engine::rng::Rng::new(seed ^ 0x5eed_7ace);
    let mut out = Vec::with_capacity((arrivals.len() as f64 * factor.max(0.0)).ceil() as usize + 1);
    for a in arrivals {
        let whole = factor.floor() as u32;
        let copies = whole + u32::from(rng.next_f64() < factor - f64::from(whole));
        for _ in 0..copies {
            let jitter = if seed == 0 { 0.0 } else { rng.next_f64() - 0.5 };
            out.push(Arrival {
                at: (a.at + jitter).max(0.0),
                ..a.clone()
            });
        }
    }
    out.sort_by(|a, b| a.at.total_cmp(&b.at));
    out
}

/// The arrivals in `[from, to)`, re-based so `from` is 0: a part of a
/// trace to tune on and another to score on.
pub fn slice(arrivals: &[Arrival], from: f64, to: f64) -> Vec<Arrival> {
    arrivals
        .iter()
        .filter(|a| a.at >= from && a.at < to)
        .map(|a| Arrival {
            at: a.at - from,
            ..a.clone()
        })
        .collect()
}

/// A local block bootstrap (Paparoditis & Politis): time is cut into
/// `block_s` blocks, and each block is replaced by a block drawn uniformly
/// from its `reach` neighbours on either side (itself included), its
/// arrivals shifted into place. The slow shape of the trace (trend, daily
/// cycle) stays; which bursts fall where, and how many, is resampled, so
/// seeds carry the variance of the arrival process rather than a jitter.
pub fn block_bootstrap(
    arrivals: &[Arrival],
    block_s: f64,
    reach: usize,
    seed: u64,
) -> Vec<Arrival> {
    let Some(last) = arrivals.last() else {
        return Vec::new();
    };
    let blocks = (last.at / block_s).floor() as usize + 1;
    let mut starts = vec![0usize; blocks + 1];
    for (k, start) in starts.iter_mut().enumerate() {
        *start = arrivals.partition_point(|a| a.at < k as f64 * block_s);
    }
    let mut rng = aim_engine::rng::Rng::new(seed ^ 0xb007_5a3b);
    let mut out = Vec::with_capacity(arrivals.len());
    for i in 0..blocks {
        let lo = i.saturating_sub(reach);
        let hi = (i + reach).min(blocks - 1);
        let j = lo + (rng.next_u64() % (hi - lo + 1) as u64) as usize;
        let shift = (i as f64 - j as f64) * block_s;
        out.extend(arrivals[starts[j]..starts[j + 1]].iter().map(|a| Arrival {
            at: a.at + shift,
            ..a.clone()
        }));
    }
    out.sort_by(|a, b| a.at.total_cmp(&b.at));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(times: &[f64]) -> Vec<Arrival> {
        times
            .iter()
            .map(|&t| Arrival {
                at: t,
                prompt_tokens: 1,
                output_tokens: 1,
                hash_ids: vec![],
            })
            .collect()
    }

    #[test]
    fn a_slice_is_rebased() {
        let s = slice(&at(&[1.0, 5.0, 9.0, 12.0]), 5.0, 12.0);
        assert_eq!(s.iter().map(|a| a.at).collect::<Vec<_>>(), vec![0.0, 4.0]);
    }

    #[test]
    fn the_bootstrap_keeps_the_trend_and_resamples_the_bursts() {
        // Load rising block by block (k arrivals in block k): every block
        // of the resample comes from within ±1 block, so its load stays
        // within ±1 of the original, and seeds differ.
        let mut times = Vec::new();
        for k in 0..20 {
            for j in 0..k {
                times.push(f64::from(k) * 10.0 + f64::from(j) * 0.1);
            }
        }
        let trace = at(&times);
        let a = block_bootstrap(&trace, 10.0, 1, 1);
        let b = block_bootstrap(&trace, 10.0, 1, 2);
        assert_ne!(a, b);
        for k in 0..19 {
            let n = a
                .iter()
                .filter(|x| (x.at / 10.0).floor() as usize == k)
                .count();
            assert!(n.abs_diff(k) <= 1, "block {k}: {n}");
        }
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn azure_rows_become_offsets() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5000000,374,44\n2023-11-16 18:15:50.0000000,396,0\n";
        let a = parse_azure(text, "t.csv").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].at, 0.0);
        assert!((a[1].at - 3.5).abs() < 1e-9);
        assert_eq!((a[1].prompt_tokens, a[1].output_tokens), (396, 1));
    }

    #[test]
    fn bad_azure_lines_name_line_and_field() {
        let e = parse_azure(
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5,abc,4\n",
            "t.csv",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("t.csv:2") && e.contains("ContextTokens") && e.contains("abc"),
            "{e}"
        );
        let e = parse_azure("2023-13-16 18:15:46.5,1,4\n", "t.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("TIMESTAMP"), "{e}");
        let e = parse_azure("2023-11-16 18:15:46.5,1\n", "t.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 comma-separated"), "{e}");
    }

    #[test]
    fn mooncake_lines_and_errors() {
        let text = "{\"timestamp\": 1500, \"input_length\": 700, \"output_length\": 5, \"hash_ids\": [0, 1]}\n{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 2}\n";
        let a = parse_mooncake(text, "m.jsonl").unwrap();
        assert_eq!(a[0].at, 0.0);
        assert_eq!(a[1].hash_ids, vec![0, 1]);
        let e = parse_mooncake("{\"timestamp\": 0}\n", "m.jsonl")
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.jsonl:1") && e.contains("input_length"), "{e}");
        let e = parse_mooncake(
            "{\"timestamp\": 0, \"input_length\": 0, \"output_length\": 1}\n",
            "m.jsonl",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("'input_length'"), "{e}");
    }

    #[test]
    fn rate_scaling_keeps_the_span_and_multiplies_count() {
        let base: Vec<Arrival> = (0..1000)
            .map(|i| Arrival {
                at: f64::from(i),
                prompt_tokens: 10,
                output_tokens: 10,
                hash_ids: vec![],
            })
            .collect();
        let doubled = scale_rate(&base, 2.5, 7);
        assert!((2400..2600).contains(&doubled.len()), "{}", doubled.len());
        assert!(doubled.last().unwrap().at < 1000.0);
        assert_eq!(scale_rate(&base, 1.0, 0), base);
    }
}
