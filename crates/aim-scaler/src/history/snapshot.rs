//! The history on disk (`--history-dir`): one file, replaced atomically.
//!
//! Layout, little-endian:
//!
//! ```text
//! magic      "aim-scaler-history" (18 bytes)
//! version    u32                   FORMAT_VERSION
//! length     u64                   bytes of body
//! checksum   u32                   CRC-32 of body
//! body       (version 1)
//!   saved_at   u64                 ns since the Unix epoch
//!   queries    u32
//!   per query:
//!     query      u32 length + UTF-8 (canonical text)
//!     operation  u8 (index in Operation::ALL)
//!     window     u64 ns
//!     quantile   u8 present + f64
//!     needs      u32 count, then (span u64 ns, last_used u64 ns) each
//!     recorded   u8 present + u64 step
//!     first      u64 step of the first value
//!     values     u32 count, then f64 each (NaN: no value at that step)
//! ```
//!
//! Values are the bulk and are stored as they are, 8 bytes a step; the
//! checksum tells a torn or damaged file from a valid one.

use super::{HistoryKey, Need, Ring, SavedTrack};
use crate::query::Operation;
use crate::store::Nanos;
use std::io::Write as _;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 18] = b"aim-scaler-history";
/// Bump when the body's layout changes, and keep reading the old one or
/// say in [`LoadError::Older`] why not.
pub const FORMAT_VERSION: u32 = 1;
pub const FILE_NAME: &str = "scaler-history.bin";
const HEADER_LEN: usize = MAGIC.len() + 4 + 8 + 4;

/// What a snapshot holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub saved_at: Nanos,
    pub tracks: Vec<SavedTrack>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot be read: {0}")]
    Unreadable(std::io::Error),
    #[error("is not an aim scaler history snapshot (its first bytes are not {:?})", std::str::from_utf8(MAGIC).unwrap_or_default())]
    NotASnapshot,
    #[error(
        "was written by a newer aim scaler (format {version}; this one reads format {FORMAT_VERSION})"
    )]
    Newer { version: u32 },
    #[error(
        "uses format {version}, which this aim scaler no longer reads (it reads format {FORMAT_VERSION})"
    )]
    Older { version: u32 },
    #[error("is damaged: {0}")]
    Corrupt(String),
}

impl LoadError {
    /// The suffix the file is renamed with to move it aside: a file this
    /// scaler cannot read is never overwritten by its next snapshot.
    pub fn aside_suffix(&self) -> String {
        match self {
            LoadError::Newer { version } | LoadError::Older { version } => {
                format!("v{version}")
            }
            _ => "corrupt".to_owned(),
        }
    }
}

pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let mut body = Vec::new();
    put_u64(&mut body, snapshot.saved_at);
    put_u32(&mut body, snapshot.tracks.len() as u32);
    for track in &snapshot.tracks {
        put_u32(&mut body, track.key.query.len() as u32);
        body.extend_from_slice(track.key.query.as_bytes());
        let op = Operation::ALL
            .iter()
            .position(|o| *o == track.key.operation)
            .unwrap_or(0);
        body.push(op as u8);
        put_u64(&mut body, track.key.window);
        match track.key.quantile() {
            Some(q) => {
                body.push(1);
                put_f64(&mut body, q);
            }
            None => {
                body.push(0);
                put_f64(&mut body, 0.0);
            }
        }
        put_u32(&mut body, track.needs.len() as u32);
        for need in &track.needs {
            put_u64(&mut body, need.span);
            put_u64(&mut body, need.last_used);
        }
        body.push(track.recorded_through.is_some() as u8);
        put_u64(&mut body, track.recorded_through.unwrap_or(0));
        let (first, values) = track.ring.parts();
        put_u64(&mut body, first);
        put_u32(&mut body, values.len() as u32);
        for value in values {
            put_f64(&mut body, value);
        }
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    put_u32(&mut out, FORMAT_VERSION);
    put_u64(&mut out, body.len() as u64);
    put_u32(&mut out, crc32(&body));
    out.extend_from_slice(&body);
    out
}

pub fn decode(bytes: &[u8]) -> Result<Snapshot, LoadError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(LoadError::NotASnapshot);
    }
    let mut header = Reader::new(&bytes[MAGIC.len()..], MAGIC.len());
    let version = header.u32()?;
    if version > FORMAT_VERSION {
        return Err(LoadError::Newer { version });
    }
    if version < FORMAT_VERSION {
        return Err(LoadError::Older { version });
    }
    let length = header.u64()?;
    let checksum = header.u32()?;
    let body = &bytes[HEADER_LEN.min(bytes.len())..];
    if body.len() as u64 != length {
        return Err(LoadError::Corrupt(format!(
            "the header announces {length} bytes of data but {} follow (a write cut short?)",
            body.len()
        )));
    }
    let actual = crc32(body);
    if actual != checksum {
        return Err(LoadError::Corrupt(format!(
            "checksum mismatch (stored {checksum:#010x}, computed {actual:#010x})"
        )));
    }
    decode_v1(&mut Reader::new(body, HEADER_LEN))
}

