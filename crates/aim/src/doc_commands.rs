//! Every `aim …` command shown in a fenced code block of README.md or
//! docs/*.md must parse with the real command line: a renamed flag or
//! subcommand fails here instead of in a reader's shell.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::Cli;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn documents() -> Vec<PathBuf> {
    let mut docs = vec![repo().join("README.md")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    more.sort();
    docs.extend(more);
    docs
}

/// The logical lines of a document's fenced code blocks (a trailing `\`
/// joins the next line), each with the line number it starts on.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            continue;
        }
        let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                joined.push_str(head);
                joined.push(' ');
                pending = Some((start, joined));
            }
            None => {
                joined.push_str(line);
                out.push((start, joined));
            }
        }
    }
    out
}

/// A shell variable set on a line of its own (`G="--seeds 5"`), which later
/// commands of the same document use.
fn assignment(line: &str) -> Option<(String, String)> {
    let words = shlex::split(line.trim())?;
    let [word] = words.as_slice() else {
        return None;
    };
    let (name, value) = word.split_once('=')?;
    let is_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    is_name.then(|| (name.to_string(), value.to_string()))
}

/// `$NAME` and `${NAME}` replaced by the values set earlier, longest name
/// first so that `$GG` is not read as `$G` and a `G`.
fn expand(line: &str, vars: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut line = line.to_string();
    for name in names {
        line = line
            .replace(&format!("${{{name}}}"), &vars[name])
            .replace(&format!("${name}"), &vars[name]);
    }
    line
}

/// The argument vector of the `aim` command on a line, if it has one: a
/// command whose first word is `aim`, a path ending in `/aim`, or
/// `./dev/demo` (which runs `aim dev demo …`), up to a comment or a shell
/// operator; inside `$( … )` when the line has that. Usage synopses count
/// too: `[--flag value]` is read as `--flag value`, `…` and unknown `$VAR`
/// are left out, and of `a|b` the first is taken.
fn aim_argv(line: &str) -> Option<Vec<String>> {
    // The command inside `$( … )`, when there is one.
    let line = match line.find("$(") {
        Some(at) => {
            let inner = &line[at + 2..];
            &inner[..inner.find(')').unwrap_or(inner.len())]
        }
        None => line,
    };
    let line = line.trim_start().trim_start_matches("$ ");
    let line = match line.find(" #") {
        Some(at) => &line[..at],
        None => line,
    };
    let words = shlex::split(line)?;
    let first = words.first()?;
    if !(first == "aim" || first.ends_with("/aim") || first == "./dev/demo") {
        return None;
    }
    let mut argv = vec!["aim".to_string()];
    if first == "./dev/demo" {
        argv.extend(["dev".to_string(), "demo".to_string()]);
    }
    for word in &words[1..] {
        if ["|", "||", "&&", ";", ">", ">>", "2>&1", "&"].contains(&word.as_str()) {
            break;
        }
        let word = word.trim_start_matches('[').trim_end_matches(']');
        if word.is_empty() || word == "…" || word == "..." || word.starts_with('$') {
            continue;
        }
        let word = word.split('|').next().unwrap_or(word);
        argv.push(word.to_string());
    }
    Some(argv)
}

