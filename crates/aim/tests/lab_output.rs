//! What `aim lab run` prints when its output is not a terminal, as in
//! `aim lab run … | tail` or a CI log: no redrawn progress frames, a plain
//! line per finished run unless `--quiet`, and with `-o json` scores a
//! script can read from stdout. The binary is the one cargo built for this
//! test; the workload is a short synthetic one so each run takes a moment.

use std::process::{Command, Output, Stdio};

const AIM: &str = env!("CARGO_BIN_EXE_aim");

fn lab_run(out_dir: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(AIM)
        .args(["lab", "run", "--policy", "queue", "--synthetic", "step"])
        .args(["--mean-rps", "2", "--duration", "600", "--warmup", "0"])
        .args(["--seeds", "2", "--no-hindsight", "--out"])
        .arg(out_dir)
        .args(extra)
        // Pipes, not a terminal: what a log or `| tail` sees.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "warn")
        .output()
        .expect("aim runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn through_a_pipe_progress_is_plain_lines_and_the_table_goes_to_stdout() {
    let dir = tempdir("plain");
    let out = lab_run(&dir, &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "aim lab run failed: {stderr}");
    assert!(
        !stderr.contains('\r'),
        "progress frames (carriage returns) through a pipe: {stderr:?}"
    );
    assert!(
        stderr.contains("done queue seed 1"),
        "one plain line per finished run expected on stderr: {stderr:?}"
    );
    assert!(
        stderr.contains(&format!("wrote {}", dir.display())),
        "the closing line names the output directory: {stderr:?}"
    );
    assert!(
        stdout.starts_with("## queue") && stdout.contains("| queue"),
        "stdout is the markdown table with the policy's row: {stdout}"
    );
    let table = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert_eq!(stdout.trim_end(), table.trim_end(), "stdout is table.md");
}

#[test]
fn json_output_with_quiet_is_the_scores_alone() {
    let dir = tempdir("json");
    let out = lab_run(&dir, &["-o", "json", "--quiet"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "aim lab run -o json failed: {stderr}");
    assert_eq!(stderr, "", "--quiet leaves stderr empty on success");
    let json: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("-o json stdout is not JSON ({e}): {stdout}"));
    let rows = json.as_array().expect("a list of policies");
    let queue = rows
        .iter()
        .find(|r| r["policy"] == "queue")
        .unwrap_or_else(|| panic!("no queue row in {json}"));
    let seeds = queue["seeds"].as_array().expect("per-seed scores");
    assert_eq!(seeds.len(), 2, "one score per seed (--seeds 2)");
    for s in seeds {
        let attainment = s["attainment"].as_f64().expect("attainment");
        assert!((0.0..=1.0).contains(&attainment), "attainment {attainment}");
        assert!(s["gpu_hours"].as_f64().expect("gpu_hours") > 0.0);
    }
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("scores.json")).unwrap()).unwrap();
    assert_eq!(json, file, "stdout is scores.json");
}

#[test]
fn an_unknown_output_format_names_the_flag_and_the_choices() {
    let dir = tempdir("bad");
    let out = lab_run(&dir, &["-o", "yaml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {stderr}");
    assert!(
        stderr.contains("--output") && stderr.contains("table") && stderr.contains("json"),
        "the error names --output and its values: {stderr}"
    );
    assert!(
        !dir.join("scores.json").exists(),
        "nothing runs on bad input"
    );
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("aim-lab-output-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
