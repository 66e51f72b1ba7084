//! Command-line options of `aim gateway`, and their checks. Every refusal
//! names the option at fault and says what would be accepted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aim_picker::{PickerConfig, QueueConfig, Weights};

use crate::endpoints::EndpointUrl;
use crate::routes::Scope;

#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Address the proxy listens on (HTTP/1.1, and HTTP/2 with prior knowledge).
    #[arg(long, env = "AIM_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "AIM_GATEWAY_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Also serve the Gateway API Inference Extension's endpoint-picker
    /// protocol (Envoy ext_proc, gRPC over h2c) on this address, picking
    /// from the same endpoints, in-flight counts and flow-control queue as
    /// the proxy. Not with --kubernetes.
    #[arg(long, env = "AIM_GATEWAY_EXT_PROC_LISTEN")]
    pub ext_proc_listen: Option<SocketAddr>,
    /// The service's name in metrics and logs.
    #[arg(long, default_value = "default")]
    pub service: String,
    /// An endpoint of the service, `http://HOST:PORT` (repeat, or separate with commas).
    #[arg(long = "endpoint", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// A file listing the service's endpoints, one `http://HOST:PORT` per line,
    /// optionally followed by `draining`; `#` starts a comment. Re-read every
    /// --endpoints-refresh: an endpoint marked draining or removed gets no new
    /// requests while its in-flight ones finish.
    #[arg(long)]
    pub endpoints_file: Option<PathBuf>,
    /// Serve the Gateway API: routes, backends and endpoints come from the
    /// cluster (the kubeconfig's, or the pod's service account), and aim
    /// writes the status of the GatewayClasses, Gateways and HTTPRoutes it
    /// serves. Without --gateway-class or --gateway, every Gateway whose
    /// class has controllerName aim.eai.amd.com/gateway.
    #[arg(long)]
    pub kubernetes: bool,
    /// With --kubernetes: serve only the Gateways of this GatewayClass.
    #[arg(long)]
    pub gateway_class: Option<String>,
    /// With --kubernetes: serve only this Gateway, `NAMESPACE/NAME`.
    #[arg(long)]
    pub gateway: Option<String>,
    /// How often --endpoints-file is re-read.
    #[arg(long, default_value = "1s", value_parser = duration_arg)]
    pub endpoints_refresh: Duration,
    /// How often each endpoint's /metrics (vLLM's gauges) is scraped.
    #[arg(long, default_value = "50ms", value_parser = duration_arg)]
    pub scrape_interval: Duration,
    /// A scrape older than this says nothing: the endpoint counts as saturated.
    #[arg(long, default_value = "200ms", value_parser = duration_arg)]
    pub metrics_staleness: Duration,
    /// Weight of vLLM's waiting requests in an endpoint's score.
    #[arg(long, default_value_t = Weights::default().queue, allow_negative_numbers = true)]
    pub weight_queue: f64,
    /// Weight of vLLM's free KV cache in an endpoint's score.
    #[arg(long, default_value_t = Weights::default().kv_cache, allow_negative_numbers = true)]
    pub weight_kv_cache: f64,
    /// Weight of the gateway's own in-flight requests in an endpoint's score.
    #[arg(long, default_value_t = Weights::default().in_flight, allow_negative_numbers = true)]
    pub weight_in_flight: f64,
    /// Waiting requests at which an endpoint is saturated.
    #[arg(long, default_value_t = PickerConfig::default().queue_depth)]
    pub saturation_queue_depth: u32,
    /// KV-cache usage (0-1) at which an endpoint is saturated.
    #[arg(long, default_value_t = PickerConfig::default().kv_usage, allow_negative_numbers = true)]
    pub saturation_kv_cache: f64,
    /// The gateway's own in-flight requests at which an endpoint is saturated (no cap by default).
    #[arg(long)]
    pub max_in_flight_per_endpoint: Option<u32>,
    /// Requests held at most while every endpoint is saturated; more are refused with 429.
    /// 0 holds nothing.
    #[arg(long, default_value_t = 1000)]
    pub queue_capacity: usize,
    /// Requests one client may have held at most (no limit of its own by default).
    #[arg(long)]
    pub queue_per_client: Option<usize>,
    /// How long a request may be held before it is refused with 503.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    pub queue_timeout: Duration,
    /// The header naming a request's client, for fair turns in the queue; without
    /// it, the client's IP address.
    #[arg(long, default_value = "x-gateway-inference-fairness-id")]
    pub client_header: String,
    /// The header naming a request's objective, mapped to a priority by --objective.
    #[arg(long, default_value = "x-gateway-inference-objective")]
    pub objective_header: String,
    /// An objective and its priority, `NAME=PRIORITY` (repeat); higher leaves the
    /// queue first. Unknown or missing objectives have priority 0.
    #[arg(long = "objective")]
    pub objectives: Vec<String>,
    /// On SIGTERM, how long in-flight and held requests get to finish.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    pub drain_timeout: Duration,
    /// How long connecting to an endpoint may take.
    #[arg(long, default_value = "5s", value_parser = duration_arg)]
    pub connect_timeout: Duration,
    /// Push each service's queue depth, in-flight count and queue wait
    /// over OTLP/gRPC to this `HOST:PORT` (aim's scaler): the signal that
    /// wakes a service from zero. Off when not given.
    #[arg(long, env = "AIM_GATEWAY_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// How often the OTLP push runs; a change in any queue's depth is
    /// pushed within 100 ms whatever this says.
    #[arg(long, default_value = "1s", value_parser = duration_arg)]
    pub otlp_interval: Duration,
}

