//! README.md's "On your cluster" section, held to what it names: the
//! versions in its table are the ones `dev/control-plane/versions.env` pins,
//! its `helm install` renders with the real helm (built by `aim dev cluster
//! build`) into Deployments at the namespaces and names its `kubectl rollout
//! status` lines wait for, running the image its `dev/image --ref` pushes,
//! and its `kubectl` lines name the files, services, labels and ports that
//! exist. The parts that need KServe, KEDA and a GPU node run in the tier-3
//! tests and the demo; this test keeps the text a stranger copies in step
//! with them.

use std::collections::BTreeMap;
use std::process::Command;

use aim_devcluster::CacheDirs;

const SECTION: &str = "## On your cluster";

/// The section's text, from its heading to the next `## ` heading.
fn section() -> String {
    let readme = std::fs::read_to_string(aim_testkit::repo_path("README.md")).unwrap();
    let start = readme
        .find(SECTION)
        .unwrap_or_else(|| panic!("README.md has no {SECTION:?} section"));
    let rest = &readme[start + SECTION.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_string()
}

/// The logical lines of the fenced code blocks (a trailing `\` joins the
/// next line), with comments after ` #` cut off.
fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            continue;
        }
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                let full = std::mem::take(&mut pending);
                let command = match full.find(" #") {
                    Some(at) => full[..at].to_string(),
                    None => full,
                };
                out.push(command.trim().to_string());
            }
        }
    }
    out
}

fn words(line: &str) -> Vec<String> {
    shlex::split(line).unwrap_or_else(|| panic!("README command does not split: {line}"))
}

/// The one command starting with these words.
fn command_starting(lines: &[String], prefix: &[&str]) -> Vec<String> {
    let found: Vec<Vec<String>> = lines
        .iter()
        .map(|l| words(l))
        .filter(|w| w.len() >= prefix.len() && w.iter().zip(prefix).all(|(a, b)| a == b))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "README {SECTION:?} should show one `{}` command, shows {found:?}",
        prefix.join(" ")
    );
    found.into_iter().next().unwrap()
}

/// The value after `flag` (or `short`) in a word list.
fn flag(words: &[String], names: &[&str]) -> Option<String> {
    words
        .windows(2)
        .find(|w| names.contains(&w[0].as_str()))
        .map(|w| w[1].clone())
}

