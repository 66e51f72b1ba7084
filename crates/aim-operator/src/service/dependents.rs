//! Which services an object change concerns. A watch event on a model,
//! template, runtime config or cache re-runs exactly the services that
//! resolve against it, instead of every service in the namespace: with
//! hundreds of services the difference is quadratic.

use aim_api::AIMService;
use kube::ResourceExt;

/// An object a service may resolve against.
#[derive(Clone, Copy, Debug)]
pub enum Changed<'a> {
    /// `namespace` is None for an AIMClusterModel.
    Model {
        namespace: Option<&'a str>,
        name: &'a str,
        image: &'a str,
        /// The `aim.eai.amd.com/service` label of a custom model.
        service: Option<&'a str>,
    },
    /// `namespace` is None for an AIMClusterServiceTemplate.
    Template {
        namespace: Option<&'a str>,
        name: &'a str,
        model_name: &'a str,
    },
    /// `namespace` is None for an AIMClusterRuntimeConfig.
    RuntimeConfig {
        namespace: Option<&'a str>,
        name: &'a str,
    },
    Cache {
        namespace: &'a str,
        template_name: &'a str,
    },
}

fn in_scope(svc: &AIMService, namespace: Option<&str>) -> bool {
    namespace.is_none() || svc.namespace().as_deref() == namespace
}

pub fn depends_on(svc: &AIMService, changed: &Changed<'_>) -> bool {
    let spec = &svc.spec;
    let status = svc.status.as_ref();
    let resolved_model = status
        .and_then(|s| s.resolved_model.as_ref())
        .and_then(|r| r.name.as_deref());
    let resolved_template = status
        .and_then(|s| s.resolved_template.as_ref())
        .and_then(|r| r.name.as_deref());
    match *changed {
        Changed::Model {
            namespace,
            name,
            image,
            service,
        } => {
            in_scope(svc, namespace)
                && (spec.model.name.as_deref().map(str::trim) == Some(name)
                    || spec.model.image.as_deref().map(str::trim) == Some(image)
                    || spec
                        .model
                        .custom
                        .as_ref()
                        .is_some_and(|c| c.base_image == image)
                    || resolved_model == Some(name)
                    || service == Some(svc.name_any().as_str()))
        }
        Changed::Template {
            namespace,
            name,
            model_name,
        } => {
            let explicit = spec.template.as_ref().and_then(|t| t.name.as_deref());
            in_scope(svc, namespace)
                && match explicit {
                    // The derived template's name starts with its base's.
                    Some(base) => {
                        name == base
                            || name.starts_with(&format!("{base}-ovr"))
                            || resolved_template == Some(name)
                    }
                    // Auto-selection: any template of the service's model
                    // may change the choice (AIM Engine only wakes services that name
                    // the template, so auto-selecting ones miss new templates).
                    None => {
                        spec.model.name.as_deref() == Some(model_name)
                            || resolved_model == Some(model_name)
                            || resolved_template == Some(name)
                    }
                }
        }
        Changed::RuntimeConfig { namespace, name } => {
            let wanted = spec
                .runtime_config_name
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or("default");
            in_scope(svc, namespace) && wanted == name
        }
        Changed::Cache {
            namespace,
            template_name,
        } => {
            svc.namespace().as_deref() == Some(namespace)
                && resolved_template == Some(template_name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> AIMService {
        let mut s: AIMService = serde_yaml::from_str(yaml).unwrap();
        s.metadata.namespace = Some("a".into());
        s
    }

    const HEAD: &str =
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: s}\n";

    #[test]
    fn models_match_by_name_image_and_scope() {
        let by_name = svc(&format!("{HEAD}spec:\n  model: {{name: m}}\n"));
        let model = |ns, name, image| Changed::Model {
            namespace: ns,
            name,
            image,
            service: None,
        };
        assert!(depends_on(&by_name, &model(Some("a"), "m", "x")));
        assert!(
            depends_on(&by_name, &model(None, "m", "x")),
            "a cluster model of that name"
        );
        assert!(
            !depends_on(&by_name, &model(Some("b"), "m", "x")),
            "another namespace"
        );
        assert!(!depends_on(&by_name, &model(Some("a"), "other", "x")));
        let by_image = svc(&format!("{HEAD}spec:\n  model: {{image: repo/img:1}}\n"));
        assert!(depends_on(
            &by_image,
            &model(Some("a"), "anything", "repo/img:1")
        ));
        assert!(!depends_on(
            &by_image,
            &model(Some("a"), "anything", "repo/img:2")
        ));
    }

    #[test]
    fn auto_selecting_services_hear_about_every_template_of_their_model() {
        let auto = svc(&format!("{HEAD}spec:\n  model: {{name: m}}\n"));
        let t = |name, model_name| Changed::Template {
            namespace: Some("a"),
            name,
            model_name,
        };
        assert!(depends_on(&auto, &t("new-template", "m")));
        assert!(!depends_on(&auto, &t("new-template", "other-model")));
        let explicit = svc(&format!(
            "{HEAD}spec:\n  model: {{name: m}}\n  template: {{name: base}}\n"
        ));
        assert!(depends_on(&explicit, &t("base", "m")));
        assert!(
            depends_on(&explicit, &t("base-ovr-fp16-1a2b", "m")),
            "its derived template"
        );
        assert!(!depends_on(&explicit, &t("other", "m")));
    }

    #[test]
    fn runtime_configs_match_by_effective_name() {
        let default = svc(&format!("{HEAD}spec:\n  model: {{name: m}}\n"));
        let named = svc(&format!(
            "{HEAD}spec:\n  model: {{name: m}}\n  runtimeConfigName: team\n"
        ));
        let rc = |ns, name| Changed::RuntimeConfig {
            namespace: ns,
            name,
        };
        assert!(depends_on(&default, &rc(None, "default")));
        assert!(!depends_on(&default, &rc(None, "team")));
        assert!(depends_on(&named, &rc(Some("a"), "team")));
        assert!(!depends_on(&named, &rc(Some("b"), "team")));
    }
}