fn decode_v1(r: &mut Reader<'_>) -> Result<Snapshot, LoadError> {
    let saved_at = r.u64()?;
    let count = r.u32()?;
    let mut tracks = Vec::new();
    for _ in 0..count {
        let length = r.u32()? as usize;
        let query = std::str::from_utf8(r.bytes(length)?)
            .map_err(|_| r.corrupt("a query is not UTF-8"))?
            .to_owned();
        let op = r.u8()? as usize;
        let operation = *Operation::ALL
            .get(op)
            .ok_or_else(|| r.corrupt(&format!("unknown operation code {op}")))?;
        let window = r.u64()?;
        let has_quantile = r.u8()? != 0;
        let quantile = r.f64()?;
        let needs_count = r.u32()? as usize;
        r.expect_room(needs_count, 16)?;
        let mut needs = Vec::with_capacity(needs_count);
        for _ in 0..needs_count {
            needs.push(Need {
                span: r.u64()?,
                last_used: r.u64()?,
            });
        }
        let has_recorded = r.u8()? != 0;
        let recorded = r.u64()?;
        let first = r.u64()?;
        let values_count = r.u32()? as usize;
        r.expect_room(values_count, 8)?;
        let mut values = Vec::with_capacity(values_count);
        for _ in 0..values_count {
            values.push(r.f64()?);
        }
        let mut key = HistoryKey {
            query,
            operation,
            window,
            quantile_bits: None,
        };
        if has_quantile {
            key.quantile_bits = Some(quantile.to_bits());
        }
        tracks.push(SavedTrack {
            key,
            needs,
            recorded_through: has_recorded.then_some(recorded),
            ring: Ring::from_parts(first, values),
        });
    }
    if r.remaining() != 0 {
        return Err(r.corrupt(&format!("{} unexpected bytes at the end", r.remaining())));
    }
    Ok(Snapshot { saved_at, tracks })
}

/// The snapshot's path in `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes `bytes` as the snapshot in `dir`: to a temporary file, flushed
/// to disk, then renamed over the old one, so a crash leaves either the
/// old snapshot or the new one, never half of one.
pub fn write_atomically(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let target = path_in(dir);
    let temporary = dir.join(format!("{FILE_NAME}.tmp"));
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &target)?;
    // Makes the rename itself durable; not every filesystem allows
    // opening a directory, and the data is already safe without it.
    if let Ok(directory) = std::fs::File::open(dir) {
        let _ = directory.sync_all();
    }
    Ok(())
}

/// What reading the snapshot at start found.
#[derive(Debug)]
pub enum Loaded {
    /// No snapshot yet: a first start.
    Missing,
    Read(Snapshot),
    /// The file could not be used; it was renamed to `moved_to` (when the
    /// rename worked) and the scaler starts with an empty history.
    Rejected {
        path: PathBuf,
        error: LoadError,
        moved_to: Option<PathBuf>,
    },
}

