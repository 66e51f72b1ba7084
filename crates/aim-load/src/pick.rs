//! Which endpoint gets the next request. The set of endpoints changes while a run goes
//! on (a Service's pods come and go), so the picker keeps each endpoint's in-flight count
//! across updates and forgets only the endpoints that left.

use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Each endpoint in turn.
    RoundRobin,
    /// The endpoint with the fewest requests in flight (ties in turn).
    LeastInFlight,
}

#[derive(Debug)]
struct Slot {
    url: Arc<str>,
    in_flight: usize,
}

/// What [`Picker::set`] changed.
#[derive(Debug, Default, PartialEq)]
pub struct Change {
    pub added: Vec<Arc<str>>,
    pub removed: Vec<Arc<str>>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

#[derive(Debug)]
pub struct Picker {
    strategy: Strategy,
    slots: Vec<Slot>,
    next: usize,
}

impl Picker {
    pub fn new(strategy: Strategy) -> Self {
        Picker {
            strategy,
            slots: Vec::new(),
            next: 0,
        }
    }

    /// Replaces the endpoint set; endpoints that stay keep their in-flight counts.
    pub fn set(&mut self, urls: &[String]) -> Change {
        let mut change = Change::default();
        let mut slots = Vec::with_capacity(urls.len());
        for url in urls {
            if slots.iter().any(|s: &Slot| &*s.url == url.as_str()) {
                continue;
            }
            match self.slots.iter().position(|s| &*s.url == url.as_str()) {
                Some(i) => slots.push(self.slots.swap_remove(i)),
                None => {
                    let url: Arc<str> = url.as_str().into();
                    change.added.push(url.clone());
                    slots.push(Slot { url, in_flight: 0 });
                }
            }
        }
        change.removed = self.slots.drain(..).map(|s| s.url).collect();
        change.removed.sort();
        self.slots = slots;
        change
    }

    pub fn urls(&self) -> Vec<Arc<str>> {
        self.slots.iter().map(|s| s.url.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The endpoint for the next request, counted in flight until [`Picker::done`];
    /// `None` when there is no endpoint.
    pub fn pick(&mut self) -> Option<Arc<str>> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let start = self.next % n;
        let chosen = match self.strategy {
            Strategy::RoundRobin => start,
            Strategy::LeastInFlight => (0..n)
                .map(|k| (start + k) % n)
                .min_by_key(|&i| self.slots[i].in_flight)
                .unwrap_or(start),
        };
        self.next = chosen + 1;
        let slot = &mut self.slots[chosen];
        slot.in_flight += 1;
        Some(slot.url.clone())
    }

    /// A request to `url` ended. Endpoints that left the set meanwhile are ignored.
    pub fn done(&mut self, url: &str) {
        if let Some(slot) = self.slots.iter_mut().find(|s| &*s.url == url) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
    }

    pub fn in_flight(&self, url: &str) -> Option<usize> {
        self.slots
            .iter()
            .find(|s| &*s.url == url)
            .map(|s| s.in_flight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn take(p: &mut Picker, n: usize) -> Vec<String> {
        (0..n).map(|_| p.pick().unwrap().to_string()).collect()
    }

    #[test]
    fn round_robin_visits_each_in_turn() {
        let mut p = Picker::new(Strategy::RoundRobin);
        assert_eq!(p.pick(), None);
        p.set(&urls(&["a", "b", "c"]));
        assert_eq!(take(&mut p, 7), ["a", "b", "c", "a", "b", "c", "a"]);
        assert_eq!(p.in_flight("a"), Some(3));
    }

    #[test]
    fn least_in_flight_prefers_idle_endpoints() {
        let mut p = Picker::new(Strategy::LeastInFlight);
        p.set(&urls(&["a", "b", "c"]));
        assert_eq!(take(&mut p, 3), ["a", "b", "c"]);
        p.done("b");
        p.done("b"); // a late duplicate never goes below zero
        assert_eq!(p.in_flight("b"), Some(0));
        assert_eq!(take(&mut p, 1), ["b"]);
        p.done("a");
        p.done("c");
        // a and c both have none in flight; the tie goes in turn from after b.
        assert_eq!(take(&mut p, 2), ["c", "a"]);
    }

    #[test]
    fn updates_keep_counts_of_endpoints_that_stay() {
        let mut p = Picker::new(Strategy::LeastInFlight);
        p.set(&urls(&["a", "b"]));
        take(&mut p, 4); // two each
        let change = p.set(&urls(&["b", "c", "c"]));
        assert_eq!(change.added, vec![Arc::<str>::from("c")]);
        assert_eq!(change.removed, vec![Arc::<str>::from("a")]);
        assert_eq!(p.len(), 2, "duplicates collapse");
        assert_eq!(p.in_flight("b"), Some(2));
        // The newcomer has nothing in flight, so it takes the next two.
        assert_eq!(take(&mut p, 2), ["c", "c"]);
        p.done("a"); // left the set: ignored
        assert!(p.set(&urls(&["b", "c"])).is_empty());
        p.set(&[]);
        assert!(p.is_empty());
        assert_eq!(p.pick(), None);
    }

    #[test]
    fn round_robin_survives_a_shrinking_set() {
        let mut p = Picker::new(Strategy::RoundRobin);
        p.set(&urls(&["a", "b", "c"]));
        take(&mut p, 2);
        p.set(&urls(&["x"]));
        assert_eq!(take(&mut p, 2), ["x", "x"]);
    }
}
