//! Starting and stopping the component processes.
//!
//! All components of a cluster share one process group, led by the first one
//! started. That lets `down` stop every one of them with a single signal even
//! when it runs in another process, long after `up` has exited, and keeps the
//! cluster alive when a test run is interrupted with Ctrl-C (the terminal
//! signals only its own foreground group).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::Error;

pub struct Spawned {
    pub pid: u32,
    pub log: PathBuf,
}

/// Starts `binary args…` with output appended to `log`, in process group
/// `group` (0 = lead a new group), with `env` added to the environment.
///
/// Joining a group is only allowed from the session that owns it. A cluster
/// started from one terminal and joined from another (KEDA added by a test
/// to a cluster `aim dev cluster up` started) gets a group of its own for
/// the newcomer; `down` signals every recorded pid as well as the group.
pub fn spawn(
    binary: &Path,
    args: &[String],
    env: &[(&str, String)],
    log: &Path,
    group: u32,
) -> Result<Spawned, Error> {
    match spawn_in(binary, args, env, log, group) {
        Err(e) if group != 0 && e.raw_os_error() == Some(nix::libc::EPERM) => {
            spawn_in(binary, args, env, log, 0)
        }
        other => other,
    }
    .map_err(|e| Error::io(binary, e))
    .map(|pid| Spawned {
        pid,
        log: log.to_path_buf(),
    })
}

fn spawn_in(
    binary: &Path,
    args: &[String],
    env: &[(&str, String)],
    log: &Path,
    group: u32,
) -> std::io::Result<u32> {
    let out = File::options().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let child = Command::new(binary)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(group as i32)
        .spawn()?;
    let pid = child.id();
    // The child is reaped by whoever stops the cluster (or by init once we
    // exit); holding the handle would only leave a zombie behind in tests.
    std::mem::forget(child);
    Ok(pid)
}

/// Whether `pid` still runs (and is not a zombie we failed to reap).
pub fn alive(pid: u32) -> bool {
    if kill(Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    // A zombie answers signal 0 but is gone for every practical purpose.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Reaps `pid` if it is our own exited child, so `alive` sees it gone.
pub fn reap(pid: u32) {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
}

/// Exit description of a child that died, for error messages.
pub fn exit_status(pid: u32) -> String {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => format!("exit code {code}"),
        Ok(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
        _ => "exited".into(),
    }
}

/// A recorded process: its pid, and what tells it from a later process
/// given the same pid.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub pid: u32,
    /// Its start time in clock ticks since boot (field 22 of
    /// `/proc/<pid>/stat`), fixed for a process's life; `None` for a state
    /// file written before it was recorded.
    pub start_ticks: Option<u64>,
    /// The component's name, which its command line contains: the check
    /// when no start time was recorded.
    pub name: String,
}

/// `pid`'s start time in clock ticks since boot, if it runs.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields after its closing parenthesis (field 3 onwards).
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `member.pid` is still the process that was recorded: a pid
/// the kernel gave to another process since must never be signalled.
pub fn is_same(member: &Member) -> bool {
    match member.start_ticks {
        Some(ticks) => start_ticks(member.pid) == Some(ticks),
        None => std::fs::read(format!("/proc/{}/cmdline", member.pid))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&member.name)),
    }
}

/// The process group of `pid`.
fn group_of(pid: u32) -> Option<u32> {
    nix::unistd::getpgid(Some(Pid::from_raw(pid as i32)))
        .ok()
        .map(|g| g.as_raw() as u32)
}

/// Sends SIGTERM to the group and to `members`, waits up to `grace` for
/// them to go, then SIGKILLs whatever is left. Only processes that are
/// still the ones recorded are signalled ([`is_same`]), and the group only
/// while one of them is in it: a recorded pid or group id the kernel has
/// reused since belongs to someone else. Group 0 (or 1) means "no group":
/// killpg(0) would signal the caller's own group.
///
/// It waits with blocking sleeps: from async code, call
/// [`stop_group_off_runtime`].
pub fn stop_group(group: u32, members: &[Member], grace: Duration) {
    let ours: Vec<u32> = members
        .iter()
        .filter(|m| {
            let same = is_same(m);
            if !same && alive(m.pid) {
                tracing::warn!(pid = m.pid, component = %m.name, "pid now belongs to another process; not signalling it");
            }
            same
        })
        .map(|m| m.pid)
        .collect();
    let pids = ours.as_slice();
    let pg = (group > 1)
        .then_some(group)
        .filter(|g| pids.iter().any(|&p| group_of(p) == Some(*g)))
        .map(|g| Pid::from_raw(g as i32));
    if let Some(pg) = pg {
        let _ = killpg(pg, Signal::SIGTERM);
    }
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        pids.iter().for_each(|&p| reap(p));
        if pids.iter().all(|&p| !alive(p)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(pg) = pg {
        let _ = killpg(pg, Signal::SIGKILL);
    }
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        pids.iter().for_each(|&p| reap(p));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`stop_group`] on the blocking pool, for async callers: its waits must
/// not hold a runtime thread.
pub async fn stop_group_off_runtime(group: u32, members: Vec<Member>, grace: Duration) {
    let _ = tokio::task::spawn_blocking(move || stop_group(group, &members, grace)).await;
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return "(no log)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(16 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = String::new();
    let _ = f.read_to_string(&mut buf);
    let all: Vec<&str> = buf.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether something already listens on 127.0.0.1:`port`.
pub fn port_in_use(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
}

/// Whether a TCP connection to 127.0.0.1:`port` succeeds.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_pid_is_not_the_recorded_process() {
        let me = std::process::id();
        let ticks = start_ticks(me).expect("this process has a start time");
        let recorded = Member {
            pid: me,
            start_ticks: Some(ticks),
            name: "anything".into(),
        };
        assert!(is_same(&recorded));
        // The same pid with another start time: a process that took the
        // pid over.
        let reused = Member {
            start_ticks: Some(ticks + 1),
            ..recorded.clone()
        };
        assert!(!is_same(&reused));
        // No start time recorded: the command line must name the component.
        let test_binary = std::env::args().next().unwrap();
        let name = Path::new(&test_binary)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(is_same(&Member {
            start_ticks: None,
            name,
            ..recorded.clone()
        }));
        assert!(!is_same(&Member {
            start_ticks: None,
            name: "kube-apiserver-that-is-not-here".into(),
            ..recorded
        }));
    }

    #[test]
    fn stopping_spares_a_process_whose_pid_was_reused() {
        // A child standing for an unrelated process that got a recorded pid.
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let stale = Member {
            pid,
            start_ticks: start_ticks(pid).map(|t| t + 1),
            name: "etcd".into(),
        };
        stop_group(pid, &[stale], Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "a process that is not the recorded one was signalled"
        );
        // The recorded process itself is stopped.
        let real = Member {
            pid,
            start_ticks: start_ticks(pid),
            name: "sleep".into(),
        };
        stop_group(0, &[real], Duration::from_secs(5));
        // stop_group reaps its own children, so it is gone, not a zombie.
        assert!(!alive(pid), "the recorded process is still running");
    }
}
