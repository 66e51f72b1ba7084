//! Where a service's endpoints come from.
//!
//! A source publishes the whole current set on a watch channel; the gateway
//! compares each new set with what it has. An endpoint that disappears, or
//! is marked draining, gets no new requests, and its in-flight requests run
//! to their end. The static list (`--endpoint`) and the endpoints file
//! (`--endpoints-file`) are the sources of this milestone; the Kubernetes
//! source (EndpointSlices, where a terminating endpoint is a draining one,
//! or ready pods on the local bed) implements the same trait.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

/// An endpoint's address: `http://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointUrl {
    authority: http::uri::Authority,
}

impl EndpointUrl {
    /// Reads `http://HOST:PORT` (a trailing `/` is allowed; nothing else after it).
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: http::Uri = text
            .trim()
            .parse()
            .map_err(|e| format!("not a URL ({e}); use http://HOST:PORT"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "scheme `{other}` is not served; use http://HOST:PORT"
                ));
            }
            None => return Err("no scheme; use http://HOST:PORT".into()),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| "no host; use http://HOST:PORT".to_string())?;
        if authority.port_u16().is_none() {
            return Err("no port; use http://HOST:PORT".into());
        }
        if authority.as_str().contains('@') {
            return Err("user information is not allowed; use http://HOST:PORT".into());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err("a path or query is not allowed; use http://HOST:PORT".into());
        }
        Ok(EndpointUrl { authority })
    }

    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// The URI of `path_and_query` on this endpoint.
    pub fn uri(&self, path_and_query: &str) -> http::Uri {
        http::Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .expect("an authority and a request's own path make a URI")
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// One endpoint as a source reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub url: EndpointUrl,
    /// Listed but leaving: no new requests (a terminating pod).
    pub draining: bool,
}

/// A source of a service's endpoint set.
pub trait EndpointSource: Send + 'static {
    /// Starts following the source. The receiver holds the current set at
    /// once and every later one; a closed channel means the last set stays.
    fn start(self: Box<Self>) -> watch::Receiver<Vec<EndpointSpec>>;
}

/// `--endpoint`: a fixed set.
pub struct StaticSource(pub Vec<EndpointUrl>);

impl EndpointSource for StaticSource {
    fn start(self: Box<Self>) -> watch::Receiver<Vec<EndpointSpec>> {
        let set = self
            .0
            .into_iter()
            .map(|url| EndpointSpec {
                url,
                draining: false,
            })
            .collect();
        watch::channel(set).1
    }
}

/// An error in an endpoints file, naming the file and line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}:{line}: {why}")]
pub struct FileError {
    pub path: String,
    pub line: usize,
    pub why: String,
}

/// Reads an endpoints file: one `http://HOST:PORT` per line, optionally
/// followed by `draining`; blank lines and `#` comments are skipped. A URL
/// listed twice is an error (which line would win?).
pub fn parse_endpoints_file(path: &Path, text: &str) -> Result<Vec<EndpointSpec>, FileError> {
    let mut out: Vec<EndpointSpec> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let error = |why: String| FileError {
            path: path.display().to_string(),
            line: n + 1,
            why,
        };
        let mut words = line.split_whitespace();
        let url = EndpointUrl::parse(words.next().expect("a non-empty line has a word"))
            .map_err(error)?;
        let draining = match words.next() {
            None => false,
            Some("draining") => true,
            Some(other) => {
                return Err(error(format!(
                    "`{other}` after the URL; only `draining` may follow it"
                )));
            }
        };
        if let Some(extra) = words.next() {
            return Err(error(format!(
                "`{extra}`: one URL and an optional `draining` per line"
            )));
        }
        if out.iter().any(|e| e.url == url) {
            return Err(error(format!("{url} is listed twice")));
        }
        out.push(EndpointSpec { url, draining });
    }
    Ok(out)
}

/// `--endpoints-file`: the file re-read every `refresh`. A file that stops
/// reading or parsing keeps the last good set (and says so in the log).
pub struct FileSource {
    pub path: PathBuf,
    pub refresh: Duration,
    /// The first read, done at start so that a bad file stops the gateway.
    pub initial: Vec<EndpointSpec>,
}

impl FileSource {
    /// Reads the file once; the error names the file (and line).
    pub fn open(path: PathBuf, refresh: Duration) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("--endpoints-file {}: {e}", path.display()))?;
        let initial = parse_endpoints_file(&path, &text)
            .map_err(|e| anyhow::anyhow!("--endpoints-file {e}"))?;
        Ok(FileSource {
            path,
            refresh,
            initial,
        })
    }
}

impl EndpointSource for FileSource {
    fn start(self: Box<Self>) -> watch::Receiver<Vec<EndpointSpec>> {
        let (tx, rx) = watch::channel(self.initial);
        let (path, refresh) = (self.path, self.refresh);
        tokio::spawn(async move {
            let mut last_error = None;
            loop {
                tokio::time::sleep(refresh).await;
                if tx.is_closed() {
                    return;
                }
                let read = tokio::fs::read_to_string(&path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))
                    .and_then(|text| parse_endpoints_file(&path, &text).map_err(|e| e.to_string()));
                match read {
                    Ok(set) => {
                        last_error = None;
                        tx.send_if_modified(|current| {
                            let changed = *current != set;
                            if changed {
                                *current = set;
                            }
                            changed
                        });
                    }
                    Err(e) => {
                        if last_error.as_ref() != Some(&e) {
                            tracing::warn!(error = %e, "endpoints file unreadable; keeping the last good set");
                        }
                        last_error = Some(e);
                    }
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_host_and_port() {
        let u = EndpointUrl::parse("http://127.0.0.1:8000/").unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:8000");
        assert_eq!(
            u.uri("/v1/completions?x=1").to_string(),
            "http://127.0.0.1:8000/v1/completions?x=1"
        );
        for (bad, why) in [
            ("https://a:1", "scheme `https`"),
            ("127.0.0.1:8000", "use http://HOST:PORT"),
            ("http://a", "no port"),
            ("http://a:1/v1", "path"),
            ("http://u@a:1", "user information"),
            ("", "use http://HOST:PORT"),
        ] {
            let e = EndpointUrl::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_file_lists_urls_and_draining_ones() {
        let text = "# pool a\nhttp://127.0.0.1:8001\n\n  http://127.0.0.1:8002 draining # going\n";
        let set = parse_endpoints_file(Path::new("eps"), text).unwrap();
        assert_eq!(set.len(), 2);
        assert!(!set[0].draining);
        assert!(set[1].draining);
        assert_eq!(set[1].url.to_string(), "http://127.0.0.1:8002");
    }

    #[test]
    fn file_errors_name_the_line() {
        let p = Path::new("eps");
        let e = parse_endpoints_file(p, "http://a:1\nhttp://a:1\n").unwrap_err();
        assert_eq!((e.line, e.to_string().contains("listed twice")), (2, true));
        let e = parse_endpoints_file(p, "\nhttp://a:1 leaving\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "eps:2: `leaving` after the URL; only `draining` may follow it"
        );
        let e = parse_endpoints_file(p, "ftp://a:1").unwrap_err();
        assert!(e.to_string().starts_with("eps:1: scheme `ftp`"), "{e}");
        let e = parse_endpoints_file(p, "http://a:1 draining now").unwrap_err();
        assert!(e.to_string().contains("`now`"), "{e}");
    }
}
