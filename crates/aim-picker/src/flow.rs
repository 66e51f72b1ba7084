//! The flow-control queue: where a gateway holds requests while every
//! endpoint is saturated.
//!
//! Shaped after the Gateway API Inference Extension's flow control:
//!
//! - **bounded**: at most `capacity` requests in all, and optionally at most
//!   `per_flow` from one client. A request that does not fit is refused at
//!   once ([`Rejection::QueueFull`], [`Rejection::FlowFull`]: HTTP 429 with a
//!   Retry-After), never queued to be dropped later;
//! - **priorities are strict**: a request of a higher priority always leaves
//!   before any of a lower one;
//! - **fair across clients**: within one priority, the clients (flows) that
//!   have requests waiting take turns, one request each (round robin), so a
//!   client that sends a thousand requests delays another client's next
//!   request by one turn, not by a thousand;
//! - **first come, first served** within one client and priority;
//! - **a timeout** per request: [`FlowQueue::expire`] removes the requests
//!   that waited longer ([`Rejection::TimedOut`]: HTTP 503).
//!
//! Times are `Duration`s since an origin the caller picks; pushes must come
//! with times that do not go backwards (both the wall clock's `Instant` and
//! the lab's virtual clock are monotonic).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::Rejection;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueConfig {
    /// Requests held at most, over every client and priority.
    pub capacity: usize,
    /// Requests one client may have held at most; `None`: up to `capacity`.
    pub per_flow: Option<usize>,
    /// How long a request may be held; `None`: as long as it takes.
    pub timeout: Option<Duration>,
}

impl QueueConfig {
    /// No bound and no timeout (the lab's gateway: nothing is refused).
    pub fn unbounded() -> Self {
        QueueConfig {
            capacity: usize::MAX,
            per_flow: None,
            timeout: None,
        }
    }
}

/// A request leaving the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Popped<T> {
    pub id: u64,
    pub value: T,
    pub flow: Arc<str>,
    pub priority: i32,
    /// Time spent in the queue.
    pub waited: Duration,
}

#[derive(Debug, Clone)]
struct Held {
    priority: i32,
    flow: Arc<str>,
    enqueued: Duration,
}

#[derive(Debug, Clone)]
struct Band<T> {
    /// Each client's requests by id, so oldest first.
    flows: HashMap<Arc<str>, BTreeMap<u64, T>>,
    /// The clients with requests held, in turn order.
    turn: VecDeque<Arc<str>>,
}

impl<T> Band<T> {
    fn new() -> Self {
        Band {
            flows: HashMap::new(),
            turn: VecDeque::new(),
        }
    }
}

/// Dispatch times kept to estimate how fast the queue drains.
const RATE_WINDOW: usize = 64;
/// Retry-After when the drain rate is unknown and there is no timeout.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct FlowQueue<T> {
    cfg: QueueConfig,
    /// Highest priority first.
    bands: BTreeMap<Reverse<i32>, Band<T>>,
    /// Every held request by id: oldest first, so the earliest deadline.
    held: BTreeMap<u64, Held>,
    per_flow: HashMap<Arc<str>, usize>,
    next_id: u64,
    /// When the last requests left the queue.
    dispatched: VecDeque<Duration>,
}

impl<T> FlowQueue<T> {
    pub fn new(cfg: QueueConfig) -> Self {
        FlowQueue {
            cfg,
            bands: BTreeMap::new(),
            held: BTreeMap::new(),
            per_flow: HashMap::new(),
            next_id: 0,
            dispatched: VecDeque::with_capacity(RATE_WINDOW),
        }
    }

    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Requests `flow` has held.
    pub fn flow_len(&self, flow: &str) -> usize {
        self.per_flow.get(flow).copied().unwrap_or(0)
    }

