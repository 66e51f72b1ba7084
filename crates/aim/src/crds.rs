//! `aim crds`: the generated CustomResourceDefinitions.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct CrdsArgs {
    /// Write one `<crd name>.yaml` per CRD into this directory (and remove
    /// stale ones) instead of printing them all to stdout.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

pub fn run(args: CrdsArgs) -> anyhow::Result<()> {
    let Some(dir) = args.out_dir else {
        print!("{}", aim_api::all_crds_yaml());
        return Ok(());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = aim_api::crd_files();
    // A renamed kind must not leave its old file behind to be applied.
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".aim.eai.amd.com.yaml") && !files.iter().any(|(f, _)| f == name) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for (name, yaml) in files {
        let path = dir.join(&name);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
