//! The flags of `aim load`, and their check into a [`Plan`]. Checking is pure: every
//! mistake is found before anything is sent, and its message names the flag and says
//! what to pass instead.

use std::path::PathBuf;

use aim_lab::synth::Lengths;
use aim_lab::trace::{Arrival, TraceFormat};

use crate::LoadError;
use crate::pick::Strategy;
use crate::request::Api;
use crate::schedule::{self, LengthSource, RateSchedule};
use crate::service::ServiceTarget;

/// Examples shown under `aim load --help`.
pub const EXAMPLES: &str = "\
Load shapes (one of):
  --rate \"0s:1,30s:8,90s:1\"   open loop, Poisson arrivals at 1/s, from 30 s 8/s, from 90 s 1/s
  --trace FILE                open loop, a trace's arrival times and lengths (Azure CSV, Mooncake JSONL)
  --concurrency N             closed loop, N clients each waiting for its answer
Open loop never waits for answers: at most --max-in-flight requests are out, and a request due
beyond that is dropped and counted, not sent late.

Examples:
  aim load --url http://127.1.0.5:8000 --url http://127.1.0.6:8000 --rate \"0s:1,30s:8,90s:1\" --duration 120s
  aim load --service qwen-chat-predictor -n ml-team --trace azure_conv.csv --speedup 10
  aim load --url http://127.0.0.1:8000 --concurrency 16 --think-time 500ms --duration 60s --json-out run.json";

/// The flags of `aim load`: sends streamed requests to OpenAI-compatible servers (vLLM,
/// `aim sim`) and measures TTFT and latency. See [`EXAMPLES`].
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct LoadArgs {
    /// Base URL of a server (e.g. http://127.1.0.5:8000); repeat for several.
    #[arg(long = "url", value_name = "URL", help_heading = "Targets")]
    pub urls: Vec<String>,
    /// Send to the ready endpoints of this Kubernetes Service (its EndpointSlices, read
    /// through KUBECONFIG and refreshed every --refresh).
    #[arg(long, value_name = "NAME", help_heading = "Targets")]
    pub service: Option<String>,
    /// Namespace of --service (default: the kubeconfig context's).
    #[arg(short, long, help_heading = "Targets")]
    pub namespace: Option<String>,
    /// EndpointSlice port of --service to send to, by name (default: the only port, or
    /// the one named http).
    #[arg(long, help_heading = "Targets")]
    pub port_name: Option<String>,
    /// How often --service's endpoints are read again.
    #[arg(long, default_value = "3s", value_parser = duration_arg, value_name = "TIME", help_heading = "Targets")]
    pub refresh: f64,
    /// How requests are spread over the endpoints.
    #[arg(long, value_enum, default_value_t = Strategy::RoundRobin, help_heading = "Targets")]
    pub pick: Strategy,

    /// Open loop from a rate schedule in requests/s with Poisson arrivals:
    /// "TIME:RATE,..." steps (e.g. "0s:1,30s:8,90s:1"), or one rate.
    #[arg(long, value_name = "SCHEDULE", help_heading = "Load")]
    pub rate: Option<String>,
    /// Open loop replaying a trace (Azure CSV or Mooncake JSONL): its arrival times,
    /// prompt lengths and output lengths.
    #[arg(long, value_name = "FILE", help_heading = "Load")]
    pub trace: Option<PathBuf>,
    /// Trace format (default: from the file extension).
    #[arg(long, value_enum, help_heading = "Load")]
    pub format: Option<TraceFormat>,
    /// Replay the trace this many times faster.
    #[arg(long, help_heading = "Load")]
    pub speedup: Option<f64>,
    /// Closed loop: this many clients, each sending its next request when the last one
    /// is answered.
    #[arg(long, value_name = "N", help_heading = "Load")]
    pub concurrency: Option<usize>,
    /// Closed loop: pause between an answer and the client's next request.
    #[arg(long, value_parser = duration_arg, value_name = "TIME", help_heading = "Load")]
    pub think_time: Option<f64>,
    /// How long to send (cuts a trace or a schedule; required for closed loop and for
    /// a schedule whose last step never ends).
    #[arg(long, value_parser = duration_arg, value_name = "TIME", help_heading = "Load")]
    pub duration: Option<f64>,
    /// Seed for arrivals, sampled lengths and prompt tokens.
    #[arg(long, default_value_t = 0, help_heading = "Load")]
    pub seed: u64,
    /// Prompt length in tokens (without a trace; default 256).
    #[arg(long, value_name = "TOKENS", help_heading = "Load")]
    pub prompt_tokens: Option<u32>,
    /// Output length in tokens (without a trace; default 64).
    #[arg(long, value_name = "TOKENS", help_heading = "Load")]
    pub output_tokens: Option<u32>,
    /// Draw prompt and output lengths from the lab's fits to the Azure traces instead.
    #[arg(long, value_enum, help_heading = "Load")]
    pub lengths: Option<Lengths>,

    /// Model to ask for (default: the first one /v1/models lists).
    #[arg(long)]
    pub model: Option<String>,
    /// Endpoint to call.
    #[arg(long, value_enum, default_value_t = Api::Completions)]
    pub api: Api,
    /// Open loop: most requests out at once; requests due beyond it are dropped and
    /// counted.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub max_in_flight: usize,
    /// A request not answered completely within this time counts as a timeout.
    #[arg(long, default_value = "120s", value_parser = duration_arg, value_name = "TIME")]
    pub timeout: f64,
    /// Span of the sliding window behind the live percentiles.
    #[arg(long, default_value = "10s", value_parser = duration_arg, value_name = "TIME")]
    pub window: f64,
    /// Write per-second samples and the summary as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// No live figures on stderr (warnings and the summary still print).
    #[arg(short, long)]
    pub quiet: bool,
}