/// Every `--set KEY=VALUE` of a helm command.
fn sets(words: &[String]) -> BTreeMap<String, String> {
    words
        .windows(2)
        .filter(|w| w[0] == "--set")
        .flat_map(|w| w[1].split(',').map(str::to_string).collect::<Vec<_>>())
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("--set KEY=VALUE");
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn the_prerequisite_versions_are_the_pinned_ones() {
    let pins: BTreeMap<String, String> =
        std::fs::read_to_string(aim_testkit::repo_path("dev/control-plane/versions.env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            .collect();
    let text = section();
    let row = |what: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(&format!("| {what}")))
            .unwrap_or_else(|| panic!("README {SECTION:?}: no table row for {what}"))
            .to_string()
    };
    for (what, pin) in [
        ("KServe", "KSERVE_VERSION"),
        ("KEDA", "KEDA_VERSION"),
        ("the OpenTelemetry operator", "OTEL_OPERATOR_VERSION"),
        ("Gateway API", "GATEWAY_API_VERSION"),
    ] {
        let version = &pins[pin];
        assert!(
            row(what).contains(&format!("| {version} ")),
            "README {SECTION:?}: the {what} row should name {version} ({pin} in dev/control-plane/versions.env): {}",
            row(what)
        );
    }
    let kube = pins["KUBE_VERSION"].trim_start_matches('v');
    assert!(
        row("Kubernetes").contains(&format!("tested: {kube})")),
        "README {SECTION:?}: the Kubernetes row should name {kube}: {}",
        row("Kubernetes")
    );
    // The floor in the table is the chart's own.
    let chart = std::fs::read_to_string(aim_testkit::repo_path("deploy/chart/Chart.yaml")).unwrap();
    let chart: serde_yaml::Value = serde_yaml::from_str(&chart).unwrap();
    let floor = chart["kubeVersion"]
        .as_str()
        .unwrap()
        .trim_start_matches(">=")
        .trim_end_matches(".0-0");
    assert!(
        row("Kubernetes").contains(&format!("≥ {floor} ")),
        "README {SECTION:?}: the Kubernetes row should say ≥ {floor} (Chart.yaml kubeVersion): {}",
        row("Kubernetes")
    );
}

#[test]
fn the_helm_install_renders_what_the_rollout_lines_wait_for_with_the_pushed_image() {
    let lines = commands(&section());
    let image = command_starting(&lines, &["./dev/image"]);
    let pushed = flag(&image, &["--ref"]).expect("./dev/image --ref REF in the quick start");
    let install = command_starting(&lines, &["helm", "install"]);
    let values = sets(&install);
    let chart_image = format!(
        "{}:{}",
        values
            .get("image.repository")
            .expect("helm install --set image.repository"),
        values
            .get("image.tag")
            .expect("helm install --set image.tag")
    );
    assert_eq!(
        chart_image, pushed,
        "the image helm installs is the one ./dev/image --ref pushes"
    );

    // The same arguments, to `helm template`: what a cluster would be sent.
    let helm = CacheDirs::discover().unwrap().binary("helm");
    assert!(
        helm.exists(),
        "{} missing: run `aim dev cluster build`",
        helm.display()
    );
    let out = Command::new(&helm)
        .current_dir(aim_testkit::repo_path(""))
        .arg("template")
        .args(&install[2..])
        .args(["--kube-version", "1.34.4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm template {:?}: {}",
        &install[2..],
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_slice(&out.stdout)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect();
    let deployments: Vec<&serde_yaml::Value> = rendered
        .iter()
        .filter(|d| d["kind"] == "Deployment")
        .collect();
    assert!(!deployments.is_empty(), "the chart renders no Deployment");
    for d in &deployments {
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap()
        {
            assert_eq!(
                c["image"].as_str(),
                Some(chart_image.as_str()),
                "Deployment {:?} container {:?}",
                d["metadata"]["name"],
                c["name"]
            );
        }
    }

    // Every Deployment the chart renders is waited for, where it is.
    let waited: Vec<(String, String)> = lines
        .iter()
        .map(|l| words(l))
        .filter(|w| w.first().is_some_and(|c| c == "kubectl") && w.contains(&"rollout".into()))
        .map(|w| {
            let ns = flag(&w, &["-n", "--namespace"]).expect("kubectl -n NS rollout status");
            let target = w.last().unwrap();
            let name = target
                .strip_prefix("deployment/")
                .unwrap_or_else(|| panic!("rollout status of {target}: expected deployment/NAME"));
            (ns, name.to_string())
        })
        .collect();
    let mut rendered_names: Vec<(String, String)> = deployments
        .iter()
        .map(|d| {
            (
                d["metadata"]["namespace"].as_str().unwrap().to_string(),
                d["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    rendered_names.sort();
    let mut waited_sorted = waited.clone();
    waited_sorted.sort();
    assert_eq!(
        waited_sorted, rendered_names,
        "README's rollout status lines should wait for exactly the chart's Deployments (namespace, name)"
    );
}

#[test]
fn the_seed_service_names_labels_and_ports_are_the_ones_that_exist() {
    let lines = commands(&section());
    let apply = command_starting(&lines, &["kubectl", "-n", "ml-team", "apply"]);
    let file = flag(&apply, &["-f"]).expect("kubectl apply -f FILE");
    let namespace = flag(&apply, &["-n"]).unwrap();
    let path = aim_testkit::repo_path(&file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("README applies {file}, which cannot be read: {e}"));
    let services: Vec<String> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|d| d["kind"] == "AIMService")
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let [service] = services.as_slice() else {
        panic!("{file} should hold one AIMService, holds {services:?}");
    };

    let created = command_starting(&lines, &["kubectl", "create", "namespace"]);
    assert_eq!(
        created[3], namespace,
        "the namespace created is the one applied to"
    );

    let watched = command_starting(&lines, &["kubectl", "-n", "ml-team", "get", "aimsvc"]);
    assert_eq!(
        &watched[5], service,
        "the AIMService watched is the one {file} creates"
    );

    // The InferenceService is found by the label the operator sets, whose
    // key is aim's and whose value is the service's name.
    let lookup = lines
        .iter()
        .find(|l| l.starts_with("isvc=$("))
        .expect("a line that looks the InferenceService up: isvc=$(kubectl … get isvc -l …)");
    let inner = lookup
        .trim_start_matches("isvc=$(")
        .trim_end_matches(')')
        .to_string();
    let lookup = words(&inner);
    assert_eq!(flag(&lookup, &["-n"]).as_deref(), Some(namespace.as_str()));
    assert_eq!(
        flag(&lookup, &["-l"]),
        Some(format!(
            "{}={}",
            aim_rules::labels::SERVICE,
            aim_rules::naming::sanitize(service)
        )),
        "the lookup's selector is the label the operator puts on the InferenceService"
    );
    // The name it finds is hashed, so a literal `qwen-chat-predictor` would
    // name nothing.
    let isvc = aim_rules::naming::isvc_name(service, &namespace).unwrap();
    assert_ne!(isvc, *service);

    let forward = command_starting(&lines, &["kubectl", "-n", "ml-team", "port-forward"]);
    assert_eq!(
        forward[4], "service/$isvc-predictor",
        "KServe's predictor Service is <InferenceService>-predictor"
    );
    let (local, remote) = forward[5].split_once(':').expect("LOCAL:REMOTE");
    assert_eq!(remote, "80", "KServe's predictor Service serves on port 80");

    let load = command_starting(&lines, &["aim", "load"]);
    let url = flag(&load, &["--url"]).expect("aim load --url");
    assert_eq!(
        url,
        format!("http://127.0.0.1:{local}"),
        "aim load goes through the port-forward"
    );
}

/// The checks above read commands the way a shell would; a mangled line
/// must not pass them by accident.
#[test]
fn the_command_reader_joins_continuations_and_drops_comments() {
    let text =
        "intro\n```sh\nhelm install a b \\\n    --set x=1 # why\nkubectl get pods\n```\nnot code\n";
    assert_eq!(
        commands(text),
        vec!["helm install a b      --set x=1", "kubectl get pods"]
    );
    let w = words(&commands(text)[0]);
    assert_eq!(sets(&w)["x"], "1");
    assert_eq!(flag(&w, &["--set"]).as_deref(), Some("x=1"));
}