/// Reads `250ms`, `1.5s`, `2m` or a bare number of seconds.
pub fn duration_arg(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        _ => {
            return Err(format!(
                "`{text}`: use a number with ms, s or m, e.g. 250ms"
            ));
        }
    };
    let v: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}`: use a number with ms, s or m, e.g. 250ms"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("`{text}`: a duration is zero or more"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// Everything the gateway runs with, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// `--ext-proc-listen`: where the endpoint-picker protocol is served.
    pub ext_proc_listen: Option<SocketAddr>,
    pub service: String,
    pub endpoints: Vec<EndpointUrl>,
    pub endpoints_file: Option<PathBuf>,
    pub endpoints_refresh: Duration,
    /// `--kubernetes`: which Gateways to serve.
    pub kubernetes: Option<Scope>,
    pub scrape_interval: Duration,
    pub picker: PickerConfig,
    pub queue: QueueConfig,
    pub client_header: http::HeaderName,
    pub objective_header: http::HeaderName,
    pub objectives: BTreeMap<String, i32>,
    pub drain_timeout: Duration,
    pub connect_timeout: Duration,
    /// `http://HOST:PORT` of the OTLP/gRPC receiver, and the push interval.
    pub otlp: Option<(String, Duration)>,
}

impl GatewayArgs {
    /// The Gateways `--kubernetes` serves, or `None` without it.
    fn scope(&self) -> anyhow::Result<Option<Scope>> {
        if !self.kubernetes {
            for (flag, given) in [
                ("--gateway-class", self.gateway_class.is_some()),
                ("--gateway", self.gateway.is_some()),
            ] {
                anyhow::ensure!(!given, "{flag} needs --kubernetes");
            }
            return Ok(None);
        }
        let gateway = match &self.gateway {
            None => None,
            Some(g) => {
                let parsed = g
                    .split_once('/')
                    .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'));
                let Some((ns, name)) = parsed else {
                    anyhow::bail!("--gateway `{g}`: use NAMESPACE/NAME, e.g. aim-system/aim");
                };
                Some((ns.to_string(), name.to_string()))
            }
        };
        if let Some(c) = &self.gateway_class {
            anyhow::ensure!(!c.is_empty(), "--gateway-class must not be empty");
        }
        Ok(Some(Scope {
            class: self.gateway_class.clone(),
            gateway,
        }))
    }