/// Reads the snapshot in `dir`. A file that cannot be used is moved aside
/// with a warning naming it and what to do; it never stops the scaler.
pub fn load(dir: &Path) -> Loaded {
    let path = path_in(dir);
    let result = match std::fs::read(&path) {
        Ok(bytes) => decode(&bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => Err(LoadError::Unreadable(e)),
    };
    let error = match result {
        Ok(snapshot) => return Loaded::Read(snapshot),
        Err(error) => error,
    };
    let aside = path.with_file_name(format!("{FILE_NAME}.{}", error.aside_suffix()));
    let moved_to = match std::fs::rename(&path, &aside) {
        Ok(()) => Some(aside),
        Err(rename_error) => {
            tracing::warn!(file = %path.display(), error = %rename_error, "could not move the unusable history snapshot aside; the next snapshot will replace it");
            None
        }
    };
    let advice = match &error {
        LoadError::Newer { .. } => {
            "run the newer scaler again to use it, or delete it to silence this warning"
        }
        LoadError::Unreadable(_) => {
            "check the permissions of --history-dir (the scaler's user must read and write it)"
        }
        _ => {
            "it is kept for inspection and may be deleted; history starts again from the raw store"
        }
    };
    tracing::warn!(
        file = %path.display(),
        moved_to = %moved_to.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(not moved)".into()),
        "history snapshot {error}; starting with an empty history: {advice}"
    );
    Loaded::Rejected {
        path,
        error,
        moved_to,
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_f64(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

/// Reads fields front to back; every error names the byte offset in the
/// file.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Offset of `bytes[0]` in the file.
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], base: usize) -> Self {
        Reader { bytes, at: 0, base }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn corrupt(&self, what: &str) -> LoadError {
        LoadError::Corrupt(format!("{what} at byte {}", self.base + self.at))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], LoadError> {
        if self.remaining() < n {
            return Err(self.corrupt("the data ends early"));
        }
        let slice = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(slice)
    }

    /// A count read from the file must fit in what is left, so a damaged
    /// count cannot ask for a huge allocation.
    fn expect_room(&self, count: usize, each: usize) -> Result<(), LoadError> {
        if count.saturating_mul(each) > self.remaining() {
            return Err(self.corrupt(&format!(
                "a count of {count} entries does not fit in the {} bytes left",
                self.remaining()
            )));
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, LoadError> {
        Ok(self.bytes(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(
            self.bytes(4)?.try_into().unwrap_or_default(),
        ))
    }

    fn u64(&mut self) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(
            self.bytes(8)?.try_into().unwrap_or_default(),
        ))
    }

    fn f64(&mut self) -> Result<f64, LoadError> {
        Ok(f64::from_le_bytes(
            self.bytes(8)?.try_into().unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::parse_query;

    fn sample() -> Snapshot {
        let query = parse_query(r#"sum(vllm:request_success_total{deployment="d"})"#).unwrap();
        let mut ring = Ring::new();
        ring.set(1000, 1.5, 100);
        ring.set(1003, 2.5, 100);
        let histogram = parse_query("histogram_quantile(0.9, sum(ttft))").unwrap();
        Snapshot {
            saved_at: 1_700_000_000_000_000_000,
            tracks: vec![
                SavedTrack {
                    key: HistoryKey::new(&query, Operation::Rate, 60_000_000_000, None),
                    needs: vec![Need {
                        span: 86_460_000_000_000,
                        last_used: 1_699_999_990_000_000_000,
                    }],
                    recorded_through: Some(1004),
                    ring,
                },
                SavedTrack {
                    key: HistoryKey::new(&histogram, Operation::LastOne, 1, Some(0.5)),
                    needs: vec![],
                    recorded_through: None,
                    ring: Ring::new(),
                },
            ],
        }
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let snapshot = sample();
        let bytes = encode(&snapshot);
        assert_eq!(decode(&bytes).unwrap(), snapshot);
        // 8 bytes per step slot (1000..=1003, holes included).
        let (_, values) = snapshot.tracks[0].ring.parts();
        assert_eq!(values.len(), 4);
    }

    #[test]
    fn damaged_files_are_told_apart_from_valid_ones() {
        let bytes = encode(&sample());
        // A flipped bit anywhere in the data.
        for at in [HEADER_LEN, HEADER_LEN + 40, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            let err = decode(&damaged).unwrap_err();
            assert!(
                matches!(&err, LoadError::Corrupt(m) if m.contains("checksum")),
                "byte {at}: {err}"
            );
        }
        // A write cut short.
        let err = decode(&bytes[..bytes.len() - 7]).unwrap_err();
        assert!(err.to_string().contains("a write cut short"), "{err}");
        let err = decode(&bytes[..MAGIC.len() + 2]).unwrap_err();
        assert!(err.to_string().contains("ends early"), "{err}");
        // Not a snapshot at all.
        let err = decode(b"{\"queries\": []}").unwrap_err();
        assert!(matches!(err, LoadError::NotASnapshot), "{err}");
    }

    #[test]
    fn other_format_versions_are_named_not_misread() {
        let mut bytes = encode(&sample());
        bytes[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&2u32.to_le_bytes());
        let err = decode(&bytes).unwrap_err();
        assert!(matches!(err, LoadError::Newer { version: 2 }), "{err}");
        assert!(
            err.to_string()
                .contains("written by a newer aim scaler (format 2; this one reads format 1)"),
            "{err}"
        );
        assert_eq!(err.aside_suffix(), "v2");
        bytes[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&0u32.to_le_bytes());
        let err = decode(&bytes).unwrap_err();
        assert!(matches!(err, LoadError::Older { version: 0 }), "{err}");
    }

    #[test]
    fn writing_replaces_the_file_and_an_unusable_one_is_moved_aside() {
        let dir = std::env::temp_dir().join(format!("aim-history-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(load(&dir), Loaded::Missing));
        write_atomically(&dir, &encode(&sample())).unwrap();
        write_atomically(&dir, &encode(&sample())).unwrap();
        assert!(!dir.join(format!("{FILE_NAME}.tmp")).exists());
        match load(&dir) {
            Loaded::Read(snapshot) => assert_eq!(snapshot, sample()),
            other => panic!("{other:?}"),
        }
        std::fs::write(path_in(&dir), b"garbage").unwrap();
        match load(&dir) {
            Loaded::Rejected {
                error: LoadError::NotASnapshot,
                moved_to: Some(to),
                ..
            } => assert_eq!(to, dir.join(format!("{FILE_NAME}.corrupt"))),
            other => panic!("{other:?}"),
        }
        assert!(!path_in(&dir).exists());
        assert_eq!(
            std::fs::read(dir.join(format!("{FILE_NAME}.corrupt"))).unwrap(),
            b"garbage"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
