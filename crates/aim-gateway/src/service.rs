//! One service behind the gateway: its endpoints, what the gateway knows of
//! their load, and its flow-control queue.
//!
//! A request asks for an endpoint ([`Service::admit`]). When nothing is held
//! and some endpoint is unsaturated it gets the picker's choice at once;
//! otherwise it joins the queue and waits for [`Service::pump`], which runs
//! whenever capacity may have appeared (a request ended, a scrape came in,
//! the endpoint set changed) and hands held requests to endpoints for as
//! long as the picker finds an unsaturated one. Every decision is made under
//! one short lock, with no await inside it.
//!
//! An [`InFlight`] guard travels with each dispatched request and gives its
//! place back when dropped: when the response body ends, when the client
//! goes away, or when the upstream call fails.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aim_picker::{Choice, FlowQueue, Load, Observed, Picker, Rejection, ServerMetrics};
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::endpoints::{EndpointSpec, EndpointUrl};
use crate::metrics::ServiceMetrics;
use crate::proxy::Client;
use crate::scrape;

/// Where a request goes, and its place there.
pub struct Assignment {
    pub url: EndpointUrl,
    pub guard: InFlight,
}

/// A request's place on an endpoint; dropping it ends the request there.
pub struct InFlight {
    service: Arc<Service>,
    key: Arc<str>,
    armed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.armed {
            self.service.finished(&self.key);
        }
    }
}

/// The last report from an endpoint's `/metrics`.
#[derive(Debug, Clone, Copy)]
struct Report {
    metrics: ServerMetrics,
    /// When the scrape was sent: everything dispatched after it is unseen.
    taken: Instant,
    /// The endpoint's dispatch and release counts when the scrape was sent.
    dispatched_then: u64,
    released_then: u64,
}

struct Endpoint {
    url: EndpointUrl,
    key: Arc<str>,
    in_flight: u32,
    /// Requests ever sent here, and how many of them left the queue.
    dispatched: u64,
    released: u64,
    report: Option<Report>,
    scrape_errors: u64,
    scrape_failing: bool,
    /// The source marks it as leaving.
    draining: bool,
    /// Still in the source's set; an unlisted endpoint stays only while it
    /// has requests in flight.
    listed: bool,
    scraper: Option<AbortHandle>,
}

impl Endpoint {
    fn takes_new_requests(&self) -> bool {
        self.listed && !self.draining
    }

    fn load(&self, now: Instant) -> Load {
        Load {
            in_flight: self.in_flight,
            observed: self.report.map(|r| Observed {
                metrics: r.metrics,
                age: now.saturating_duration_since(r.taken),
                sent_since: (self.dispatched - r.dispatched_then) as u32,
                released_since: (self.released - r.released_then) as u32,
            }),
        }
    }
}

type Waiter = oneshot::Sender<Assignment>;

struct State {
    endpoints: Vec<Endpoint>,
    queue: FlowQueue<Waiter>,
    /// Where the picker's next tie goes.
    cursor: usize,
    /// Shutting down: no new request is admitted.
    closed: bool,
}

/// An endpoint's state, for `/metrics`.
pub struct EndpointView {
    pub key: Arc<str>,
    pub in_flight: u32,
    pub dispatched: u64,
    pub draining: bool,
    pub saturated: bool,
    pub report_age: Option<Duration>,
    pub scrape_errors: u64,
}

/// The service's state, for `/metrics`.
pub struct View {
    pub queue_depth: usize,
    pub endpoints: Vec<EndpointView>,
    pub pool_saturation: f64,
}

pub struct Service {
    pub name: String,
    picker: Picker,
    state: Mutex<State>,
    pub metrics: ServiceMetrics,
    client: Client,
    scrape_interval: Duration,
    timeout: Duration,
    /// Times handed to the queue are measured from here.
    origin: Instant,
}

