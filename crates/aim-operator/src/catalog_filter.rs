//! AIMClusterModelSource filters, pure: what a filter asks
//! the registry for, which tags its version constraints keep, and the image
//! URI of a match. `crate::model_source` lists catalogs and tags and
//! creates the AIMClusterModels.

use aim_rules::labels::glob_match;

const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error(
        "filters[].image {image:?} is not an image reference or pattern ({reason}): use [registry/]repository[:tag], with * in the repository to match several"
    )]
    BadImage { image: String, reason: &'static str },
    #[error(
        "version constraint {constraint:?} does not parse ({detail}): write semver constraints such as \">=0.8.0, <1.0\" in filters[].versions or spec.versions"
    )]
    BadConstraint { constraint: String, detail: String },
}

/// What one filter asks of the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterTarget {
    /// An exact tag: one image, no network call.
    Exact {
        registry: String,
        repository: String,
        tag: String,
    },
    /// A repository without a tag: list its tags.
    Tags {
        registry: String,
        repository: String,
    },
    /// A repository pattern: list the catalog, then tags.
    Wildcard { registry: String, pattern: String },
}

/// Parses `filter.image`; `default_registry` is `spec.registry`.
pub fn parse_filter(image: &str, default_registry: &str) -> Result<FilterTarget, FilterError> {
    let bad = |reason| FilterError::BadImage {
        image: image.to_string(),
        reason,
    };
    let image = image.trim();
    if image.is_empty() || image.contains(char::is_whitespace) || image.contains('@') {
        return Err(bad("empty, whitespace or a digest"));
    }
    let default_registry = if default_registry.is_empty() {
        DOCKER_HUB
    } else {
        default_registry
    };
    let (registry, path) = match image.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest)
        }
        _ => (default_registry.to_string(), image),
    };
    if path.is_empty() || path.split('/').any(str::is_empty) {
        return Err(bad("empty repository segment"));
    }
    if path.contains('*') {
        if path.contains(':') {
            return Err(bad("a pattern cannot carry a tag"));
        }
        return Ok(FilterTarget::Wildcard {
            registry,
            pattern: path.to_string(),
        });
    }
    match path.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => {
            if tag.is_empty() || repo.is_empty() {
                return Err(bad("empty tag or repository"));
            }
            Ok(FilterTarget::Exact {
                registry,
                repository: repo.to_string(),
                tag: tag.to_string(),
            })
        }
        _ => Ok(FilterTarget::Tags {
            registry,
            repository: path.to_string(),
        }),
    }
}

/// Whether a repository matches a wildcard pattern (`*` within a segment)
/// and is not excluded (exact repository names).
pub fn repository_matches(pattern: &str, exclude: &[String], repository: &str) -> bool {
    glob_match(pattern, repository) && !exclude.iter().any(|e| e == repository)
}

/// A tag as a semver version: a leading `v` stripped, `x.y` padded to
/// `x.y.0`. `None` for tags that are not versions.
pub fn tag_version(tag: &str) -> Option<semver::Version> {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    let padded = match t
        .split(['-', '+'])
        .next()
        .map(|core| core.split('.').count())
    {
        Some(2) => {
            let (core, rest) = t.split_at(t.find(['-', '+']).unwrap_or(t.len()));
            format!("{core}.0{rest}")
        }
        _ => t.to_string(),
    };
    semver::Version::parse(&padded).ok()
}