fn duration_arg(text: &str) -> Result<f64, String> {
    schedule::parse_duration(text)
}

/// Where requests go.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    Urls(Vec<String>),
    Service(ServiceTarget),
}

/// The shape of the load.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Rate {
        schedule: RateSchedule,
        text: String,
        end: f64,
        lengths: LengthSource,
    },
    Trace {
        path: PathBuf,
        format: Option<TraceFormat>,
        speedup: f64,
        duration: Option<f64>,
    },
    Closed {
        clients: usize,
        think: f64,
        duration: f64,
        lengths: LengthSource,
    },
}

/// A checked `aim load` invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub shape: Shape,
    pub targets: Targets,
    pub model: Option<String>,
    pub api: Api,
    pub pick: Strategy,
    pub max_in_flight: usize,
    pub timeout: f64,
    pub window: f64,
    pub json_out: Option<PathBuf>,
    pub quiet: bool,
    pub seed: u64,
}

fn usage(message: impl Into<String>) -> LoadError {
    LoadError::Usage(message.into())
}

/// `http(s)://HOST[:PORT]` with any trailing `/` or `/v1` taken off, since the request
/// paths start with `/v1`.
fn base_url(url: &str) -> Result<String, LoadError> {
    let trimmed = url.trim().trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/v1").unwrap_or(trimmed);
    let host = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match host {
        Some(h) if !h.is_empty() && !h.contains(char::is_whitespace) => Ok(trimmed.to_string()),
        _ => Err(usage(format!(
            "--url {url:?} is not a server's base URL: give http://HOST:PORT, e.g. --url http://127.1.0.5:8000"
        ))),
    }
}

impl LoadArgs {
    /// Checks the flags together and turns them into a plan.
    pub fn plan(&self) -> Result<Plan, LoadError> {
        Ok(Plan {
            targets: self.targets()?,
            shape: self.shape()?,
            model: self.model.clone(),
            api: self.api,
            pick: self.pick,
            max_in_flight: positive_count("--max-in-flight", self.max_in_flight)?,
            timeout: positive_time("--timeout", self.timeout)?,
            window: positive_time("--window", self.window)?,
            json_out: self.json_out.clone(),
            quiet: self.quiet,
            seed: self.seed,
        })
    }

