//! `hangar` on a terminal, as a user meets it: a real pseudo-terminal
//! (util-linux `script` runs the client as the session leader of a new pty,
//! and a ^C written to it becomes SIGINT from the terminal driver).
//! Live output, Ctrl-C that kills the job, a second Ctrl-C that leaves it
//! running, and aligned tables on a terminal but tabs into a pipe.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{FAST, Server, TOKEN};

/// A `hangar` command on a pty: its terminal output, line by line, with the
/// time each line arrived.
struct Tty {
    child: Child,
    input: ChildStdin,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Tty {
    fn spawn(s: &Server, args: &[&str]) -> Tty {
        Self::spawn_term(s, args, "dumb")
    }

    /// As [`Tty::spawn`] with `TERM` set to `term`.
    fn spawn_term(s: &Server, args: &[&str], term: &str) -> Tty {
        let bin = env!("CARGO_BIN_EXE_hangar");
        let cmd: Vec<String> = std::iter::once(bin).chain(args.iter().copied()).map(shell_quote).collect();
        // `exec`: the client itself is the pty's foreground process. Without
        // it dash (the /bin/sh `script` uses when SHELL is unset, as in CI)
        // stays as the parent, gets the same SIGINT and dies of it (130),
        // hiding the client's own exit code.
        let mut child = Command::new("script")
            .args(["-qfe", "-c", &format!("exec {}", cmd.join(" ")), "/dev/null"])
            .env("HANGAR_SERVER", &s.base)
            .env("HANGAR_USER", "alice")
            .env("HANGAR_TOKEN", TOKEN)
            .env("TERM", term)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("script (util-linux) runs the client on a pty");
        let input = child.stdin.take().expect("stdin");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line.trim_end_matches('\r').to_string())).is_err() {
                    break;
                }
            }
        });
        Tty { child, input, lines, seen: Vec::new() }
    }

    /// Wait for a line containing `what`; returns when it arrived.
    fn expect(&mut self, what: &str, within: Duration) -> Instant {
        if let Some((at, _)) = self.seen.iter().find(|(_, l)| l.contains(what)) {
            return *at;
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    let hit = line.contains(what);
                    self.seen.push((at, line));
                    if hit {
                        return at;
                    }
                }
                Err(_) => panic!("no line with '{what}' within {within:?}; the terminal showed:\n{}", self.text()),
            }
        }
    }

    fn text(&self) -> String {
        self.seen.iter().map(|(_, l)| format!("{l}\n")).collect()
    }

    fn ctrl_c(&mut self) {
        self.input.write_all(b"\x03").expect("write ^C");
        self.input.flush().expect("flush");
    }

    /// The client's exit code, and everything it printed.
    fn wait(mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                return (st.code(), self.text());
            }
            assert!(Instant::now() < deadline, "the client did not exit; it showed:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn job_status(s: &Server, task: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["status", task])
        .env("HANGAR_SERVER", &s.base)
        .env("HANGAR_USER", "alice")
        .env("HANGAR_TOKEN", TOKEN)
        .output()
        .expect("status");
    String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_live_and_ctrl_c_kills_the_job() {
    let s = Server::start(FAST).await;
    // Live: `start` shows while the job still runs, a second before `end`.
    let mut t = Tty::spawn(&s, &["run", "--code", "echo start; sleep 1.5; echo end"]);
    let start = t.expect("start", Duration::from_secs(20));
    let end = t.expect("end", Duration::from_secs(20));
    assert!(end.duration_since(start) >= Duration::from_millis(1200), "start came with end:\n{}", t.text());
    let (code, text) = t.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text, "start\nend\n", "quiet: only the program's output");

    // Ctrl-C: the job is killed, the client says so and exits 130.
    let mut t = Tty::spawn(&s, &["run", "--code", "echo started; sleep 30; echo never"]);
    t.expect("started", Duration::from_secs(20));
    let pressed = Instant::now();
    t.ctrl_c();
    t.expect("killing job 2", Duration::from_secs(5));
    let (code, text) = t.wait(Duration::from_secs(10));
    assert_eq!(code, Some(130), "{text}");
    assert!(text.contains("job 2 Cancelled") && !text.contains("never"), "{text}");
    assert!(pressed.elapsed() < Duration::from_secs(5), "the kill took {:?}", pressed.elapsed());
    assert_eq!(job_status(&s, "2"), "Cancelled");

    // A second Ctrl-C leaves the job running.
    let mut t = Tty::spawn(&s, &["run", "--code", "echo again; sleep 4; echo done"]);
    t.expect("again", Duration::from_secs(20));
    t.ctrl_c();
    t.expect("killing job 3", Duration::from_secs(5));
    t.ctrl_c();
    let (code, text) = t.wait(Duration::from_secs(10));
    assert_eq!(code, Some(130), "{text}");
    assert!(text.contains("job 3 left running"), "{text}");

    // linkis-cli too: Ctrl-C kills its job, as Linkis's CLI does.
    let code = "echo started; sleep 30";
    let args = ["linkis-cli", "-submitUser", "alice", "-engineType", "shell-1", "-codeType", "shell", "-code", code];
    let mut t = Tty::spawn(&s, &args);
    t.expect("runs task 4", Duration::from_secs(20));
    t.ctrl_c();
    t.expect("killing job 4", Duration::from_secs(5));
    let (code, text) = t.wait(Duration::from_secs(10));
    assert_eq!(code, Some(255), "{text}");
    assert!(text.contains("Execute Error"), "{text}");
    assert_eq!(job_status(&s, "4"), "Cancelled");
}