    /// Checks what clap cannot and builds the configuration; the error names
    /// the option.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut endpoints = Vec::new();
        for e in &self.endpoints {
            endpoints.push(
                EndpointUrl::parse(e).map_err(|why| anyhow::anyhow!("--endpoint `{e}`: {why}"))?,
            );
        }
        let kubernetes = self.scope()?;
        anyhow::ensure!(
            kubernetes.is_none() || self.ext_proc_listen.is_none(),
            "--ext-proc-listen serves one service's endpoints (--endpoint or --endpoints-file); \
             with --kubernetes an ext_proc stream names no backend to pick from: drop one of the two"
        );
        if kubernetes.is_some() {
            anyhow::ensure!(
                endpoints.is_empty() && self.endpoints_file.is_none(),
                "--kubernetes takes backends and endpoints from the cluster's routes: drop --endpoint and --endpoints-file"
            );
        } else {
            anyhow::ensure!(
                !endpoints.is_empty() || self.endpoints_file.is_some(),
                "no endpoint: give --endpoint http://HOST:PORT (repeatable), --endpoints-file PATH, or --kubernetes"
            );
        }
        anyhow::ensure!(
            !self.scrape_interval.is_zero(),
            "--scrape-interval must be longer than zero"
        );
        anyhow::ensure!(
            !self.endpoints_refresh.is_zero(),
            "--endpoints-refresh must be longer than zero"
        );
        anyhow::ensure!(
            self.metrics_staleness >= self.scrape_interval,
            "--metrics-staleness ({:?}) must be at least --scrape-interval ({:?}); otherwise every endpoint looks stale, hence saturated, between two scrapes",
            self.metrics_staleness,
            self.scrape_interval
        );
        let picker = PickerConfig {
            weights: Weights {
                queue: self.weight_queue,
                kv_cache: self.weight_kv_cache,
                in_flight: self.weight_in_flight,
            },
            queue_depth: self.saturation_queue_depth,
            kv_usage: self.saturation_kv_cache,
            staleness: self.metrics_staleness,
            max_in_flight: self.max_in_flight_per_endpoint,
        };
        picker.validate().map_err(|e| {
            let flag = match e.field {
                "weights.queue" => "--weight-queue",
                "weights.kv_cache" => "--weight-kv-cache",
                "weights.in_flight" => "--weight-in-flight",
                "queue_depth" => "--saturation-queue-depth",
                "kv_usage" => "--saturation-kv-cache",
                "staleness" => "--metrics-staleness",
                "max_in_flight" => "--max-in-flight-per-endpoint",
                other => other,
            };
            anyhow::anyhow!("{flag} must be {}, got {}", e.rule, e.value)
        })?;
        anyhow::ensure!(
            !self.queue_timeout.is_zero(),
            "--queue-timeout must be longer than zero (use --queue-capacity 0 to hold nothing)"
        );
        anyhow::ensure!(
            self.queue_per_client != Some(0),
            "--queue-per-client must be at least 1 when given"
        );
        let header = |flag: &str, value: &str| {
            http::HeaderName::try_from(value.to_ascii_lowercase())
                .map_err(|_| anyhow::anyhow!("{flag} `{value}` is not a valid header name"))
        };
        let mut objectives = BTreeMap::new();
        for o in &self.objectives {
            let parsed = o
                .split_once('=')
                .and_then(|(name, p)| Some((name.trim(), p.trim().parse::<i32>().ok()?)))
                .filter(|(name, _)| !name.is_empty());
            let Some((name, priority)) = parsed else {
                anyhow::bail!(
                    "--objective `{o}`: use NAME=PRIORITY with an integer priority, e.g. premium=10"
                );
            };
            anyhow::ensure!(
                objectives.insert(name.to_string(), priority).is_none(),
                "--objective `{name}` is given twice"
            );
        }
        anyhow::ensure!(!self.service.is_empty(), "--service must not be empty");
        let otlp = match &self.otlp_endpoint {
            None => None,
            Some(e) => {
                anyhow::ensure!(
                    !self.otlp_interval.is_zero(),
                    "--otlp-interval must be longer than zero"
                );
                Some((otlp_url(e)?, self.otlp_interval))
            }
        };
        Ok(Config {
            listen: self.listen,
            admin_listen: self.admin_listen,
            ext_proc_listen: self.ext_proc_listen,
            service: self.service.clone(),
            endpoints,
            endpoints_file: self.endpoints_file.clone(),
            endpoints_refresh: self.endpoints_refresh,
            kubernetes,
            scrape_interval: self.scrape_interval,
            picker,
            queue: QueueConfig {
                capacity: self.queue_capacity,
                per_flow: self.queue_per_client,
                timeout: Some(self.queue_timeout),
            },
            client_header: header("--client-header", &self.client_header)?,
            objective_header: header("--objective-header", &self.objective_header)?,
            objectives,
            drain_timeout: self.drain_timeout,
            connect_timeout: self.connect_timeout,
            otlp,
        })
    }
}

