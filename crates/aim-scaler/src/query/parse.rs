//! Parser for `metricQuery`.
//!
//! Grammar (whitespace allowed between all tokens):
//!
//! ```text
//! query     = term ("+" term)*
//! term      = quantile | aggregate | selector
//! quantile  = ("histogram_quantile" | "quantile") "(" number "," (aggregate | selector) ")"
//! aggregate = ("sum" | "avg" | "min" | "max" | "count") "(" selector ")"
//! selector  = metric ("{" [matcher ("," matcher)* [","]] "}")*
//! matcher   = label ("=" | "!=" | "=~" | "!~") value
//! value     = '"' ... '"' | "'" ... "'" | bare text up to "," or "}"
//! ```
//!
//! This accepts everything otel-add-on's string splitting accepts in
//! practice (KServe's `sum(name{namespace="ns", deployment="d"})`, AIM's
//! form without spaces, unquoted values) and adds the PromQL matchers.
//! Several `{}` blocks merge, so KServe wrapping a query that already has
//! labels (`sum(q{model="a"}{namespace="ns"})`) still works.

use crate::labels::normalize_metric_name;
use regex::Regex;
use std::fmt;

/// Longest query accepted; real ones are well under 1 KiB.
pub const MAX_QUERY_LEN: usize = 4096;
/// Regex compile budget, so a hostile pattern cannot take the memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregation {
    Sum,
    Avg,
    Min,
    Max,
    /// Number of matching series that have samples in the window.
    Count,
}

impl Aggregation {
    fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "sum" => Some(Aggregation::Sum),
            "avg" => Some(Aggregation::Avg),
            "min" => Some(Aggregation::Min),
            "max" => Some(Aggregation::Max),
            "count" => Some(Aggregation::Count),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Sum => "sum",
            Aggregation::Avg => "avg",
            Aggregation::Min => "min",
            Aggregation::Max => "max",
            Aggregation::Count => "count",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    RegexMatch,
    RegexNoMatch,
}

impl MatchOp {
    pub fn symbol(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::RegexMatch => "=~",
            MatchOp::RegexNoMatch => "!~",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Matcher {
    pub label: String,
    pub op: MatchOp,
    pub value: String,
    /// Compiled, fully anchored pattern for `=~` and `!~`.
    regex: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.label == other.label && self.op == other.op && self.value == other.value
    }
}

impl Matcher {
    /// Whether a label value satisfies this matcher. `None` means the series
    /// lacks the label: it never matches, whatever the operator. A query
    /// that names a label is about series that carry it; otel-add-on's
    /// "absent matches anything" let one deployment's query count another's
    /// pods.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let Some(value) = value else { return false };
        match self.op {
            MatchOp::Equal => value == self.value,
            MatchOp::NotEqual => value != self.value,
            MatchOp::RegexMatch => self.regex.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::RegexNoMatch => self.regex.as_ref().is_some_and(|r| !r.is_match(value)),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub aggregation: Aggregation,
    /// Normalised (`.` and `/` become `_`).
    pub metric: String,
    pub matchers: Vec<Matcher>,
    /// From `histogram_quantile(q, ...)`.
    pub quantile: Option<f64>,
    /// Further terms added to this one with `+`
    /// (`sum(running) + sum(waiting)`), each a single term (their own
    /// `plus` is empty). Each is evaluated like a query of its own and the
    /// values added.
    pub plus: Vec<Query>,
}

impl Query {
    /// This query's terms in order: itself (its own selector) and each
    /// added one.
    pub fn terms(&self) -> impl Iterator<Item = &Query> {
        std::iter::once(self).chain(self.plus.iter())
    }
}

impl fmt::Display for Query {
    /// Canonical form: parsing it again gives the same query.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(q) = self.quantile {
            write!(f, "histogram_quantile({q:?}, ")?;
        }
        write!(f, "{}({}{{", self.aggregation.name(), self.metric)?;
        for (i, m) in self.matchers.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}{}{}", m.label, m.op.symbol(), Quoted(&m.value))?;
        }
        f.write_str("})")?;
        if self.quantile.is_some() {
            f.write_str(")")?;
        }
        for term in &self.plus {
            write!(f, " + {term}")?;
        }
        Ok(())
    }
}

/// A label value quoted with exactly the escapes `value()` reads back.
/// Rust's `{:?}` would not do: it writes `\r`, `\0` and `\u{..}`, which the
/// parser keeps verbatim so regexes like `\d` survive (found by fuzzing).
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("metricQuery {query:?}: at character {position}: {message}")]
pub struct ParseError {
    pub query: String,
    /// Character (not byte) offset, as a user would count.
    pub position: usize,
    pub message: String,
}