#[test]
fn every_aim_command_in_the_docs_parses() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let name = doc
            .strip_prefix(repo())
            .unwrap_or(&doc)
            .display()
            .to_string();
        let mut vars = BTreeMap::new();
        for (line_no, line) in code_lines(&text) {
            if let Some((name, value)) = assignment(&line) {
                vars.insert(name, value);
                continue;
            }
            let Some(argv) = aim_argv(&expand(&line, &vars)) else {
                continue;
            };
            checked += 1;
            if let Err(e) = Cli::try_parse_from(&argv) {
                use clap::error::ErrorKind;
                if !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                    failures.push(format!(
                        "{name}:{line_no}: {}\n{}",
                        argv.join(" "),
                        e.render()
                    ));
                }
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} commands found: the extraction is broken"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_extraction_reads_the_shapes_the_docs_use() {
    let argv = |l: &str| aim_argv(l).map(|a| a.join(" "));
    assert_eq!(
        argv(r#"eval "$(~/.cache/aim/target/release/aim dev cluster env)"   # env"#).as_deref(),
        Some("aim dev cluster env")
    );
    assert_eq!(
        argv("aim sim bench          # capacity").as_deref(),
        Some("aim sim bench")
    );
    assert_eq!(
        argv("aim scaler [--listen 0.0.0.0:4317,0.0.0.0:4318] [--json] …").as_deref(),
        Some("aim scaler --listen 0.0.0.0:4317,0.0.0.0:4318 --json")
    );
    assert_eq!(
        argv("./dev/demo --rate 0s:0.7").as_deref(),
        Some("aim dev demo --rate 0s:0.7")
    );
    assert_eq!(argv("kubectl get pods"), None);
    assert_eq!(argv("helm install aim deploy/chart"), None);
    let lines = code_lines("text\n```sh\naim load \\\n  --url http://x\n```\naim not code\n");
    assert_eq!(lines, vec![(3, "aim load    --url http://x".to_string())]);
    let vars = BTreeMap::from([
        ("G".to_string(), "--seeds 5".to_string()),
        ("GG".to_string(), "x".to_string()),
    ]);
    assert_eq!(
        assignment(r#"G="--seeds 5""#),
        Some(("G".to_string(), "--seeds 5".to_string()))
    );
    assert_eq!(assignment("aim lab run"), None);
    assert_eq!(
        expand("aim lab compare $G --policies $GG,${G}", &vars),
        "aim lab compare --seeds 5 --policies x,--seeds 5"
    );
    // A wrong flag is caught.
    assert!(Cli::try_parse_from(["aim", "sim", "--no-such-flag"]).is_err());
}

/// A word of a command that names a file or directory of the repository.
fn repository_paths(line: &str) -> Vec<String> {
    const TOP: [&str; 7] = [
        "traces/",
        "examples/",
        "deploy/",
        "docs/",
        "dev/",
        "crates/",
        "fuzz/",
    ];
    let Some(words) = shlex::split(line) else {
        return Vec::new();
    };
    words
        .iter()
        // `--flag=path` names a path too.
        .map(|w| w.rsplit('=').next().unwrap_or(w))
        .map(|w| w.trim_start_matches("./"))
        .filter(|w| TOP.iter().any(|top| w.starts_with(top)))
        .filter(|w| !w.contains('*') && !w.contains('$'))
        .map(|w| w.trim_end_matches([',', ';', ')']).to_string())
        .collect()
}

/// Every file a command in the docs reads from the repository (a trace, a
/// manifest, the chart, a script) is in it, so the commands run from a
/// fresh clone.
#[test]
fn every_repository_path_in_the_docs_commands_exists() {
    let mut checked = 0;
    let mut missing = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let name = doc
            .strip_prefix(repo())
            .unwrap_or(&doc)
            .display()
            .to_string();
        for (line_no, line) in code_lines(&text) {
            for path in repository_paths(&line) {
                checked += 1;
                if !repo().join(&path).exists() {
                    missing.push(format!("{name}:{line_no}: {path}"));
                }
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} paths found: the extraction is broken"
    );
    assert!(
        missing.is_empty(),
        "the docs name files a fresh clone does not have:\n{}",
        missing.join("\n")
    );
}

#[test]
fn repository_paths_are_read_from_the_shapes_the_docs_use() {
    assert_eq!(
        repository_paths("aim lab run --trace traces/a.csv -f=examples/x.yaml # c"),
        vec!["traces/a.csv", "examples/x.yaml"]
    );
    assert_eq!(
        repository_paths("./dev/demo --rate 0s:1; helm install aim deploy/chart"),
        vec!["dev/demo", "deploy/chart"]
    );
    assert_eq!(
        repository_paths("ls lab-out/tables/*.md $HOME/x ~/.cache/aim"),
        Vec::<String>::new()
    );
}