/// `HOST:PORT` or `http://HOST:PORT` to the URL the gRPC client dials.
/// TLS is not offered: the scaler's OTLP receiver in the bed and the chart
/// is plain gRPC inside the cluster.
fn otlp_url(given: &str) -> anyhow::Result<String> {
    let rest = given.strip_prefix("http://").unwrap_or(given);
    let bad = || {
        anyhow::anyhow!(
            "--otlp-endpoint `{given}`: give the scaler's OTLP/gRPC address as HOST:PORT, \
             e.g. aim-scaler.keda.svc:4317 (https is not supported)"
        )
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains('/') || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(format!("http://{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: GatewayArgs,
    }

    fn config(flags: &[&str]) -> anyhow::Result<Config> {
        let mut argv = vec!["aim-gateway"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .args
            .config()
    }

    fn refused(flags: &[&str]) -> String {
        format!("{:#}", config(flags).unwrap_err())
    }

    #[test]
    fn durations_read_with_units() {
        assert_eq!(duration_arg("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration_arg("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration_arg("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration_arg("3"), Ok(Duration::from_secs(3)));
        assert!(duration_arg("3h").unwrap_err().contains("ms, s or m"));
        assert!(duration_arg("-1s").is_err());
    }

    #[test]
    fn defaults_are_the_extensions() {
        let c = config(&["--endpoint", "http://127.0.0.1:8000"]).unwrap();
        assert_eq!(c.picker, PickerConfig::default());
        assert_eq!(c.scrape_interval, Duration::from_millis(50));
        assert_eq!(c.queue.timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.client_header.as_str(), "x-gateway-inference-fairness-id");
    }

    #[test]
    fn each_bad_value_names_its_option() {
        let e = "--endpoint=http://127.0.0.1:8000";
        assert!(refused(&[]).contains("--endpoint http://HOST:PORT"));
        assert!(refused(&["--endpoint", "ftp://x:1"]).contains("--endpoint `ftp://x:1`"));
        assert!(refused(&[e, "--weight-queue", "-1"]).starts_with("--weight-queue must be"));
        assert!(refused(&[e, "--weight-kv-cache", "NaN"]).starts_with("--weight-kv-cache"));
        assert!(
            refused(&[e, "--saturation-queue-depth", "0"]).starts_with("--saturation-queue-depth")
        );
        assert!(refused(&[e, "--saturation-kv-cache", "1.2"]).starts_with("--saturation-kv-cache"));
        assert!(
            refused(&[e, "--max-in-flight-per-endpoint", "0"])
                .starts_with("--max-in-flight-per-endpoint")
        );
        let stale = refused(&[e, "--scrape-interval", "1s", "--metrics-staleness", "500ms"]);
        assert!(
            stale.contains("--metrics-staleness") && stale.contains("--scrape-interval"),
            "{stale}"
        );
        assert!(refused(&[e, "--queue-timeout", "0s"]).starts_with("--queue-timeout"));
        assert!(refused(&[e, "--queue-per-client", "0"]).starts_with("--queue-per-client"));
        assert!(refused(&[e, "--objective", "premium"]).starts_with("--objective `premium`"));
        assert!(refused(&[e, "--objective", "a=1", "--objective", "a=2"]).contains("given twice"));
        assert!(refused(&[e, "--client-header", "bad header"]).starts_with("--client-header"));
        assert!(refused(&[e, "--scrape-interval", "soon"]).contains("--scrape-interval"));
        assert!(refused(&[e, "--kubernetes"]).starts_with("--kubernetes takes backends"));
        for bad in ["https://s:4317", "scaler", "scaler:http", ":4317", "s:0"] {
            assert!(
                refused(&[e, "--otlp-endpoint", bad])
                    .starts_with(&format!("--otlp-endpoint `{bad}`")),
                "{bad}"
            );
        }
        assert!(
            refused(&[e, "--otlp-endpoint", "s:4317", "--otlp-interval", "0s"])
                .starts_with("--otlp-interval")
        );
        assert_eq!(
            config(&[e, "--otlp-endpoint", "scaler.keda.svc:4317"])
                .unwrap()
                .otlp,
            Some(("http://scaler.keda.svc:4317".into(), Duration::from_secs(1)))
        );
        assert_eq!(config(&[e]).unwrap().otlp, None);
        assert_eq!(
            refused(&["--gateway", "a/b"]),
            "--gateway needs --kubernetes"
        );
        assert_eq!(
            refused(&["--gateway-class", "aim"]),
            "--gateway-class needs --kubernetes"
        );
        for bad in ["aim", "/aim", "ns/", "a/b/c"] {
            assert!(
                refused(&["--kubernetes", "--gateway", bad])
                    .starts_with(&format!("--gateway `{bad}`: use NAMESPACE/NAME")),
                "{bad}"
            );
        }
    }

    #[test]
    fn kubernetes_scopes_to_a_class_or_a_gateway() {
        let c = config(&["--kubernetes"]).unwrap();
        assert_eq!(c.kubernetes, Some(Scope::default()));
        let c = config(&[
            "--kubernetes",
            "--gateway",
            "infra/gw",
            "--gateway-class",
            "aim",
        ])
        .unwrap();
        assert_eq!(
            c.kubernetes,
            Some(Scope {
                class: Some("aim".into()),
                gateway: Some(("infra".into(), "gw".into())),
            })
        );
        assert_eq!(config(&[e_flag()]).unwrap().kubernetes, None);
    }

    fn e_flag() -> &'static str {
        "--endpoint=http://127.0.0.1:8000"
    }

    #[test]
    fn objectives_map_to_priorities() {
        let c = config(&[
            "--endpoint",
            "http://127.0.0.1:8000",
            "--objective",
            "premium=10",
            "--objective",
            "batch=-5",
        ])
        .unwrap();
        assert_eq!(c.objectives.get("premium"), Some(&10));
        assert_eq!(c.objectives.get("batch"), Some(&-5));
    }
}
