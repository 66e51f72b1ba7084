//! Series identity: metric names and label sets.

use std::fmt;
use std::sync::Arc;

/// Normalises a metric name the way otel-add-on does on write and on query,
/// so `http.server.duration` and `http_server_duration` name one metric.
/// `:` is kept because vLLM's names (`vllm:num_requests_running`) use it.
pub fn normalize_metric_name(name: &str) -> String {
    name.replace(['.', '/'], "_")
}

/// [`normalize_metric_name`] without an allocation when the name is
/// already normal, which vLLM's names always are: ingest calls this once
/// per metric per export, and with one pod per export that is per point.
pub fn normalize_metric_name_cow(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains(['.', '/']) {
        std::borrow::Cow::Owned(normalize_metric_name(name))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// Sorts pairs by key in place and drops duplicate keys, the later pair
/// winning: the canonical order [`LabelSet`] keeps, produced without
/// allocating so ingest can look a series up before building anything.
pub fn canonicalize_pairs<K: AsRef<str>, V>(pairs: &mut Vec<(K, V)>) {
    // Stable sort keeps input order among equal keys; `dedup_by` hands the
    // later duplicate first, and swapping it into the kept slot makes the
    // last occurrence win.
    pairs.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
    pairs.dedup_by(|later, kept| {
        let same = later.0.as_ref() == kept.0.as_ref();
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
}

/// A label set sorted by key. Sorting makes two sets with the same pairs
/// equal and hash the same whatever order the exporter sent them in.
#[derive(Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct LabelSet(Box<[(Arc<str>, Arc<str>)]>);

impl LabelSet {
    /// Builds a set; on duplicate keys the last pair wins, matching how an
    /// OTLP point attribute overrides a copied resource attribute.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut pairs: Vec<(Arc<str>, Arc<str>)> = pairs
            .into_iter()
            .map(|(k, v)| (Arc::from(k.as_ref()), Arc::from(v.as_ref())))
            .collect();
        canonicalize_pairs(&mut pairs);
        LabelSet(pairs.into_boxed_slice())
    }

    /// A set from pairs already in canonical order (see
    /// [`canonicalize_pairs`]); the store uses it to share one allocation
    /// per distinct key and value among all series that carry it.
    pub(crate) fn from_canonical(pairs: Box<[(Arc<str>, Arc<str>)]>) -> Self {
        debug_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
        LabelSet(pairs)
    }

    /// Whether this set holds exactly `pairs` (canonical order).
    pub fn eq_pairs<K: AsRef<str>, V: AsRef<str>>(&self, pairs: &[(K, V)]) -> bool {
        self.0.len() == pairs.len()
            && self
                .0
                .iter()
                .zip(pairs)
                .all(|((k, v), (pk, pv))| **k == *pk.as_ref() && **v == *pv.as_ref())
    }

    pub(crate) fn arc_pairs(&self) -> &[(Arc<str>, Arc<str>)] {
        &self.0
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .ok()
            .map(|i| self.0[i].1.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Heap bytes held by this set, for memory accounting in benchmarks.
    pub fn heap_bytes(&self) -> usize {
        self.0.len() * std::mem::size_of::<(Arc<str>, Arc<str>)>()
            + self.0.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

impl fmt::Debug for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_of_pairs_does_not_matter() {
        let a = LabelSet::from_pairs([("pod", "p1"), ("namespace", "ns")]);
        let b = LabelSet::from_pairs([("namespace", "ns"), ("pod", "p1")]);
        assert_eq!(a, b);
        assert_eq!(a.get("pod"), Some("p1"));
        assert_eq!(a.get("deployment"), None);
    }

    #[test]
    fn later_duplicate_key_wins() {
        let set = LabelSet::from_pairs([
            ("host.name", "resource"),
            ("a", "1"),
            ("host.name", "point"),
        ]);
        assert_eq!(set.len(), 2);
        assert_eq!(set.get("host.name"), Some("point"));
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(
            normalize_metric_name("http.server/duration"),
            "http_server_duration"
        );
        assert_eq!(
            normalize_metric_name("vllm:num_requests_running"),
            "vllm:num_requests_running"
        );
    }
}