    fn targets(&self) -> Result<Targets, LoadError> {
        match (&self.service, self.urls.as_slice()) {
            (None, []) => Err(usage(
                "no target: pass --url http://HOST:PORT (repeat it for several servers), or --service NAME [-n NAMESPACE] for a Kubernetes Service's endpoints",
            )),
            (Some(_), [_, ..]) => Err(usage(
                "--url and --service both given: use --url for fixed servers or --service for a Service's changing endpoints, not both",
            )),
            (None, urls) => {
                for (flag, given) in [
                    ("--namespace", self.namespace.is_some()),
                    ("--port-name", self.port_name.is_some()),
                ] {
                    if given {
                        return Err(usage(format!(
                            "{flag} only applies to --service; with --url, put the host and port in the URL"
                        )));
                    }
                }
                Ok(Targets::Urls(
                    urls.iter().map(|u| base_url(u)).collect::<Result<_, _>>()?,
                ))
            }
            (Some(name), []) => {
                if name.is_empty() {
                    return Err(usage("--service is empty: give the Service's name"));
                }
                Ok(Targets::Service(ServiceTarget {
                    name: name.clone(),
                    namespace: self.namespace.clone(),
                    port_name: self.port_name.clone(),
                    refresh: positive_time("--refresh", self.refresh)?,
                }))
            }
        }
    }

    fn lengths(&self) -> Result<LengthSource, LoadError> {
        match (self.lengths, self.prompt_tokens, self.output_tokens) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(usage(
                "--lengths draws both lengths, so it does not go with --prompt-tokens or --output-tokens: pass one or the other",
            )),
            (Some(l), None, None) => Ok(LengthSource::Sampled(l)),
            (None, prompt, output) => Ok(LengthSource::Fixed {
                prompt: positive_tokens("--prompt-tokens", prompt.unwrap_or(256))?,
                output: positive_tokens("--output-tokens", output.unwrap_or(64))?,
            }),
        }
    }

    fn shape(&self) -> Result<Shape, LoadError> {
        let given: Vec<&str> = [
            ("--rate", self.rate.is_some()),
            ("--trace", self.trace.is_some()),
            ("--concurrency", self.concurrency.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, on)| on.then_some(flag))
        .collect();
        if given.len() > 1 {
            return Err(usage(format!(
                "{} both given: choose one load shape (--rate or --trace for open loop, --concurrency for closed loop)",
                given.join(" and ")
            )));
        }
        let only = |flag: &str, given: bool, with: &str| {
            if given {
                Err(usage(format!("{flag} only applies with {with}")))
            } else {
                Ok(())
            }
        };
        only(
            "--format",
            self.format.is_some() && self.trace.is_none(),
            "--trace",
        )?;
        only(
            "--speedup",
            self.speedup.is_some() && self.trace.is_none(),
            "--trace",
        )?;
        only(
            "--think-time",
            self.think_time.is_some() && self.concurrency.is_none(),
            "--concurrency (closed loop)",
        )?;
        if let Some(d) = self.duration {
            positive_time("--duration", d)?;
        }
        if let Some(text) = &self.rate {
            let schedule = RateSchedule::parse(text).map_err(usage)?;
            let end = match (self.duration, schedule.natural_end()) {
                (Some(d), _) => d,
                (None, Some(end)) => end,
                (None, None) => {
                    let last = schedule
                        .steps()
                        .last()
                        .copied()
                        .unwrap_or(schedule::Step { at: 0.0, rate: 0.0 });
                    return Err(usage(format!(
                        "--rate {text:?}: the last step ({}s at {}/s) never ends: pass --duration (e.g. --duration 120s), or end the schedule with a zero-rate step like \"{}s:0\"",
                        last.at,
                        last.rate,
                        last.at + 60.0
                    )));
                }
            };
            return Ok(Shape::Rate {
                schedule,
                text: text.clone(),
                end,
                lengths: self.lengths()?,
            });
        }
        if let Some(path) = &self.trace {
            if self.lengths.is_some()
                || self.prompt_tokens.is_some()
                || self.output_tokens.is_some()
            {
                return Err(usage(
                    "--lengths, --prompt-tokens and --output-tokens do not go with --trace: the trace gives each request's lengths",
                ));
            }
            let speedup = self.speedup.unwrap_or(1.0);
            if !(speedup.is_finite() && speedup > 0.0) {
                return Err(usage(format!(
                    "--speedup must be a positive number (2 replays twice as fast), got {speedup}"
                )));
            }
            return Ok(Shape::Trace {
                path: path.clone(),
                format: self.format,
                speedup,
                duration: self.duration,
            });
        }
        if let Some(clients) = self.concurrency {
            let clients = positive_count("--concurrency", clients)?;
            let duration = self.duration.ok_or_else(|| {
                usage("--concurrency needs --duration: how long the clients keep sending, e.g. --duration 60s")
            })?;
            return Ok(Shape::Closed {
                clients,
                think: self.think_time.unwrap_or(0.0),
                duration,
                lengths: self.lengths()?,
            });
        }
        Err(usage(
            "no load: pass --rate SCHEDULE (open loop, e.g. --rate \"0s:1,30s:8,90s:1\"), --trace FILE (open loop replaying a trace) or --concurrency N (closed loop)",
        ))
    }
}