    /// Holds a request from client `flow` at `priority`, or refuses it when
    /// the queue (or the client's share) is full. Returns the request's id.
    pub fn push(
        &mut self,
        flow: &str,
        priority: i32,
        now: Duration,
        value: T,
    ) -> Result<u64, Rejection> {
        if self.held.len() >= self.cfg.capacity {
            return Err(Rejection::QueueFull {
                capacity: self.cfg.capacity,
                retry_after: self.retry_after(now),
            });
        }
        let flow: Arc<str> = match self.per_flow.get_key_value(flow) {
            Some((k, &n)) => {
                if self.cfg.per_flow.is_some_and(|limit| n >= limit) {
                    return Err(Rejection::FlowFull {
                        flow: k.to_string(),
                        limit: self.cfg.per_flow.unwrap_or_default(),
                        retry_after: self.retry_after(now),
                    });
                }
                k.clone()
            }
            None => {
                if self.cfg.per_flow == Some(0) {
                    return Err(Rejection::FlowFull {
                        flow: flow.to_string(),
                        limit: 0,
                        retry_after: self.retry_after(now),
                    });
                }
                flow.into()
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        *self.per_flow.entry(flow.clone()).or_insert(0) += 1;
        let band = self
            .bands
            .entry(Reverse(priority))
            .or_insert_with(Band::new);
        let items = band.flows.entry(flow.clone()).or_insert_with(|| {
            band.turn.push_back(flow.clone());
            BTreeMap::new()
        });
        items.insert(id, value);
        self.held.insert(
            id,
            Held {
                priority,
                flow,
                enqueued: now,
            },
        );
        Ok(id)
    }

    /// The next request to dispatch: highest priority first, clients in
    /// turn within it, oldest first within a client.
    pub fn pop(&mut self, now: Duration) -> Option<Popped<T>> {
        let (&Reverse(priority), band) = self.bands.iter_mut().next()?;
        let flow = band
            .turn
            .pop_front()
            .expect("a band in the map holds requests");
        let items = band
            .flows
            .get_mut(&flow)
            .expect("a flow in turn holds requests");
        let (id, value) = items.pop_first().expect("a flow in the map holds requests");
        if items.is_empty() {
            band.flows.remove(&flow);
        } else {
            // Its next request waits for the other clients' turns.
            band.turn.push_back(flow.clone());
        }
        if band.turn.is_empty() {
            self.bands.remove(&Reverse(priority));
        }
        let held = self.forget(id);
        if self.dispatched.len() == RATE_WINDOW {
            self.dispatched.pop_front();
        }
        self.dispatched.push_back(now);
        Some(Popped {
            id,
            value,
            flow,
            priority,
            waited: now.saturating_sub(held.enqueued),
        })
    }

    /// Takes request `id` out (its client went away, or its waiter gave
    /// up); `None` if it is no longer held.
    pub fn remove(&mut self, id: u64) -> Option<T> {
        let held = self.held.get(&id)?;
        let (priority, flow) = (held.priority, held.flow.clone());
        let band = self
            .bands
            .get_mut(&Reverse(priority))
            .expect("held requests have a band");
        let items = band
            .flows
            .get_mut(&flow)
            .expect("held requests have a flow");
        let value = items.remove(&id).expect("held requests are in their flow");
        if items.is_empty() {
            band.flows.remove(&flow);
            band.turn.retain(|f| *f != flow);
            if band.turn.is_empty() {
                self.bands.remove(&Reverse(priority));
            }
        }
        self.forget(id);
        Some(value)
    }

    fn forget(&mut self, id: u64) -> Held {
        let held = self.held.remove(&id).expect("the request is held");
        if let Some(n) = self.per_flow.get_mut(&held.flow) {
            *n -= 1;
            if *n == 0 {
                self.per_flow.remove(&held.flow);
            }
        }
        held
    }

    /// When the oldest held request times out; `None` with no timeout or
    /// nothing held.
    pub fn next_deadline(&self) -> Option<Duration> {
        let timeout = self.cfg.timeout?;
        self.held.values().next().map(|h| h.enqueued + timeout)
    }

    /// Removes and returns every request held `timeout` or longer by `now`.
    pub fn expire(&mut self, now: Duration) -> Vec<Popped<T>> {
        let Some(timeout) = self.cfg.timeout else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some((&id, h)) = self.held.iter().next() {
            if now.saturating_sub(h.enqueued) < timeout {
                break;
            }
            let (flow, priority, enqueued) = (h.flow.clone(), h.priority, h.enqueued);
            let value = self.remove(id).expect("held");
            out.push(Popped {
                id,
                value,
                flow,
                priority,
                waited: now.saturating_sub(enqueued),
            });
        }
        out
    }

    /// How long a refused client should wait before retrying: the time the
    /// queue takes to drain at its recent dispatch rate, at least 1 s, at
    /// most the timeout (a request held longer would be refused anyway).
    /// With no dispatch seen yet, the timeout (or 1 s without one).
    pub fn retry_after(&self, now: Duration) -> Duration {
        let cap = self
            .cfg
            .timeout
            .unwrap_or(Duration::from_secs(60))
            .max(DEFAULT_RETRY_AFTER);
        let (Some(&first), true) = (self.dispatched.front(), self.dispatched.len() >= 2) else {
            return self
                .cfg
                .timeout
                .unwrap_or(DEFAULT_RETRY_AFTER)
                .max(DEFAULT_RETRY_AFTER);
        };
        let span = now.saturating_sub(first).as_secs_f64();
        if span <= 0.0 {
            return DEFAULT_RETRY_AFTER;
        }
        let rate = self.dispatched.len() as f64 / span;
        let drain = Duration::from_secs_f64(self.held.len() as f64 / rate);
        // Whole seconds: Retry-After carries an integer.
        Duration::from_secs(drain.as_secs_f64().ceil() as u64).clamp(DEFAULT_RETRY_AFTER, cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn queue(
        capacity: usize,
        per_flow: Option<usize>,
        timeout: Option<u64>,
    ) -> FlowQueue<&'static str> {
        FlowQueue::new(QueueConfig {
            capacity,
            per_flow,
            timeout: timeout.map(s),
        })
    }

    fn drain(q: &mut FlowQueue<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| q.pop(s(0)).map(|p| p.value)).collect()
    }

    #[test]
    fn one_client_is_first_come_first_served() {
        let mut q = queue(10, None, None);
        for v in ["a1", "a2", "a3"] {
            q.push("a", 0, s(0), v).unwrap();
        }
        assert_eq!(drain(&mut q), ["a1", "a2", "a3"]);
        assert!(q.is_empty());
    }

    #[test]
    fn clients_take_turns() {
        let mut q = queue(10, None, None);
        // a floods first; b and c arrive after.
        for v in ["a1", "a2", "a3", "a4"] {
            q.push("a", 0, s(0), v).unwrap();
        }
        q.push("b", 0, s(1), "b1").unwrap();
        q.push("c", 0, s(1), "c1").unwrap();
        q.push("b", 0, s(2), "b2").unwrap();
        assert_eq!(drain(&mut q), ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]);
    }

    #[test]
    fn a_client_that_comes_back_joins_the_end_of_the_turn() {
        let mut q = queue(10, None, None);
        q.push("a", 0, s(0), "a1").unwrap();
        q.push("b", 0, s(0), "b1").unwrap();
        q.push("b", 0, s(0), "b2").unwrap();
        assert_eq!(q.pop(s(0)).unwrap().value, "a1");
        // a has nothing left; when it sends again it goes after b.
        q.push("a", 0, s(1), "a2").unwrap();
        assert_eq!(drain(&mut q), ["b1", "a2", "b2"]);
    }

    #[test]
    fn higher_priorities_leave_first() {
        let mut q = queue(10, None, None);
        q.push("a", 0, s(0), "normal").unwrap();
        q.push("a", -1, s(0), "sheddable").unwrap();
        q.push("b", 10, s(1), "critical").unwrap();
        assert_eq!(drain(&mut q), ["critical", "normal", "sheddable"]);
    }

    #[test]
    fn the_bound_refuses_with_429_and_a_retry_after() {
        let mut q = queue(2, None, Some(30));
        q.push("a", 0, s(0), "1").unwrap();
        q.push("b", 0, s(0), "2").unwrap();
        let e = q.push("c", 0, s(0), "3").unwrap_err();
        assert!(
            matches!(e, Rejection::QueueFull { capacity: 2, .. }),
            "{e:?}"
        );
        assert_eq!(e.status(), 429);
        // Nothing dispatched yet: retry after the timeout.
        assert_eq!(e.retry_after(), Some(s(30)));
        assert_eq!(q.len(), 2, "the refused request is not held");
    }

    #[test]
    fn one_client_cannot_take_the_whole_queue() {
        let mut q = queue(10, Some(2), None);
        q.push("a", 0, s(0), "a1").unwrap();
        q.push("a", 5, s(0), "a2").unwrap();
        let e = q.push("a", 0, s(0), "a3").unwrap_err();
        assert!(
            matches!(&e, Rejection::FlowFull { flow, limit: 2, .. } if flow == "a"),
            "{e:?}"
        );
        assert_eq!(e.status(), 429);
        q.push("b", 0, s(0), "b1").unwrap();
        q.pop(s(0)).unwrap();
        q.push("a", 0, s(0), "a3").unwrap();
        assert_eq!(q.flow_len("a"), 2);
    }

    #[test]
    fn retry_after_follows_the_drain_rate() {
        let mut q = queue(100, None, Some(30));
        for _ in 0..14 {
            q.push("a", 0, s(0), "x").unwrap();
        }
        // Four dispatches over 2 s: 2 per second; 10 left take 5 s.
        for t in [0, 1, 1, 2] {
            q.pop(s(t)).unwrap();
        }
        assert_eq!(q.retry_after(s(2)), s(5));
        // Never below 1 s nor above the timeout.
        let mut fast = queue(100, None, Some(30));
        for _ in 0..3 {
            fast.push("a", 0, s(0), "x").unwrap();
        }
        fast.pop(s(0));
        fast.pop(s(10));
        assert_eq!(fast.retry_after(s(10)), s(5), "1 left at 0.2/s");
        let mut slow = queue(100, None, Some(30));
        for _ in 0..50 {
            slow.push("a", 0, s(0), "x").unwrap();
        }
        slow.pop(s(0));
        slow.pop(s(10));
        assert_eq!(slow.retry_after(s(10)), s(30));
    }

    #[test]
    fn expiry_removes_what_waited_too_long() {
        let mut q = queue(10, None, Some(5));
        q.push("a", 0, s(0), "old").unwrap();
        q.push("b", 0, s(3), "young").unwrap();
        assert_eq!(q.next_deadline(), Some(s(5)));
        assert!(q.expire(s(4)).is_empty());
        let gone = q.expire(s(5));
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].value, gone[0].waited), ("old", s(5)));
        assert_eq!(q.next_deadline(), Some(s(8)));
        assert_eq!(drain(&mut q), ["young"]);
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn removal_keeps_the_turns_consistent() {
        let mut q = queue(10, None, None);
        let a1 = q.push("a", 0, s(0), "a1").unwrap();
        q.push("b", 0, s(0), "b1").unwrap();
        q.push("a", 0, s(0), "a2").unwrap();
        let c1 = q.push("c", 0, s(0), "c1").unwrap();
        assert_eq!(q.remove(a1), Some("a1"));
        assert_eq!(q.remove(a1), None, "removed once");
        assert_eq!(q.remove(c1), Some("c1"));
        assert_eq!(q.flow_len("c"), 0);
        assert_eq!(drain(&mut q), ["a2", "b1"]);
    }

    #[test]
    fn waited_is_measured_from_the_push() {
        let mut q = queue(10, None, None);
        q.push("a", 0, s(2), "x").unwrap();
        let p = q.pop(s(7)).unwrap();
        assert_eq!((p.waited, &*p.flow, p.priority), (s(5), "a", 0));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Push { flow: u8, priority: i8 },
            Pop,
            Remove(usize),
            Tick,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0u8..4, -1i8..2).prop_map(|(flow, priority)| Op::Push { flow, priority }),
                3 => Just(Op::Pop),
                1 => (0usize..64).prop_map(Op::Remove),
                1 => Just(Op::Tick),
            ]
        }

        proptest! {
            /// Against a plain model: nothing is lost or duplicated, the
            /// bound holds, each pop has the highest priority held, and
            /// within one client requests leave in the order they came.
            #[test]
            fn matches_the_model(ops in proptest::collection::vec(op(), 0..200)) {
                let mut q: FlowQueue<u64> = FlowQueue::new(QueueConfig {
                    capacity: 12,
                    per_flow: Some(5),
                    timeout: Some(Duration::from_secs(3)),
                });
                // id -> (flow, priority)
                let mut model: BTreeMap<u64, (u8, i8)> = BTreeMap::new();
                let mut ids = Vec::new();
                let mut now = Duration::ZERO;
                for op in ops {
                    match op {
                        Op::Push { flow, priority } => {
                            let name = flow.to_string();
                            let per = model.values().filter(|(f, _)| *f == flow).count();
                            match q.push(&name, i32::from(priority), now, 0) {
                                Ok(id) => {
                                    prop_assert!(model.len() < 12 && per < 5);
                                    model.insert(id, (flow, priority));
                                    ids.push(id);
                                }
                                Err(Rejection::QueueFull { .. }) => prop_assert_eq!(model.len(), 12),
                                Err(Rejection::FlowFull { .. }) => prop_assert_eq!(per, 5),
                                Err(e) => prop_assert!(false, "unexpected {:?}", e),
                            }
                        }
                        Op::Pop => {
                            let top = model.values().map(|(_, p)| *p).max();
                            match q.pop(now) {
                                Some(p) => {
                                    let (flow, priority) = model.remove(&p.id).expect("popped a held id");
                                    prop_assert_eq!(Some(priority), top);
                                    prop_assert_eq!(i32::from(priority), p.priority);
                                    let older_same = model.iter().any(|(&id, &(f, pr))| f == flow && pr == priority && id < p.id);
                                    prop_assert!(!older_same, "an older request of the same client and priority is still held");
                                }
                                None => prop_assert!(model.is_empty()),
                            }
                        }
                        Op::Remove(k) => {
                            if let Some(&id) = ids.get(k) {
                                prop_assert_eq!(q.remove(id).is_some(), model.remove(&id).is_some());
                            }
                        }
                        Op::Tick => {
                            now += Duration::from_secs(1);
                            for p in q.expire(now) {
                                prop_assert!(model.remove(&p.id).is_some());
                                prop_assert!(p.waited >= Duration::from_secs(3));
                            }
                            if let Some(deadline) = q.next_deadline() {
                                prop_assert!(deadline > now, "whatever stays has time left");
                            }
                        }
                    }
                    prop_assert_eq!(q.len(), model.len());
                }
            }
        }
    }
}