/// Keeps the tags matching any of the filter's constraints, else of the
/// global ones. With no constraints every tag is kept; with constraints,
/// tags that are not versions are dropped.
pub fn keep_tags(
    tags: &[String],
    filter_versions: &[String],
    global_versions: &[String],
) -> Result<Vec<String>, FilterError> {
    let constraints = if filter_versions.is_empty() {
        global_versions
    } else {
        filter_versions
    };
    if constraints.is_empty() {
        return Ok(tags.to_vec());
    }
    let reqs = constraints
        .iter()
        .map(|c| {
            semver::VersionReq::parse(c.trim()).map_err(|e| FilterError::BadConstraint {
                constraint: c.clone(),
                detail: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(tags
        .iter()
        .filter(|t| tag_version(t).is_some_and(|v| reqs.iter().any(|r| r.matches(&v))))
        .cloned()
        .collect())
}

/// The image URI a model gets: `repo:tag` on Docker Hub, else
/// `registry/repo:tag`.
pub fn image_uri(registry: &str, repository: &str, tag: &str) -> String {
    if registry == DOCKER_HUB || registry.is_empty() {
        format!("{repository}:{tag}")
    } else {
        format!("{registry}/{repository}:{tag}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn filters_parse_into_targets() {
        assert_eq!(
            parse_filter("amdenterpriseai/aim-qwen:0.8.5", "docker.io").unwrap(),
            FilterTarget::Exact {
                registry: "docker.io".into(),
                repository: "amdenterpriseai/aim-qwen".into(),
                tag: "0.8.5".into()
            }
        );
        assert_eq!(
            parse_filter("127.0.0.1:5000/aim/llama", "docker.io").unwrap(),
            FilterTarget::Tags {
                registry: "127.0.0.1:5000".into(),
                repository: "aim/llama".into()
            }
        );
        assert_eq!(
            parse_filter("ghcr.io/silogen/aim-*", "docker.io").unwrap(),
            FilterTarget::Wildcard {
                registry: "ghcr.io".into(),
                pattern: "silogen/aim-*".into()
            }
        );
        assert_eq!(
            parse_filter("amdenterpriseai/*", "").unwrap(),
            FilterTarget::Wildcard {
                registry: "docker.io".into(),
                pattern: "amdenterpriseai/*".into()
            }
        );
        let e = parse_filter("a//b", "docker.io").unwrap_err().to_string();
        assert!(e.contains("filters[].image"), "{e}");
        assert!(parse_filter("a/*:1", "docker.io").is_err());
    }

    #[test]
    fn wildcards_and_excludes() {
        let ex = s(&["silogen/aim-base"]);
        assert!(repository_matches(
            "silogen/aim-*",
            &ex,
            "silogen/aim-llama"
        ));
        assert!(!repository_matches(
            "silogen/aim-*",
            &ex,
            "silogen/aim-base"
        ));
        assert!(!repository_matches("silogen/aim-*", &ex, "other/aim-llama"));
        assert!(!repository_matches("silogen/*", &[], "silogen/a/b"));
    }

    #[test]
    fn versions_strip_v_and_pad() {
        assert_eq!(tag_version("v1.2"), Some(semver::Version::new(1, 2, 0)));
        assert_eq!(tag_version("0.8.5"), Some(semver::Version::new(0, 8, 5)));
        assert!(tag_version("latest").is_none());
        assert_eq!(tag_version("1.2-rc1").unwrap().to_string(), "1.2.0-rc1");
    }

    #[test]
    fn constraints_select_tags() {
        let tags = s(&["0.7.0", "v0.8.1", "0.9", "latest", "1.0.0"]);
        assert_eq!(keep_tags(&tags, &[], &[]).unwrap(), tags);
        assert_eq!(
            keep_tags(&tags, &s(&[">=0.8.0, <1.0.0"]), &s(&["*"])).unwrap(),
            s(&["v0.8.1", "0.9"])
        );
        // The global constraints apply when the filter has none; OR'd.
        assert_eq!(
            keep_tags(&tags, &[], &s(&["=0.7.0", ">=1.0"])).unwrap(),
            s(&["0.7.0", "1.0.0"])
        );
        let e = keep_tags(&tags, &s(&[">>1"]), &[]).unwrap_err().to_string();
        assert!(e.contains(">>1") && e.contains("versions"), "{e}");
    }

    #[test]
    fn uris() {
        assert_eq!(image_uri("docker.io", "a/b", "1"), "a/b:1");
        assert_eq!(image_uri("ghcr.io", "a/b", "1"), "ghcr.io/a/b:1");
    }
}
