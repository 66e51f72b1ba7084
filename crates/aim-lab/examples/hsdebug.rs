use aim_engine::Profile;
use aim_lab::hindsight::{SearchConfig, search};
use aim_lab::sim::{SimConfig, run};
use aim_lab::trace::{load, scale_rate, slice};
fn main() {
    let base = load(std::path::Path::new("traces/azure-llm-2023-conv.csv"), None).unwrap();
    let arr = scale_rate(&slice(&base, 1800.0, 3600.0), 4.0, 1);
    let mut cfg = SimConfig::new(Profile::qwen3_32b_2xh100());
    cfg.warmup_s = 600.0;
    cfg.initial_replicas = 3;
    let plan = search(
        &cfg,
        &arr,
        SearchConfig {
            interval_s: 60.0,
            target: 0.99,
            min: 1,
            max: 16,
            initial: 3,
        },
        &mut |_| {},
    )
    .unwrap();
    println!("{:?}", plan.steps);
    let r = run(&cfg, &arr, &mut plan.controller(), &mut |_| {}).unwrap();
    for k in 0..31 {
        let (f, t) = (k as f64 * 60.0, (k + 1) as f64 * 60.0);
        let v: Vec<_> = r
            .requests
            .iter()
            .filter(|x| x.arrival >= f && x.arrival < t)
            .collect();
        let ok = v
            .iter()
            .filter(|x| x.finished && x.ttft.unwrap_or(99.0) <= 3.0 && x.tpot.unwrap_or(0.0) <= 0.1)
            .count();
        let ab = v.iter().filter(|x| x.aborted).count();
        println!(
            "{k} n={} ok={:.3} aborted={} spec={}",
            v.len(),
            ok as f64 / v.len().max(1) as f64,
            ab,
            plan.at(f)
        );
    }
}