fn positive_count(flag: &str, n: usize) -> Result<usize, LoadError> {
    if n == 0 {
        return Err(usage(format!("{flag} must be at least 1")));
    }
    Ok(n)
}

fn positive_tokens(flag: &str, n: u32) -> Result<u32, LoadError> {
    if n == 0 {
        return Err(usage(format!("{flag} must be at least 1 token")));
    }
    Ok(n)
}

fn positive_time(flag: &str, seconds: f64) -> Result<f64, LoadError> {
    if seconds <= 0.0 {
        return Err(usage(format!("{flag} must be longer than 0s")));
    }
    Ok(seconds)
}

impl Shape {
    /// The open-loop arrivals (reading the trace file), or `None` for closed loop.
    pub fn arrivals(&self, seed: u64) -> Result<Option<Vec<Arrival>>, LoadError> {
        match self {
            Shape::Rate {
                schedule,
                end,
                lengths,
                ..
            } => Ok(Some(schedule.poisson(*end, lengths, seed))),
            Shape::Trace {
                path,
                format,
                speedup,
                duration,
            } => {
                let trace = aim_lab::trace::load(path, *format)?;
                Ok(Some(schedule::from_trace(trace, *speedup, *duration)))
            }
            Shape::Closed { .. } => Ok(None),
        }
    }

