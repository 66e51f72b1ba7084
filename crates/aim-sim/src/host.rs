//! What the simulator asks of the host (Linux): to end with the process
//! that started it, and who holds an address it cannot listen on.

use std::net::IpAddr;

/// Asks the kernel to send SIGTERM to this process when `parent` dies (the
/// simulator then drains and exits, as on any SIGTERM). If `parent` has
/// already gone, there is no one to outlive: the simulator stops at once.
///
/// The kernel sends the signal when the *thread* that started this process
/// ends. The pod runner starts simulators from tokio's worker threads,
/// which live as long as its runtime, so the two coincide there.
#[cfg(target_os = "linux")]
pub fn exit_with_parent(parent: u32) -> anyhow::Result<()> {
    use nix::sys::signal::Signal;
    nix::sys::prctl::set_pdeathsig(Some(Signal::SIGTERM))
        .map_err(|e| anyhow::anyhow!("--parent-pid {parent}: cannot ask to end with it: {e}"))?;
    // Checked after the request, so a parent that died in between is seen.
    let actual = nix::unistd::getppid().as_raw();
    anyhow::ensure!(
        u32::try_from(actual) == Ok(parent),
        "--parent-pid {parent}: that process is not this one's parent any more (now pid {actual}): it has exited, so there is nothing to serve for"
    );
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn exit_with_parent(parent: u32) -> anyhow::Result<()> {
    anyhow::bail!("--parent-pid {parent}: only supported on Linux")
}

/// The process listening on `ip:port` (or on the wildcard address at that
/// port), as `pid N (command line)`, from `/proc/net/tcp` and each
/// process's open sockets. None when it cannot be found (another network
/// namespace, no permission to read a process's descriptors, not Linux).
pub fn listener_of(ip: IpAddr, port: u16) -> Option<String> {
    let IpAddr::V4(v4) = ip else {
        return None;
    };
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = listening_inode(&table, v4, port)?;
    let socket = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == socket));
        if holds {
            let cmdline = std::fs::read(entry.path().join("cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .split('\0')
                        .filter(|a| !a.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            return Some(format!("pid {pid} ({cmdline})"));
        }
    }
    None
}

/// The inode of the socket listening on `ip:port` (or `0.0.0.0:port`) in
/// a `/proc/net/tcp` table. Addresses there are hexadecimal, the IPv4
/// address in the host's byte order (little-endian here), and state `0A` is
/// LISTEN.
fn listening_inode(table: &str, ip: std::net::Ipv4Addr, port: u16) -> Option<u64> {
    let wanted = [ip, std::net::Ipv4Addr::UNSPECIFIED];
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
        if *state != "0A" {
            return None;
        }
        let (addr, p) = local.split_once(':')?;
        let addr = u32::from_str_radix(addr, 16).ok()?;
        let p = u16::from_str_radix(p, 16).ok()?;
        let addr = std::net::Ipv4Addr::from(addr.swap_bytes());
        (p == port && wanted.contains(&addr))
            .then(|| inode.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_socket_is_found_by_address_and_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   \
             1: 0200007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 100 0 0 10 0\n   \
             2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0\n";
        let lo = std::net::Ipv4Addr::new(127, 0, 0, 1);
        assert_eq!(listening_inode(table, lo, 8080), Some(4242));
        // Established, not listening.
        assert_eq!(
            listening_inode(table, std::net::Ipv4Addr::new(127, 0, 0, 2), 8080),
            None
        );
        // A wildcard listener holds the port on every address.
        assert_eq!(
            listening_inode(table, std::net::Ipv4Addr::new(127, 0, 3, 4), 80),
            Some(4444)
        );
        assert_eq!(listening_inode(table, lo, 81), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_named_as_the_holder_of_its_socket() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let holder = listener_of("127.0.0.1".parse().unwrap(), port).expect("found");
        assert!(
            holder.starts_with(&format!("pid {} (", std::process::id())),
            "{holder}"
        );
    }
}
