//! The node GPU exporter's part, played for each simulated pod. Pure.
//!
//! A real cluster reports GPU utilisation from a per-node exporter
//! DaemonSet (AMD's device-metrics-exporter, NVIDIA's dcgm-exporter), not
//! from the vLLM container. Both report, per GPU, the share of their
//! sampling interval the GPU was executing work, in percent, labelled with
//! the pod, namespace and container the GPU is assigned to.
//!
//! The simulator's engine keeps the equivalent of the device's busy
//! accumulator: the simulated time it spent in steps (`aim sim` serves it
//! at `/sim/metrics`, beside the elapsed simulated time). Reading it twice
//! gives the busy fraction of the interval between the reads, which is
//! what [`utilisation_percent`] turns into the exporters' percentage.
//! The runner reads it at every sidecar scrape and adds the two
//! exporters' series for the pod's GPUs ([`families`]) to the scraped page,
//! so they go through the pod's collector pipeline (the `metricNames`
//! filter, the namespace/deployment/pod labels) like vLLM's own series.

use std::collections::BTreeMap;

use crate::exposition::{Family, Kind, PodIdentity};

/// AMD device-metrics-exporter's graphics-engine activity gauge (its
/// `GPU_GFX_ACTIVITY` field), percent 0–100.
pub const AMD_GFX_ACTIVITY: &str = "gpu_gfx_activity";
/// NVIDIA dcgm-exporter's utilisation gauge (DCGM field 203), percent 0–100.
pub const DCGM_GPU_UTIL: &str = "DCGM_FI_DEV_GPU_UTIL";

/// The simulator's accumulators (names as `aim sim` serves them).
pub const SIM_BUSY_SECONDS: &str = "aim_sim_engine_busy_seconds_total";
pub const SIM_CLOCK_SECONDS: &str = "aim_sim_clock_seconds_total";
/// Where `aim sim` serves them.
pub const SIM_METRICS_PATH: &str = "/sim/metrics";

/// One read of the simulator's accumulators, both in simulated seconds
/// (so a `--time-scale` run divides like a real one).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BusySample {
    /// Time the engine spent in steps since it started.
    pub busy_s: f64,
    /// Time since it started.
    pub clock_s: f64,
}

/// Reads a `/sim/metrics` page.
pub fn parse_busy(page: &str) -> Result<BusySample, String> {
    let families = crate::exposition::parse(page).map_err(|e| e.to_string())?;
    let value = |name: &str| -> Result<f64, String> {
        families
            .iter()
            .find(|f| f.name == name)
            .and_then(|f| f.samples.first())
            .map(|s| s.1)
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("{SIM_METRICS_PATH} has no usable {name}"))
    };
    Ok(BusySample {
        busy_s: value(SIM_BUSY_SECONDS)?,
        clock_s: value(SIM_CLOCK_SECONDS)?,
    })
}

/// The utilisation a GPU exporter reports for the interval between two
/// reads: busy time gained ÷ time elapsed, in percent, clamped to 0–100.
/// `None` when the pair spans no time or the accumulators went backwards
/// (the simulator restarted): there is no interval to report on, and a
/// fresh baseline is the next read.
pub fn utilisation_percent(before: BusySample, after: BusySample) -> Option<f64> {
    let elapsed = after.clock_s - before.clock_s;
    let busy = after.busy_s - before.busy_s;
    if elapsed <= 0.0 || busy < 0.0 {
        return None;
    }
    Some((100.0 * busy / elapsed).clamp(0.0, 100.0))
}

/// Who the GPUs belong to, as the exporters label them.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuOwner {
    pub identity: PodIdentity,
    /// The container the GPUs are assigned to.
    pub container: String,
    /// The node, the exporters' host name.
    pub node: String,
    /// The pod's UID: seeds stable per-GPU serial numbers and UUIDs.
    pub uid: String,
    /// How many GPUs the container was given.
    pub gpus: u32,
}

