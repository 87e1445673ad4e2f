//! Process identity and signalling by /proc, never by name.

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: skip past its last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a pid still names a live (non-zombie) process.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3)).is_some_and(|s| s != "Z"),
        Err(_) => false,
    }
}

/// Whether `pid` is still the process we started (not a reused pid).
pub(crate) fn same_process(pid: u32, start_time: u64) -> bool {
    pid_alive(pid) && (start_time == 0 || proc_start_time(pid) == Some(start_time))
}

pub(crate) fn signal_group(pid: u32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pid as i32), sig);
}

/// SIGKILL every process whose environment holds `key=ticket`; returns how many.
pub(crate) fn kill_by_ticket(key: &str, ticket: &str) -> usize {
    let needle = format!("{key}={ticket}");
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let mut killed = 0;
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
            && kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok()
        {
            killed += 1;
        }
    }
    killed
}

/// Whether the process was started with `--ticket-id <ticket>` (readable even
/// for a non-dumpable engine, whose environment only root may read).
pub(crate) fn cmdline_has_ticket(pid: u32, ticket: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
        args.windows(2).any(|w| w[0] == b"--ticket-id" && w[1] == ticket.as_bytes())
    })
}

/// Whether the process's environment holds `key=value`.
pub(crate) fn environ_has(pid: u32, key: &str, value: &str) -> bool {
    let needle = format!("{key}={value}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_identity() {
        let me = std::process::id();
        assert!(pid_alive(me));
        let st = proc_start_time(me).expect("start time");
        assert!(same_process(me, st));
        assert!(!same_process(me, st + 1));
    }
}
