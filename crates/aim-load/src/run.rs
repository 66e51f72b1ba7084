//! Running a [`Plan`]: the open-loop dispatcher, the closed-loop clients, the
//! once-a-second reporter and the Service follower. The decisions (when, where, what to
//! count) are the pure modules'; this module only keeps time and does the I/O.

use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aim_engine::rng::mix64;
use aim_lab::trace::Arrival;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, sleep, sleep_until};

use crate::LoadError;
use crate::args::{Plan, Shape, Targets};
use crate::pick::Picker;
use crate::report;
use crate::request::{self, Api};
use crate::schedule::LengthSource;
use crate::service::{self, ServiceTarget, Source};
use crate::stats::{Outcome, Recorder, Sample, Summary};

/// What `--json-out` holds, and what [`execute`] returns.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub shape: String,
    pub model: String,
    pub seed: u64,
    /// Stopped early (Ctrl-C) rather than at the end of the load.
    pub interrupted: bool,
    /// One per second (the last may be shorter).
    pub samples: Vec<Sample>,
    pub summary: Summary,
}

/// How long a closed-loop client waits after a failed request or while no endpoint is
/// known, so a dead endpoint does not become a busy loop of connect errors.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Live output on stderr: a line per second, or one line rewritten in place on a
/// terminal; notes (warnings, endpoint changes) always get a line of their own.
struct Console {
    tty: bool,
    quiet: bool,
    line_open: Mutex<bool>,
}

impl Console {
    fn new(quiet: bool) -> Self {
        Console {
            tty: std::io::stderr().is_terminal(),
            quiet,
            line_open: Mutex::new(false),
        }
    }

    fn live(&self, line: &str) {
        if self.quiet {
            return;
        }
        let mut open = lock(&self.line_open);
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            *open = true;
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }

    fn note(&self, text: &str) {
        let mut open = lock(&self.line_open);
        let mut err = std::io::stderr().lock();
        if *open {
            let _ = write!(err, "\r\x1b[2K");
            *open = false;
        }
        let _ = writeln!(err, "{text}");
    }

    fn end_line(&self) {
        let mut open = lock(&self.line_open);
        if *open {
            let _ = writeln!(std::io::stderr());
            *open = false;
        }
    }
}

/// A poisoned lock only means another task panicked mid-update; the counts are still the
/// best there are, and the run should still report them.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Shared {
    recorder: Mutex<Recorder>,
    picker: Mutex<Picker>,
    http: reqwest::Client,
    model: String,
    api: Api,
    timeout: Duration,
    start: Instant,
    console: Console,
    observer: Option<SampleObserver>,
}

/// Called with every per-second sample as it is taken, for embedders that
/// show their own live view (the demo) instead of the console line.
pub type SampleObserver = Arc<dyn Fn(&Sample) + Send + Sync>;

impl Shared {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Chooses the endpoint and counts the send, or counts the lack of an endpoint.
    fn begin(&self, behind: f64) -> Option<Arc<str>> {
        let url = lock(&self.picker).pick();
        let mut recorder = lock(&self.recorder);
        match &url {
            Some(u) => recorder.sent(u, behind),
            None => recorder.no_endpoint(),
        }
        url
    }

    async fn request(&self, url: Arc<str>, prompt: &[u32], max_tokens: u32) -> Outcome {
        let body = request::body(self.api, &self.model, prompt, max_tokens);
        let outcome = request::send(&self.http, &url, self.api, &body, self.timeout).await;
        lock(&self.picker).done(&url);
        lock(&self.recorder).finished(self.now(), &url, &outcome);
        outcome
    }
}