/// Both exporters' utilisation families for the pod's GPUs, each GPU at
/// `percent`: vLLM runs one engine over all the GPUs of a pod (tensor
/// parallel), so they are busy together.
pub fn families(owner: &GpuOwner, percent: f64) -> Vec<Family> {
    let workload = |labels: &mut BTreeMap<String, String>| {
        labels.insert("pod".into(), owner.identity.pod.clone());
        labels.insert("namespace".into(), owner.identity.namespace.clone());
        labels.insert("container".into(), owner.container.clone());
    };
    let short_uid: String = owner
        .uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    let mut amd = Vec::new();
    let mut dcgm = Vec::new();
    for gpu in 0..owner.gpus {
        let mut labels = BTreeMap::from([
            ("gpu_id".to_string(), gpu.to_string()),
            ("serial_number".into(), format!("SIM{short_uid}{gpu}")),
            ("card_model".into(), "aim-sim".into()),
            ("hostname".into(), owner.node.clone()),
            ("gpu_partition_id".into(), "0".into()),
            ("gpu_compute_partition_type".into(), "spx".into()),
            ("gpu_memory_partition_type".into(), "nps1".into()),
        ]);
        workload(&mut labels);
        amd.push((labels, percent));

        let mut labels = BTreeMap::from([
            ("gpu".to_string(), gpu.to_string()),
            ("UUID".into(), format!("GPU-sim-{short_uid}-{gpu}")),
            ("device".into(), format!("nvidia{gpu}")),
            ("modelName".into(), "aim-sim".into()),
            ("Hostname".into(), owner.node.clone()),
        ]);
        workload(&mut labels);
        dcgm.push((labels, percent));
    }
    let gauge = |name: &str, samples| Family {
        name: name.into(),
        kind: Kind::Gauge,
        samples,
        histograms: Vec::new(),
    };
    vec![gauge(AMD_GFX_ACTIVITY, amd), gauge(DCGM_GPU_UTIL, dcgm)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(busy_s: f64, clock_s: f64) -> BusySample {
        BusySample { busy_s, clock_s }
    }

    #[test]
    fn idle_is_zero_saturated_is_a_hundred_and_half_is_fifty() {
        let start = sample(3.0, 10.0);
        assert_eq!(utilisation_percent(start, sample(3.0, 15.0)), Some(0.0));
        assert_eq!(utilisation_percent(start, sample(8.0, 15.0)), Some(100.0));
        assert_eq!(utilisation_percent(start, sample(5.5, 15.0)), Some(50.0));
    }

    #[test]
    fn more_busy_time_in_the_same_interval_never_reads_lower() {
        let start = sample(0.0, 0.0);
        let readings: Vec<f64> = (0..=50)
            .map(|i| utilisation_percent(start, sample(f64::from(i) * 0.1, 5.0)).unwrap())
            .collect();
        assert!(readings.windows(2).all(|w| w[0] <= w[1]), "{readings:?}");
        assert_eq!(readings[0], 0.0);
        assert_eq!(readings[50], 100.0);
    }

    #[test]
    fn no_interval_or_a_restart_reports_nothing() {
        let start = sample(4.0, 10.0);
        assert_eq!(utilisation_percent(start, start), None);
        // The simulator restarted: its accumulators began again at zero.
        assert_eq!(utilisation_percent(start, sample(0.5, 1.0)), None);
        // Busy beyond the interval (a step counted at its end, read just
        // before the interval closed) is capped at 100.
        assert_eq!(utilisation_percent(start, sample(9.02, 15.0)), Some(100.0));
    }

    #[test]
    fn the_sim_page_parses_and_a_bad_one_names_what_is_missing() {
        let page = format!(
            "# TYPE {SIM_BUSY_SECONDS} counter\n{SIM_BUSY_SECONDS} 1.25\n\
             # TYPE {SIM_CLOCK_SECONDS} counter\n{SIM_CLOCK_SECONDS} 4\n"
        );
        assert_eq!(parse_busy(&page), Ok(sample(1.25, 4.0)));
        let e = parse_busy(&format!("{SIM_BUSY_SECONDS} 1\n")).unwrap_err();
        assert!(e.contains(SIM_CLOCK_SECONDS), "{e}");
        let e = parse_busy(&format!("{SIM_BUSY_SECONDS} -1\n{SIM_CLOCK_SECONDS} 4\n")).unwrap_err();
        assert!(e.contains(SIM_BUSY_SECONDS), "{e}");
    }

    #[test]
    fn each_gpu_of_the_pod_gets_both_exporters_series_with_its_workload() {
        let owner = GpuOwner {
            identity: PodIdentity {
                namespace: "ml".into(),
                deployment: "chat-predictor".into(),
                pod: "chat-predictor-abc-1".into(),
            },
            container: "kserve-container".into(),
            node: "kwok-node-0".into(),
            uid: "3f2a-77c1-90de-11aa".into(),
            gpus: 2,
        };
        let f = families(&owner, 42.5);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name, "gpu_gfx_activity");
        assert_eq!(f[1].name, "DCGM_FI_DEV_GPU_UTIL");
        for family in &f {
            assert_eq!(family.kind, Kind::Gauge);
            assert_eq!(family.samples.len(), 2, "one series per GPU");
            for (labels, value) in &family.samples {
                assert_eq!(*value, 42.5);
                assert_eq!(labels["pod"], "chat-predictor-abc-1");
                assert_eq!(labels["namespace"], "ml");
                assert_eq!(labels["container"], "kserve-container");
            }
        }
        let amd = &f[0].samples[1].0;
        assert_eq!(amd["gpu_id"], "1");
        assert_eq!(amd["hostname"], "kwok-node-0");
        let dcgm = &f[1].samples[0].0;
        assert_eq!(dcgm["gpu"], "0");
        assert_eq!(dcgm["device"], "nvidia0");
        assert_eq!(dcgm["Hostname"], "kwok-node-0");
        assert_ne!(f[1].samples[0].0["UUID"], f[1].samples[1].0["UUID"]);
    }
}