/// On a terminal that can move the cursor, `hangar run` keeps a status line
/// (spinner, state, time) while it waits and runs, clears it for each line
/// of output, and leaves none behind; on `TERM=dumb` (above) there is none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_line_shows_the_state_while_the_job_waits_and_runs() {
    let s = Server::start(FAST).await;
    let mut t = Tty::spawn_term(&s, &["run", "--code", "sleep 1; echo out; sleep 1"], "xterm");
    t.expect("out", Duration::from_secs(20));
    let (code, text) = t.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(" running ") && text.contains("\x1b[2K"), "no status line: {text:?}");
    // The output line itself is whole once the status line is cleared.
    let out = text.lines().find(|l| l.contains("out")).unwrap_or_default();
    assert!(out.rsplit("\x1b[2K").next() == Some("out"), "{out:?}");
    // Nothing of it is left after the end: the last thing written clears it.
    assert!(!text.trim_end().ends_with(" s"), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_aligned_on_a_terminal_and_tab_separated_in_a_pipe() {
    let s = Server::start(FAST).await;
    let code = r#"show_table([[1, "a"], [22, "bbb"]], columns=["n", "name"])"#;
    let t = Tty::spawn(&s, &["run", "-e", "python-python3", "--code", code]);
    let (exit, text) = t.wait(Duration::from_secs(30));
    assert_eq!(exit, Some(0), "{text}");
    assert_eq!(text, "n   name\n1   a\n22  bbb\n");

    let piped = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["result", "1"])
        .env("HANGAR_SERVER", &s.base)
        .env("HANGAR_USER", "alice")
        .env("HANGAR_TOKEN", TOKEN)
        .output()
        .expect("result");
    assert_eq!(String::from_utf8_lossy(&piped.stdout), "n\tname\n1\ta\n22\tbbb\n");

    let t = Tty::spawn(&s, &["jobs"]);
    let (exit, text) = t.wait(Duration::from_secs(10));
    assert_eq!(exit, Some(0), "{text}");
    let header = text.lines().next().unwrap_or("");
    assert!(header.starts_with("ID  STATUS   ENGINE") && text.contains("1   Succeed  python-python3"), "{text}");
}
