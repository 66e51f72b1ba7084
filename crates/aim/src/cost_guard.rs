//! `aim pause` / `aim resume`: the cost guard, on one service.

use anyhow::Context as _;

#[derive(clap::Args, Debug)]
pub struct ServiceRef {
    /// The AIMService, as `name` or `namespace/name`.
    pub service: String,
    /// Namespace of the service when `service` has none (default: the
    /// kubeconfig context's namespace).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

pub fn run(target: ServiceRef, paused: bool) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(async move {
        let config = kube::Config::infer()
            .await
            .context("no Kubernetes client configuration: set KUBECONFIG (for the local cluster: eval \"$(aim dev cluster env)\")")?;
        let (namespace, name) = split(&target, &config.default_namespace)?;
        let client = kube::Client::try_from(config)?;
        let flip = aim_operator::cost_guard::set_paused(&client, &namespace, &name, paused).await?;
        let now = if paused { "paused" } else { "resumed" };
        let was = match flip.before.as_deref() {
            Some("true") => "it was paused",
            Some("false") => "it was running",
            _ => "it followed the runtime config's autoscaling.pausedByDefault",
        };
        println!("AIMService {namespace}/{name}: autoscaling {now} ({was})");
        Ok(())
    })
}

fn split(target: &ServiceRef, default_ns: &str) -> anyhow::Result<(String, String)> {
    match target.service.split_once('/') {
        Some((ns, name)) => {
            if let Some(flag) = &target.namespace
                && flag != ns
            {
                anyhow::bail!(
                    "service {} names namespace {ns} but --namespace says {flag}: give one of them",
                    target.service
                );
            }
            if ns.is_empty() || name.is_empty() {
                anyhow::bail!(
                    "service {:?} must be `name` or `namespace/name`",
                    target.service
                );
            }
            Ok((ns.to_string(), name.to_string()))
        }
        None if target.service.is_empty() => {
            anyhow::bail!("the service name is empty: give `name` or `namespace/name`")
        }
        None => Ok((
            target
                .namespace
                .clone()
                .unwrap_or_else(|| default_ns.to_string()),
            target.service.clone(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str, ns: Option<&str>) -> ServiceRef {
        ServiceRef {
            service: s.into(),
            namespace: ns.map(str::to_string),
        }
    }

    #[test]
    fn names_resolve_against_flag_then_context() {
        assert_eq!(
            split(&target("a/b", None), "default").unwrap(),
            ("a".into(), "b".into())
        );
        assert_eq!(
            split(&target("b", Some("x")), "default").unwrap(),
            ("x".into(), "b".into())
        );
        assert_eq!(
            split(&target("b", None), "ctx").unwrap(),
            ("ctx".into(), "b".into())
        );
    }

    #[test]
    fn contradictions_and_empty_parts_are_refused() {
        let e = split(&target("a/b", Some("c")), "d")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--namespace"), "{e}");
        assert!(split(&target("/b", None), "d").is_err());
        assert!(split(&target("a/", None), "d").is_err());
        assert!(split(&target("", None), "d").is_err());
    }
}