    /// One line for the summary's heading.
    pub fn describe(&self) -> String {
        match self {
            Shape::Rate {
                text,
                end,
                schedule,
                ..
            } => format!(
                "open loop, --rate {text:?} for {end}s (~{:.0} requests expected)",
                schedule.expected_count(*end)
            ),
            Shape::Trace { path, speedup, .. } => {
                format!("open loop, trace {} at {speedup}x", path.display())
            }
            Shape::Closed {
                clients,
                think,
                duration,
                ..
            } => format!("closed loop, {clients} clients, think time {think}s, for {duration}s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadArgs,
    }

    fn parse(flags: &str) -> Result<Plan, String> {
        let argv = std::iter::once("aim-load").chain(flags.split_whitespace());
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        cli.args.plan().map_err(|e| e.to_string())
    }

    fn refused(flags: &str, wanted: &[&str]) {
        let e = parse(flags).expect_err(flags);
        for w in wanted {
            assert!(e.contains(w), "{flags}: {e:?} lacks {w:?}");
        }
    }

    #[test]
    fn a_rate_run_plans() {
        let p = parse(
            "--url http://127.0.0.1:8000/v1/ --url https://h --rate 0s:1,30s:8,90s:0 --seed 4",
        )
        .unwrap();
        assert_eq!(
            p.targets,
            Targets::Urls(vec!["http://127.0.0.1:8000".into(), "https://h".into()])
        );
        let Shape::Rate { end, lengths, .. } = &p.shape else {
            panic!("{:?}", p.shape)
        };
        assert_eq!(*end, 90.0, "the zero step ends the schedule");
        assert_eq!(
            *lengths,
            LengthSource::Fixed {
                prompt: 256,
                output: 64
            }
        );
        assert_eq!((p.seed, p.max_in_flight, p.timeout), (4, 1000, 120.0));
        let cut = parse("--url http://a --rate 0s:1,30s:8,90s:0 --duration 10s").unwrap();
        assert!(matches!(cut.shape, Shape::Rate { end: 10.0, .. }));
    }

    #[test]
    fn closed_loop_and_service_plan() {
        let p = parse("--service qwen -n ml --port-name http --refresh 1s --concurrency 4 --think-time 250ms --duration 1m --lengths code")
            .unwrap();
        assert_eq!(
            p.targets,
            Targets::Service(ServiceTarget {
                name: "qwen".into(),
                namespace: Some("ml".into()),
                port_name: Some("http".into()),
                refresh: 1.0
            })
        );
        assert_eq!(
            p.shape,
            Shape::Closed {
                clients: 4,
                think: 0.25,
                duration: 60.0,
                lengths: LengthSource::Sampled(Lengths::Code)
            }
        );
    }

    #[test]
    fn targets_are_checked() {
        refused(
            "--rate 1 --duration 5s",
            &["no target", "--url", "--service"],
        );
        refused(
            "--url http://a --service s --rate 1 --duration 5s",
            &["--url and --service both given"],
        );
        refused(
            "--url 127.0.0.1:8000 --rate 1 --duration 5s",
            &["--url", "http://HOST:PORT"],
        );
        refused("--url http:// --rate 1 --duration 5s", &["--url"]);
        refused(
            "--url http://a -n x --rate 1 --duration 5s",
            &["--namespace only applies to --service"],
        );
        refused(
            "--url http://a --port-name p --rate 1 --duration 5s",
            &["--port-name only applies"],
        );
        refused(
            "--service s --refresh 0s --rate 1 --duration 5s",
            &["--refresh must be longer"],
        );
    }

    #[test]
    fn load_shapes_are_checked() {
        refused(
            "--url http://a",
            &["no load", "--rate", "--trace", "--concurrency"],
        );
        refused(
            "--url http://a --rate garbage --duration 5s",
            &["--rate", "not a number", "e.g."],
        );
        refused(
            "--url http://a --rate 0s:1,10s",
            &["--rate step 2", "TIME:RATE"],
        );
        refused(
            "--url http://a --rate 0s:1,30s:8",
            &["never ends", "--duration", "90s:0"],
        );
        refused(
            "--url http://a --rate 1 --concurrency 2 --duration 5s",
            &["--rate and --concurrency both given"],
        );
        refused(
            "--url http://a --rate 1 --trace t.csv",
            &["--rate and --trace"],
        );
        refused(
            "--url http://a --concurrency 2",
            &["--concurrency needs --duration"],
        );
        refused(
            "--url http://a --concurrency 0 --duration 5s",
            &["--concurrency must be at least 1"],
        );
        refused(
            "--url http://a --rate 1 --duration 5s --think-time 1s",
            &["--think-time only applies"],
        );
        refused(
            "--url http://a --rate 1 --duration 5s --speedup 2",
            &["--speedup only applies with --trace"],
        );
        refused(
            "--url http://a --rate 1 --duration 5s --format azure",
            &["--format only applies"],
        );
        refused(
            "--url http://a --trace t.csv --speedup 0",
            &["--speedup must be a positive"],
        );
        refused(
            "--url http://a --trace t.csv --prompt-tokens 5",
            &["the trace gives each request's lengths"],
        );
        refused(
            "--url http://a --rate 1 --duration 5s --lengths code --output-tokens 3",
            &["--lengths", "--output-tokens"],
        );
        refused(
            "--url http://a --rate 1 --duration 5s --prompt-tokens 0",
            &["--prompt-tokens must be at least 1"],
        );
        refused(
            "--url http://a --rate 1 --duration soon",
            &["--duration", "not a duration"],
        );
        refused(
            "--url http://a --rate 1 --duration 0s",
            &["--duration must be longer than 0s"],
        );
        refused(
            "--url http://a --rate 1 --duration 5s --max-in-flight 0",
            &["--max-in-flight must be at least 1"],
        );
        refused(
            "--url http://a --rate 1 --duration 5s --timeout 0",
            &["--timeout must be longer"],
        );
    }

    #[test]
    fn trace_problems_name_the_trace() {
        let missing = parse("--url http://a --trace no-such-trace.csv")
            .unwrap()
            .shape
            .arrivals(0)
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("no-such-trace.csv") && missing.contains("--trace"),
            "{missing}"
        );
    }
}