/// Resolves when the stop signal fires; never if its sender is gone without firing.
async fn stopped(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Waits for every task, or aborts them all when stopped.
async fn join_all(tasks: &mut JoinSet<()>, stop: watch::Receiver<bool>) {
    tokio::select! {
        () = async { while tasks.join_next().await.is_some() {} } => {}
        () = stopped(stop) => tasks.abort_all(),
    }
}

async fn open_loop(
    shared: Arc<Shared>,
    arrivals: Vec<Arrival>,
    max_in_flight: usize,
    seed: u64,
    stop: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    let mut warned = false;
    for (i, arrival) in arrivals.into_iter().enumerate() {
        let due = shared.start + Duration::from_secs_f64(arrival.at);
        tokio::select! {
            () = sleep_until(due) => {}
            () = stopped(stop.clone()) => {
                tasks.abort_all();
                return;
            }
        }
        while tasks.try_join_next().is_some() {}
        let behind = Instant::now().saturating_duration_since(due).as_secs_f64();
        let full = {
            let mut recorder = lock(&shared.recorder);
            let full = recorder.in_flight() >= max_in_flight;
            if full {
                recorder.dropped();
            }
            full
        };
        if full {
            if !warned {
                warned = true;
                shared.console.note(&format!(
                    "warning: {max_in_flight} requests in flight (--max-in-flight) at {:.1}s: the servers answer slower than the schedule sends; requests due now are dropped and counted, not sent late",
                    shared.now()
                ));
            }
            continue;
        }
        let Some(url) = shared.begin(behind) else {
            continue;
        };
        let shared = shared.clone();
        tasks.spawn(async move {
            let prompt = request::prompt_tokens(
                arrival.prompt_tokens,
                &arrival.hash_ids,
                seed ^ mix64(i as u64),
            );
            shared.request(url, &prompt, arrival.output_tokens).await;
        });
    }
    join_all(&mut tasks, stop).await;
}

async fn closed_loop(
    shared: Arc<Shared>,
    clients: usize,
    think: f64,
    duration: f64,
    lengths: LengthSource,
    seed: u64,
    stop: watch::Receiver<bool>,
) {
    let deadline = shared.start + Duration::from_secs_f64(duration);
    let think = Duration::from_secs_f64(think);
    let mut tasks = JoinSet::new();
    for client in 0..clients as u64 {
        let shared = shared.clone();
        tasks.spawn(async move {
            let client_seed = seed ^ mix64(client + 1);
            let mut sizes = lengths.sampler(client_seed);
            let mut n = 0u64;
            while Instant::now() < deadline {
                let Some(url) = shared.begin(0.0) else {
                    sleep_until((Instant::now() + RETRY_PAUSE).min(deadline)).await;
                    continue;
                };
                let (prompt_len, output_len) = sizes.draw();
                let prompt = request::prompt_tokens(prompt_len, &[], client_seed ^ mix64(n));
                n += 1;
                let pause = match shared.request(url, &prompt, output_len).await {
                    Outcome::Ok { .. } => think,
                    Outcome::Failed(_) => think.max(RETRY_PAUSE),
                };
                if !pause.is_zero() {
                    sleep_until((Instant::now() + pause).min(deadline)).await;
                }
            }
        });
    }
    join_all(&mut tasks, stop).await;
}

/// Every second: close the interval, print it, keep it.
async fn reporter(shared: Arc<Shared>, samples: Arc<Mutex<Vec<Sample>>>) {
    let mut ticks = tokio::time::interval_at(
        shared.start + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        take_sample(&shared, &samples, true);
    }
}

/// `live`: print it too. The last, shorter interval is kept but not printed: the summary
/// follows at once.
fn take_sample(shared: &Shared, samples: &Mutex<Vec<Sample>>, live: bool) {
    let endpoints = lock(&shared.picker).len();
    let (sample, errors) = {
        let mut recorder = lock(&shared.recorder);
        let sample = recorder.tick(shared.now(), endpoints);
        (sample, recorder.totals().errors.clone())
    };
    if live {
        shared.console.live(&report::live_line(&sample, &errors));
        if let Some(observe) = &shared.observer {
            observe(&sample);
        }
    }
    lock(samples).push(sample);
}

/// Reads the Service's endpoints every `refresh` seconds and hands changes to the picker.
async fn follow_service(
    shared: Arc<Shared>,
    client: kube::Client,
    namespace: String,
    target: ServiceTarget,
    source: Source,
) {
    let mut last_error: Option<String> = None;
    let mut last_source = source;
    loop {
        sleep(Duration::from_secs_f64(target.refresh)).await;
        match service::resolve(&client, &namespace, &target).await {
            Ok((urls, source)) => {
                last_error = None;
                if source != last_source {
                    shared
                        .console
                        .note(&source_note(&namespace, &target.name, source));
                    last_source = source;
                }
                let change = lock(&shared.picker).set(&urls);
                if !change.is_empty() {
                    shared
                        .console
                        .note(&endpoint_note(shared.now(), &change, urls.len()));
                }
            }
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    shared
                        .console
                        .note(&format!("warning: keeping the last endpoints: {e}"));
                }
                last_error = Some(e);
            }
        }
    }
}

fn source_note(namespace: &str, name: &str, source: Source) -> String {
    match source {
        Source::EndpointSlices => {
            format!("Service {namespace}/{name}: following its EndpointSlices")
        }
        Source::SelectedPods => format!(
            "Service {namespace}/{name}: its EndpointSlices list no endpoint, so following the ready pods its selector picks (the local cluster's loopback pod IPs cannot appear in EndpointSlices)"
        ),
    }
}

fn endpoint_note(t: f64, change: &crate::pick::Change, now: usize) -> String {
    let mut parts: Vec<String> = change.added.iter().map(|u| format!("+{u}")).collect();
    parts.extend(change.removed.iter().map(|u| format!("-{u}")));
    format!("{t:.1}s endpoints: {} ({now} ready)", parts.join(" "))
}

