use std::path::PathBuf;

use crate::Error;

/// Where built binaries, third-party CRDs and cluster state live. Always
/// outside the repository, so `git clean` never costs a 30-minute rebuild and
/// nothing built is ever committed.
#[derive(Debug, Clone)]
pub struct CacheDirs {
    pub root: PathBuf,
}

impl CacheDirs {
    /// `$AIM_CACHE_DIR`, else `$XDG_CACHE_HOME/aim`, else `~/.cache/aim`.
    pub fn discover() -> Result<Self, Error> {
        if let Some(dir) = std::env::var_os("AIM_CACHE_DIR").filter(|v| !v.is_empty()) {
            return Ok(Self { root: dir.into() });
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            return Ok(Self {
                root: PathBuf::from(dir).join("aim"),
            });
        }
        let home = std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .ok_or(Error::NoCacheDir)?;
        Ok(Self {
            root: PathBuf::from(home).join(".cache").join("aim"),
        })
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn bin(&self) -> PathBuf {
        self.root.join("bin")
    }

    pub fn binary(&self, name: &str) -> PathBuf {
        self.bin().join(name)
    }

    pub fn third_party_crds(&self) -> PathBuf {
        self.root.join("crds")
    }

    /// Upstream manifests the bed adapts (webhook registrations, KServe's
    /// config map), per project.
    pub fn manifests(&self, project: &str) -> PathBuf {
        self.root.join("manifests").join(project)
    }

    pub fn cluster(&self, name: &str) -> PathBuf {
        self.root.join("clusters").join(name)
    }

    pub fn scripts(&self) -> PathBuf {
        self.root.join("scripts")
    }
}