impl Service {
    pub fn new(
        name: String,
        picker: Picker,
        queue: aim_picker::QueueConfig,
        client: Client,
        scrape_interval: Duration,
    ) -> Arc<Self> {
        Arc::new(Service {
            name,
            // No timeout: a year stands for forever without overflowing an Instant.
            timeout: queue
                .timeout
                .unwrap_or(Duration::from_secs(365 * 24 * 3600)),
            picker,
            state: Mutex::new(State {
                endpoints: Vec::new(),
                queue: FlowQueue::new(queue),
                cursor: 0,
                closed: false,
            }),
            metrics: ServiceMetrics::default(),
            client,
            scrape_interval,
            origin: Instant::now(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves counts that are still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn since_origin(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.origin)
    }

    /// The picker's choice among the endpoints that take new requests, if
    /// one is unsaturated; `any` also accepts the best saturated one.
    fn choose(&self, st: &mut State, any: bool) -> Option<usize> {
        let now = Instant::now();
        let eligible: Vec<usize> = (0..st.endpoints.len())
            .filter(|&i| st.endpoints[i].takes_new_requests())
            .collect();
        let loads: Vec<Load> = eligible
            .iter()
            .map(|&i| st.endpoints[i].load(now))
            .collect();
        let k = match self.picker.pick(&loads, st.cursor) {
            Choice::Endpoint(k) => k,
            Choice::AllSaturated { best } if any => best,
            Choice::AllSaturated { .. } | Choice::NoEndpoint => return None,
        };
        st.cursor = k + 1;
        Some(eligible[k])
    }

    /// Takes a place on endpoint `i`; `released`: for a request that was
    /// held (it counts as waiting there until the next report).
    fn assign(self: &Arc<Self>, st: &mut State, i: usize, released: bool) -> Assignment {
        let e = &mut st.endpoints[i];
        e.in_flight += 1;
        e.dispatched += 1;
        e.released += u64::from(released);
        Assignment {
            url: e.url.clone(),
            guard: InFlight {
                service: self.clone(),
                key: e.key.clone(),
                armed: true,
            },
        }
    }

    /// Gives back a place taken under the lock that is still held (a guard
    /// dropped there would take the lock again).
    fn unassign(st: &mut State, mut a: Assignment) {
        a.guard.armed = false;
        if let Some(e) = st.endpoints.iter_mut().find(|e| e.key == a.guard.key) {
            e.in_flight -= 1;
            e.dispatched -= 1;
            e.released -= 1;
        }
    }

    /// An endpoint for an inference request: at once when one is free and
    /// nothing is held, else after waiting in the queue. Refused when the
    /// queue is full, when the wait exceeds the timeout, or at shutdown.
    pub async fn admit(
        self: &Arc<Self>,
        client: &str,
        priority: i32,
    ) -> Result<Assignment, Rejection> {
        let arrived = Instant::now();
        let (id, mut rx) = {
            let mut st = self.lock();
            if st.closed {
                drop(st);
                return Err(self.refuse(Rejection::ShuttingDown));
            }
            if st.queue.is_empty()
                && let Some(i) = self.choose(&mut st, false)
            {
                let a = self.assign(&mut st, i, false);
                drop(st);
                self.metrics.observe_wait(Duration::ZERO);
                return Ok(a);
            }
            let (tx, rx) = oneshot::channel();
            let now = self.since_origin(arrived);
            match st.queue.push(client, priority, now, tx) {
                Ok(id) => (id, rx),
                Err(rejection) => {
                    drop(st);
                    return Err(self.refuse(rejection));
                }
            }
        };
        // Someone else may have freed capacity between our look and the push.
        self.pump();
        let mut held = Held {
            service: self,
            id,
            armed: true,
        };
        let deadline = arrived + self.timeout;
        let outcome = tokio::time::timeout_at(deadline, &mut rx).await;
        held.armed = false;
        match outcome {
            Ok(Ok(a)) => Ok(a),
            // The queue was emptied at shutdown.
            Ok(Err(_)) => Err(self.refuse(Rejection::ShuttingDown)),
            Err(_) => {
                let mut st = self.lock();
                if st.queue.remove(id).is_some() {
                    let endpoints = st
                        .endpoints
                        .iter()
                        .filter(|e| e.takes_new_requests())
                        .count();
                    drop(st);
                    return Err(self.refuse(Rejection::TimedOut {
                        waited: arrived.elapsed(),
                        endpoints,
                    }));
                }
                drop(st);
                // Dispatched while the timer fired: the assignment is here.
                rx.try_recv()
                    .map_err(|_| self.refuse(Rejection::ShuttingDown))
            }
        }
    }

    fn refuse(&self, rejection: Rejection) -> Rejection {
        self.metrics.rejected(&rejection);
        rejection
    }

    /// An endpoint for a request that is not flow-controlled (`/v1/models`,
    /// `/health`…): the best one, saturated or not.
    pub fn any_endpoint(self: &Arc<Self>) -> Option<Assignment> {
        let mut st = self.lock();
        let i = self.choose(&mut st, true)?;
        Some(self.assign(&mut st, i, false))
    }

    /// Hands held requests to endpoints while the picker finds an
    /// unsaturated one.
    pub fn pump(self: &Arc<Self>) {
        let mut st = self.lock();
        while !st.queue.is_empty() {
            let Some(i) = self.choose(&mut st, false) else {
                break;
            };
            let now = self.since_origin(Instant::now());
            let popped = st.queue.pop(now).expect("the queue is not empty");
            let a = self.assign(&mut st, i, true);
            match popped.value.send(a) {
                Ok(()) => self.metrics.observe_wait(popped.waited),
                // The waiter gave up in the meantime.
                Err(a) => Self::unassign(&mut st, a),
            }
        }
    }

    fn finished(self: &Arc<Self>, key: &str) {
        {
            let mut st = self.lock();
            if let Some(i) = st.endpoints.iter().position(|e| &*e.key == key) {
                let e = &mut st.endpoints[i];
                e.in_flight -= 1;
                if !e.listed && e.in_flight == 0 {
                    st.endpoints.remove(i);
                }
            }
        }
        self.pump();
    }

    /// Follows an endpoint source until it closes (the last set stays).
    pub async fn follow(self: Arc<Self>, mut rx: watch::Receiver<Vec<EndpointSpec>>) {
        loop {
            let set = rx.borrow_and_update().clone();
            self.apply(&set);
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Takes a new endpoint set: new endpoints are scraped at once; gone
    /// ones leave when their last request ends.
    pub fn apply(self: &Arc<Self>, set: &[EndpointSpec]) {
        {
            let mut st = self.lock();
            for e in &mut st.endpoints {
                e.listed = false;
            }
            for spec in set {
                match st.endpoints.iter_mut().find(|e| e.url == spec.url) {
                    Some(e) => {
                        if e.draining != spec.draining {
                            tracing::info!(service = %self.name, endpoint = %e.url, draining = spec.draining, "endpoint changed");
                        }
                        e.listed = true;
                        e.draining = spec.draining;
                    }
                    None => {
                        tracing::info!(service = %self.name, endpoint = %spec.url, draining = spec.draining, "endpoint added");
                        let key: Arc<str> = spec.url.to_string().into();
                        st.endpoints.push(Endpoint {
                            url: spec.url.clone(),
                            key,
                            in_flight: 0,
                            dispatched: 0,
                            released: 0,
                            report: None,
                            scrape_errors: 0,
                            scrape_failing: false,
                            draining: spec.draining,
                            listed: true,
                            scraper: None,
                        });
                    }
                }
            }
            for e in st
                .endpoints
                .iter_mut()
                .filter(|e| e.listed && e.scraper.is_none())
            {
                let task = tokio::spawn(scrape_loop(self.clone(), e.url.clone(), e.key.clone()));
                e.scraper = Some(task.abort_handle());
            }
            for e in st.endpoints.iter_mut().filter(|e| !e.listed) {
                if let Some(task) = e.scraper.take() {
                    tracing::info!(service = %self.name, endpoint = %e.url, in_flight = e.in_flight, "endpoint removed; its requests finish");
                    task.abort();
                }
            }
            st.endpoints.retain(|e| e.listed || e.in_flight > 0);
        }
        self.pump();
    }

    /// The endpoint's dispatch and release counts.
    fn counts(&self, key: &str) -> Option<(u64, u64)> {
        self.lock()
            .endpoints
            .iter()
            .find(|e| &*e.key == key)
            .map(|e| (e.dispatched, e.released))
    }

    fn report(
        self: &Arc<Self>,
        key: &str,
        result: Result<ServerMetrics, String>,
        taken: Instant,
        counts: (u64, u64),
    ) {
        {
            let mut st = self.lock();
            let Some(e) = st.endpoints.iter_mut().find(|e| &*e.key == key) else {
                return;
            };
            match result {
                Ok(metrics) => {
                    if e.scrape_failing {
                        tracing::info!(service = %self.name, endpoint = %e.url, "scrapes work again");
                        e.scrape_failing = false;
                    }
                    e.report = Some(Report {
                        metrics,
                        taken,
                        dispatched_then: counts.0,
                        released_then: counts.1,
                    });
                }
                Err(why) => {
                    // The last report goes stale by itself, and the
                    // endpoint then counts as saturated.
                    if !e.scrape_failing {
                        tracing::warn!(service = %self.name, endpoint = %e.url, error = %why, "scrape failed; the endpoint is saturated once its last report is stale");
                        e.scrape_failing = true;
                    }
                    e.scrape_errors += 1;
                }
            }
        }
        self.pump();
    }

    /// Stops admitting requests, refuses the held ones (503) and stops
    /// scraping. In-flight requests go on.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        let now = self.since_origin(Instant::now());
        // Dropping a waiter's sender tells it the gateway is stopping.
        while st.queue.pop(now).is_some() {}
        for e in &mut st.endpoints {
            if let Some(task) = e.scraper.take() {
                task.abort();
            }
        }
    }

    pub fn view(&self) -> View {
        let st = self.lock();
        let now = Instant::now();
        let eligible: Vec<&Endpoint> = st
            .endpoints
            .iter()
            .filter(|e| e.takes_new_requests())
            .collect();
        let pool_saturation = if eligible.is_empty() {
            1.0
        } else {
            eligible
                .iter()
                .map(|e| self.picker.saturation(&e.load(now)))
                .sum::<f64>()
                / eligible.len() as f64
        };
        View {
            queue_depth: st.queue.len(),
            pool_saturation,
            endpoints: st
                .endpoints
                .iter()
                .map(|e| EndpointView {
                    key: e.key.clone(),
                    in_flight: e.in_flight,
                    dispatched: e.dispatched,
                    draining: !e.takes_new_requests(),
                    saturated: self.picker.is_saturated(&e.load(now)),
                    report_age: e.report.map(|r| now.saturating_duration_since(r.taken)),
                    scrape_errors: e.scrape_errors,
                })
                .collect(),
        }
    }

    /// Requests held in the flow-control queue now.
    pub fn queue_depth(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn in_flight(&self) -> u32 {
        self.lock().endpoints.iter().map(|e| e.in_flight).sum()
    }
}

/// Removes a held request whose waiter went away (the client disconnected).
struct Held<'a> {
    service: &'a Arc<Service>,
    id: u64,
    armed: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.armed {
            let removed = self.service.lock().queue.remove(self.id).is_some();
            if removed {
                self.service.metrics.cancelled();
            }
        }
    }
}

/// Scrapes one endpoint every interval until aborted; the first scrape
/// runs at once so a new endpoint is not stale for longer than it takes.
async fn scrape_loop(service: Arc<Service>, url: EndpointUrl, key: Arc<str>) {
    let mut tick = tokio::time::interval(service.scrape_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = service.picker.config().staleness;
    loop {
        tick.tick().await;
        let Some(counts) = service.counts(&key) else {
            return;
        };
        let taken = Instant::now();
        let result = scrape::scrape(&service.client, &url, timeout).await;
        service.report(&key, result, taken, counts);
    }
}