async fn discover_model(http: &reqwest::Client, urls: &[Arc<str>]) -> Result<String, LoadError> {
    let mut last = "no endpoint to ask".to_string();
    for url in urls {
        match request::discover_model(http, url).await {
            Ok(model) => return Ok(model),
            Err(e) => last = e,
        }
    }
    Err(LoadError::Target(format!(
        "cannot find the model to ask for ({last}): pass --model NAME"
    )))
}

/// Runs `plan` until its load is sent and answered, or until `stop` resolves (then
/// in-flight requests are abandoned and reported as unfinished). `kube` is needed for
/// `--service` targets.
pub async fn execute(
    plan: &Plan,
    kube: Option<kube::Client>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<Report, LoadError> {
    execute_observed(plan, kube, stop, None).await
}

/// [`execute`], handing each live per-second sample to `observer` too.
pub async fn execute_observed(
    plan: &Plan,
    kube: Option<kube::Client>,
    stop: impl Future<Output = ()> + Send + 'static,
    observer: Option<SampleObserver>,
) -> Result<Report, LoadError> {
    // kube brings ring; reqwest is built without a TLS provider of its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| LoadError::Target(format!("cannot build the HTTP client: {e}")))?;
    let json_out = match &plan.json_out {
        Some(path) => Some((
            path,
            std::fs::File::create(path).map_err(|e| LoadError::Output {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
        )),
        None => None,
    };
    let arrivals = plan.shape.arrivals(plan.seed)?;
    let console = Console::new(plan.quiet);

    let mut picker = Picker::new(plan.pick);
    let mut follow = None;
    match &plan.targets {
        Targets::Urls(urls) => {
            picker.set(urls);
        }
        Targets::Service(target) => {
            let client = kube
                .ok_or_else(|| LoadError::Target("--service needs a Kubernetes client".into()))?;
            let namespace = target
                .namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string());
            service::check_exists(&client, &namespace, &target.name)
                .await
                .map_err(LoadError::Target)?;
            let (urls, source) = service::resolve(&client, &namespace, target)
                .await
                .map_err(LoadError::Target)?;
            if source == Source::SelectedPods {
                console.note(&source_note(&namespace, &target.name, source));
            }
            if urls.is_empty() {
                console.note(&format!(
                    "warning: Service {namespace}/{} has no ready endpoints yet; requests due before one is ready count as 'no endpoint' errors",
                    target.name
                ));
            }
            picker.set(&urls);
            follow = Some((client, namespace, target.clone(), source));
        }
    }
    let model = match &plan.model {
        Some(m) => m.clone(),
        None => discover_model(&http, &picker.urls()).await?,
    };

    let shared = Arc::new(Shared {
        recorder: Mutex::new(Recorder::new(plan.window)),
        picker: Mutex::new(picker),
        http,
        model: model.clone(),
        api: plan.api,
        timeout: Duration::from_secs_f64(plan.timeout),
        start: Instant::now(),
        console,
        observer,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_task = tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let samples = Arc::new(Mutex::new(Vec::new()));
    let reporter = tokio::spawn(reporter(shared.clone(), samples.clone()));
    let follower = follow.map(|(client, namespace, target, source)| {
        tokio::spawn(follow_service(
            shared.clone(),
            client,
            namespace,
            target,
            source,
        ))
    });

    match &plan.shape {
        Shape::Closed {
            clients,
            think,
            duration,
            lengths,
        } => {
            closed_loop(
                shared.clone(),
                *clients,
                *think,
                *duration,
                *lengths,
                plan.seed,
                stop_rx.clone(),
            )
            .await;
        }
        Shape::Rate { .. } | Shape::Trace { .. } => {
            open_loop(
                shared.clone(),
                arrivals.unwrap_or_default(),
                plan.max_in_flight,
                plan.seed,
                stop_rx.clone(),
            )
            .await;
        }
    }

    reporter.abort();
    stop_task.abort();
    if let Some(f) = follower {
        f.abort();
    }
    let last_tick = lock(&samples).last().map_or(0.0, |s| s.t);
    if shared.now() - last_tick > 0.05 {
        take_sample(&shared, &samples, false);
    }
    shared.console.end_line();
    let summary = lock(&shared.recorder).summary(shared.now());
    let report = Report {
        shape: plan.shape.describe(),
        model,
        seed: plan.seed,
        interrupted: *stop_rx.borrow(),
        samples: std::mem::take(&mut *lock(&samples)),
        summary,
    };
    if let Some((path, file)) = json_out {
        let mut out = std::io::BufWriter::new(file);
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| out.flush())
            .map_err(|e| LoadError::Output {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
    }
    Ok(report)
}
