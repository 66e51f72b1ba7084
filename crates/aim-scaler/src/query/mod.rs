//! The query language and its evaluation against the store.

mod eval;
mod parse;
mod window;

pub use eval::{EvalError, EvalRequest, Evaluation, evaluate, evaluate_as_of};
pub use parse::{Aggregation, MAX_QUERY_LEN, MatchOp, Matcher, ParseError, Query, parse_query};
pub use window::{Operation, bucket_counts, quantile_from_buckets, reduce};
