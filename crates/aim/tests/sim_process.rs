//! `aim sim` as a process among others: it ends with the process that
//! started it (`--parent-pid`), and an address it cannot listen on is
//! named with the process that holds it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AIM: &str = env!("CARGO_BIN_EXE_aim");

fn running(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its new parent) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_simulator_ends_when_the_process_that_started_it_is_killed() {
    // A shell stands for the pod runner: it starts the simulator with its
    // own pid as the parent, prints the simulator's pid and waits.
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "\"{AIM}\" sim --host 127.0.0.1 --port 0 --parent-pid $$ >/dev/null 2>&1 & echo $!; wait"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(shell.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let sim: u32 = line.trim().parse().expect("the simulator's pid");
    std::thread::sleep(Duration::from_millis(500));
    assert!(running(sim), "the simulator did not start");
    // SIGKILL: nothing of the shell runs to stop its children.
    shell.kill().unwrap();
    shell.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while running(sim) {
        assert!(
            Instant::now() < deadline,
            "the simulator outlived its parent by 15 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_parent_that_is_already_gone_stops_the_simulator_at_once() {
    // pid 1 is never this test's child process's parent here.
    let out = Command::new(AIM)
        .args([
            "sim",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--parent-pid",
            "1",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--parent-pid 1"), "{err}");
}

#[test]
fn an_address_in_use_is_named_with_the_process_holding_it() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let out = Command::new(AIM)
        .args(["sim", "--host", "127.0.0.1", "--port", &port.to_string()])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        err.contains(&format!("held by pid {}", std::process::id())),
        "{err}"
    );
    drop(held);
}
