//! Runs the committed build script, embedded in the binary so that `aim dev
//! cluster up` works from any directory and always builds the pins this
//! binary was compiled with.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::{CacheDirs, Error};

const BUILD_SCRIPT: &str = include_str!("../../../dev/control-plane/build.sh");
const VERSIONS: &str = include_str!("../../../dev/control-plane/versions.env");

/// The pinned versions, as `NAME=value` pairs from `versions.env`.
pub fn pins() -> Vec<(String, String)> {
    VERSIONS
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.ends_with("_VERSION"))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

#[derive(Debug)]
pub struct BuildOutput {
    pub rebuilt: bool,
}

/// Builds whatever is missing or out of date. Cached components cost a
/// version check each. Build output is echoed to stderr as it arrives,
/// because a cold build takes tens of minutes and silence looks like a hang.
pub fn build_control_plane(cache: &CacheDirs) -> Result<BuildOutput, Error> {
    build_control_plane_with_env(cache, &[])
}

/// [`build_control_plane`] with extra environment for the build, e.g. a
/// different `GOPROXY` or module cache.
pub fn build_control_plane_with_env(
    cache: &CacheDirs,
    env: &[(&str, &str)],
) -> Result<BuildOutput, Error> {
    check_go_at("go")?;
    let scripts = cache.scripts();
    std::fs::create_dir_all(&scripts).map_err(|e| Error::io(&scripts, e))?;
    let script = scripts.join("build.sh");
    std::fs::write(&script, BUILD_SCRIPT).map_err(|e| Error::io(&script, e))?;
    let versions = scripts.join("versions.env");
    std::fs::write(&versions, VERSIONS).map_err(|e| Error::io(&versions, e))?;

    let mut child = Command::new("bash")
        .arg(&script)
        .arg("all")
        .env("AIM_CACHE_DIR", &cache.root)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(&script, e))?;
    // Merge both streams into one tail so a failure can be explained.
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let out_thread = std::thread::spawn(move || relay(BufReader::new(stdout)));
    let err_lines = relay(BufReader::new(stderr));
    let out_lines = out_thread.join().unwrap_or_default();
    let status = child.wait().map_err(|e| Error::io(&script, e))?;
    let rebuilt = err_lines.iter().any(|l| l.contains(": building"));
    if !status.success() {
        let mut all = out_lines;
        all.extend(err_lines);
        let tail = all[all.len().saturating_sub(25)..].join("\n");
        return Err(Error::BuildFailed {
            status: status
                .code()
                .map_or_else(|| "killed".into(), |c| c.to_string()),
            tail,
        });
    }
    Ok(BuildOutput { rebuilt })
}

fn relay(reader: impl BufRead) -> Vec<String> {
    let mut lines = Vec::new();
    for line in reader.lines().map_while(Result::ok) {
        eprintln!("{line}");
        lines.push(line);
    }
    lines
}

/// Checks that `go` (a command name or path) runs, so a missing or broken
/// toolchain is reported as such and not as a mysterious build failure.
pub fn check_go_at(go: &str) -> Result<(), Error> {
    match Command::new(go).arg("version").output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::GoMissing),
        Err(e) => Err(Error::GoBroken(e.to_string())),
        Ok(out) if !out.status.success() => Err(Error::GoBroken(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_cover_every_component() {
        let names: Vec<String> = pins().into_iter().map(|(k, _)| k).collect();
        for expected in [
            "KUBE_VERSION",
            "ETCD_VERSION",
            "KWOK_VERSION",
            "KSERVE_VERSION",
            "GATEWAY_API_VERSION",
            "KEDA_VERSION",
            "OTEL_OPERATOR_VERSION",
        ] {
            assert!(names.iter().any(|n| n == expected), "missing {expected}");
        }
        for (k, v) in pins() {
            assert!(v.starts_with('v'), "{k}={v} is not a module version");
        }
    }
}