pub fn parse_query(text: &str) -> Result<Query, ParseError> {
    if text.len() > MAX_QUERY_LEN {
        return Err(ParseError {
            query: text.chars().take(64).collect::<String>() + "…",
            position: MAX_QUERY_LEN,
            message: format!("query is longer than {MAX_QUERY_LEN} bytes; shorten it"),
        });
    }
    let mut parser = Parser { text, pos: 0 };
    let query = parser.query()?;
    parser.skip_ws();
    if parser.pos < text.len() {
        return Err(parser.error(format!(
            "unexpected {} after the end of the query",
            parser.describe_next()
        )));
    }
    Ok(query)
}

struct Parser<'a> {
    text: &'a str,
    /// Byte offset into `text`, always on a char boundary.
    pos: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            query: self.text.to_owned(),
            position: self.text[..self.pos].chars().count(),
            message: message.into(),
        }
    }

    fn describe_next(&self) -> String {
        match self.peek() {
            Some(c) => format!("{c:?}"),
            None => "end of query".to_owned(),
        }
    }

    fn expect(&mut self, wanted: char) -> Result<(), ParseError> {
        self.skip_ws();
        if self.peek() == Some(wanted) {
            self.bump();
            Ok(())
        } else {
            Err(self.error(format!(
                "expected {wanted:?}, found {}",
                self.describe_next()
            )))
        }
    }

    /// A run of characters allowed in metric names; also used for function
    /// names, which are a subset.
    fn word(&mut self) -> &'a str {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '/' | '-'))
        {
            self.bump();
        }
        &self.text[start..self.pos]
    }

    fn query(&mut self) -> Result<Query, ParseError> {
        let mut query = self.term()?;
        loop {
            self.skip_ws();
            if self.peek() != Some('+') {
                return Ok(query);
            }
            self.bump();
            let term = self.term()?;
            query.plus.push(term);
        }
    }

    fn term(&mut self) -> Result<Query, ParseError> {
        self.skip_ws();
        let start = self.pos;
        let word = self.word();
        let after_word = self.pos;
        self.skip_ws();
        if self.peek() != Some('(') {
            // A bare selector: otel-add-on defaults the aggregation to sum.
            self.pos = start;
            return self.selector(Aggregation::Sum);
        }
        if matches!(word, "histogram_quantile" | "quantile") {
            self.bump();
            let q = self.quantile_argument()?;
            self.expect(',')?;
            let mut inner = self.aggregate_or_selector()?;
            self.expect(')')?;
            inner.quantile = Some(q);
            return Ok(inner);
        }
        self.pos = start;
        let query = self.aggregate_or_selector()?;
        debug_assert!(self.pos >= after_word);
        Ok(query)
    }

    fn aggregate_or_selector(&mut self) -> Result<Query, ParseError> {
        self.skip_ws();
        let start = self.pos;
        let word = self.word();
        self.skip_ws();
        if self.peek() != Some('(') {
            self.pos = start;
            return self.selector(Aggregation::Sum);
        }
        let Some(aggregation) = Aggregation::from_name(word) else {
            self.pos = start;
            return Err(self.error(format!(
                "unknown function {word:?}; use sum, avg, min, max, count or histogram_quantile"
            )));
        };
        self.bump();
        let query = self.selector(aggregation)?;
        self.expect(')')?;
        Ok(query)
    }

    fn quantile_argument(&mut self) -> Result<f64, ParseError> {
        self.skip_ws();
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        {
            self.bump();
        }
        let text = &self.text[start..self.pos];
        match text.parse::<f64>() {
            Ok(q) if (0.0..=1.0).contains(&q) => Ok(q),
            _ => {
                self.pos = start;
                Err(self.error(format!(
                    "quantile must be a number from 0 to 1 (e.g. 0.95), found {text:?}"
                )))
            }
        }
    }

    fn selector(&mut self, aggregation: Aggregation) -> Result<Query, ParseError> {
        self.skip_ws();
        let first = self.peek();
        if !first.is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':') {
            return Err(self.error(format!(
                "expected a metric name, found {}",
                self.describe_next()
            )));
        }
        let metric = normalize_metric_name(self.word());
        let mut matchers = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() != Some('{') {
                break;
            }
            self.bump();
            self.matchers(&mut matchers)?;
        }
        Ok(Query {
            aggregation,
            metric,
            matchers,
            quantile: None,
            plus: Vec::new(),
        })
    }

    /// Matchers up to and including the closing brace.
    fn matchers(&mut self, into: &mut Vec<Matcher>) -> Result<(), ParseError> {
        loop {
            self.skip_ws();
            if self.peek() == Some('}') {
                self.bump();
                return Ok(());
            }
            into.push(self.matcher()?);
            self.skip_ws();
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some('}') => {}
                _ => {
                    return Err(self.error(format!(
                        "expected ',' or '}}' after a label matcher, found {}",
                        self.describe_next()
                    )));
                }
            }
        }
    }

    fn matcher(&mut self) -> Result<Matcher, ParseError> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
        {
            self.bump();
        }
        let label = self.text[start..self.pos].to_owned();
        if label.is_empty() || label.starts_with(|c: char| c.is_ascii_digit()) {
            self.pos = start;
            return Err(self.error(format!(
                "expected a label name, found {}",
                self.describe_next()
            )));
        }
        self.skip_ws();
        let op = if self.rest().starts_with("!=") {
            MatchOp::NotEqual
        } else if self.rest().starts_with("=~") {
            MatchOp::RegexMatch
        } else if self.rest().starts_with("!~") {
            MatchOp::RegexNoMatch
        } else if self.rest().starts_with('=') {
            MatchOp::Equal
        } else {
            return Err(self.error(format!(
                "expected '=', '!=', '=~' or '!~' after label {label:?}, found {}",
                self.describe_next()
            )));
        };
        self.pos += op.symbol().len();
        self.skip_ws();
        let value_start = self.pos;
        let value = self.value()?;
        let regex = match op {
            MatchOp::RegexMatch | MatchOp::RegexNoMatch => Some(
                regex::RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| {
                        self.pos = value_start;
                        self.error(format!(
                            "label {label:?}: invalid regular expression {value:?}: {e}"
                        ))
                    })?,
            ),
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(Matcher {
            label,
            op,
            value,
            regex,
        })
    }

    fn value(&mut self) -> Result<String, ParseError> {
        match self.peek() {
            Some(quote @ ('"' | '\'')) => {
                let start = self.pos;
                self.bump();
                let mut value = String::new();
                loop {
                    match self.bump() {
                        None => {
                            self.pos = start;
                            return Err(self.error("label value has no closing quote"));
                        }
                        Some(c) if c == quote => return Ok(value),
                        Some('\\') => match self.bump() {
                            Some('n') => value.push('\n'),
                            Some('t') => value.push('\t'),
                            Some(c @ ('\\' | '"' | '\'')) => value.push(c),
                            Some(c) => {
                                // Keep unknown escapes verbatim so regexes
                                // such as "\d+" still work.
                                value.push('\\');
                                value.push(c);
                            }
                            None => {
                                self.pos = start;
                                return Err(self.error("label value has no closing quote"));
                            }
                        },
                        Some(c) => value.push(c),
                    }
                }
            }
            _ => {
                // Unquoted, as otel-add-on allows: up to the next ',' or '}'.
                let start = self.pos;
                while self.peek().is_some_and(|c| c != ',' && c != '}') {
                    self.bump();
                }
                let value = self.text[start..self.pos].trim();
                if value.is_empty() {
                    self.pos = start;
                    return Err(self.error(format!(
                        "expected a label value, found {}",
                        self.describe_next()
                    )));
                }
                Ok(value.to_owned())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matchers(query: &Query) -> Vec<(String, MatchOp, String)> {
        query
            .matchers
            .iter()
            .map(|m| (m.label.clone(), m.op, m.value.clone()))
            .collect()
    }

    #[test]
    fn kserve_shape() {
        let q = parse_query(r#"sum(vllm:num_requests_running{namespace="ml-team", deployment="qwen-chat-predictor"})"#)
            .unwrap();
        assert_eq!(q.aggregation, Aggregation::Sum);
        assert_eq!(q.metric, "vllm:num_requests_running");
        assert_eq!(
            matchers(&q),
            vec![
                ("namespace".into(), MatchOp::Equal, "ml-team".into()),
                (
                    "deployment".into(),
                    MatchOp::Equal,
                    "qwen-chat-predictor".into()
                ),
            ]
        );
        assert_eq!(q.quantile, None);
    }

    #[test]
    fn bare_name_defaults_to_sum_and_names_are_normalised() {
        let q = parse_query("  http.server/duration ").unwrap();
        assert_eq!(q.aggregation, Aggregation::Sum);
        assert_eq!(q.metric, "http_server_duration");
        assert!(q.matchers.is_empty());
    }

    #[test]
    fn all_operators_quotes_and_spacing() {
        let q = parse_query(
            r#"AVG ( m { a = "x,y=z" , b!='q' ,c=~"p-.*",d !~ "\d+", e=bare value , } )"#,
        )
        .unwrap();
        assert_eq!(q.aggregation, Aggregation::Avg);
        assert_eq!(
            matchers(&q),
            vec![
                ("a".into(), MatchOp::Equal, "x,y=z".into()),
                ("b".into(), MatchOp::NotEqual, "q".into()),
                ("c".into(), MatchOp::RegexMatch, "p-.*".into()),
                ("d".into(), MatchOp::RegexNoMatch, r"\d+".into()),
                ("e".into(), MatchOp::Equal, "bare value".into()),
            ]
        );
        assert!(q.matchers[2].matches(Some("p-1")));
        assert!(!q.matchers[2].matches(Some("xp-1")), "regex is anchored");
        assert!(q.matchers[3].matches(Some("abc")));
        assert!(!q.matchers[3].matches(Some("123")));
    }

    #[test]
    fn double_selector_from_kserve_wrapping_merges() {
        let q = parse_query(r#"sum(m{model="a"}{namespace="ns", deployment="d"})"#).unwrap();
        assert_eq!(q.matchers.len(), 3);
    }

    #[test]
    fn histogram_quantile_forms() {
        let q = parse_query(
            "histogram_quantile(0.95, sum(vllm:time_to_first_token_seconds{namespace=\"n\"}))",
        )
        .unwrap();
        assert_eq!(q.quantile, Some(0.95));
        assert_eq!(q.metric, "vllm:time_to_first_token_seconds");
        let q = parse_query("quantile(0.5, ttft)").unwrap();
        assert_eq!(q.quantile, Some(0.5));
        assert_eq!(q.aggregation, Aggregation::Sum);
    }

    #[test]
    fn sum_of_terms() {
        let q = parse_query(
            "sum(vllm:num_requests_running{namespace='ns'})+ avg(w) + histogram_quantile(0.9, sum(h))",
        )
        .unwrap();
        assert_eq!(q.metric, "vllm:num_requests_running");
        assert_eq!(q.plus.len(), 2);
        assert_eq!(q.plus[0].aggregation, Aggregation::Avg);
        assert_eq!(q.plus[0].metric, "w");
        assert_eq!(q.plus[1].quantile, Some(0.9));
        assert!(q.plus.iter().all(|t| t.plus.is_empty()));
        let terms: Vec<&str> = q.terms().map(|t| t.metric.as_str()).collect();
        assert_eq!(terms, ["vllm:num_requests_running", "w", "h"]);
        // A term's own quantile stays with it.
        assert_eq!(q.quantile, None);
    }

    #[test]
    fn absent_label_never_matches() {
        let q = parse_query(r#"m{a="x", b!="y"}"#).unwrap();
        assert!(!q.matchers[0].matches(None));
        assert!(!q.matchers[1].matches(None));
        assert!(q.matchers[1].matches(Some("z")));
    }

    #[test]
    fn display_round_trips() {
        for text in [
            r#"sum(m{a="x", b!="y\"q", c=~"a|b"})"#,
            "count(vllm:x)",
            "histogram_quantile(0.9, max(h{d!~\"z\"}))",
            // Found by fuzzing: control characters and backslashes in values.
            "m{a=~\"x|`\r\0y\\\\d\", b=\"tab\tnl\nq'\"}",
            "sum(vllm:num_requests_running) + sum(vllm:num_requests_waiting{a=\"b\"})",
            "histogram_quantile(0.5, h) + max(g) + c",
        ] {
            let q = parse_query(text).unwrap();
            assert_eq!(parse_query(&q.to_string()).unwrap(), q, "{text} -> {q}");
        }
    }

    #[test]
    fn errors_say_where_and_what() {
        let cases = [
            ("", 0, "expected a metric name"),
            ("sum(", 4, "expected a metric name"),
            ("sum(m", 5, "expected ')'"),
            ("rate(m)", 0, "unknown function \"rate\""),
            (
                "m{a}",
                3,
                "expected '=', '!=', '=~' or '!~' after label \"a\"",
            ),
            ("m{a=\"x}", 4, "no closing quote"),
            ("m{a=~\"(\"}", 5, "invalid regular expression"),
            ("m{=x}", 2, "expected a label name"),
            ("m{a=\"x\" b=\"y\"}", 8, "expected ',' or '}'"),
            ("m) extra", 1, "unexpected ')'"),
            (
                "histogram_quantile(1.5, m)",
                19,
                "quantile must be a number from 0 to 1",
            ),
            ("sum(m{a=\"é\"} x", 13, "expected ')'"),
            ("sum(a) +", 8, "expected a metric name"),
            ("sum(a) + + sum(b)", 9, "expected a metric name"),
            ("sum(a) - sum(b)", 7, "unexpected '-' after the end"),
        ];
        for (text, position, message) in cases {
            let err = parse_query(text).expect_err(text);
            assert_eq!(err.position, position, "{text}: {err}");
            assert!(err.to_string().contains(message), "{text}: {err}");
        }
        let long = "m".repeat(MAX_QUERY_LEN + 1);
        assert!(
            parse_query(&long)
                .unwrap_err()
                .message
                .contains("longer than")
        );
    }
}
