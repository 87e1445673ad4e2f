//! `hangar run` and following a job: what the task prints, live (stdout to
//! stdout, stderr to stderr); the job's log when asked for (`-v`; warnings
//! always); one message for a failure; the job's own exit code; and Ctrl-C
//! that kills the job (a second Ctrl-C leaves it running); on a terminal, a
//! status line with the job's state and progress (`progress.rs`).

use std::io::Write;
use std::time::Duration;

use anyhow::bail;
use hangar_protocol::logline::{self, Level};
use hangar_protocol::rpc::STDERR_TAIL;
use serde_json::Value;
use tokio::signal::unix::{SignalKind, signal};

use crate::{Client, JobSpec, print_results};

/// How a job is followed.
#[derive(Debug, Clone, Copy, Default)]
pub struct FollowMode {
    /// Every log line on stderr (otherwise only warnings).
    pub verbose: bool,
    /// Print the task's output as it is produced.
    pub live_output: bool,
    /// Ctrl-C kills the job (a second one leaves it running).
    pub ctrl_c_kills: bool,
}

/// How following a job ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub status: String,
    pub err_desc: Option<String>,
    pub exit_code: Option<i32>,
    /// Output lines were printed live.
    pub streamed: bool,
    /// Some stderr lines were printed live.
    pub stderr_shown: bool,
    /// Some live output was not shown (the stream fell behind).
    pub missed_output: bool,
    /// The user pressed Ctrl-C.
    pub interrupted: bool,
    /// The user pressed Ctrl-C twice: the job still runs.
    pub left_running: bool,
}

/// `hangar run`: submit, then follow. The exit code is 0 when the job
/// Succeeded, the program's own exit code when the engine has one (shell),
/// 130 after Ctrl-C, 1 otherwise.
pub async fn run(client: &Client, spec: &JobSpec, detach: bool, verbose: bool) -> anyhow::Result<i32> {
    if spec.code.trim().is_empty() {
        bail!("the code is empty: pass --code, --file or pipe it on standard input");
    }
    let (exec, task_id) = client.submit(spec).await?;
    if detach {
        eprintln!("submitted job {task_id} ({exec}); follow it with `hangar log -f {task_id}`");
        println!("{task_id}");
        return Ok(0);
    }
    if verbose {
        eprintln!("submitted job {task_id} ({exec})");
    }
    let mode = FollowMode { verbose, live_output: true, ctrl_c_kills: true };
    let outcome = follow(client, &exec, task_id, mode).await?;
    finish(client, task_id, &outcome).await
}

/// Follow a job until it ends (or the user leaves it running).
pub async fn follow(client: &Client, exec: &str, task_id: i64, mode: FollowMode) -> anyhow::Result<Outcome> {
    let mut printer = Printer {
        mode,
        next_log: 0,
        next_out: 0,
        outcome: Outcome::default(),
        line: crate::progress::StatusLine::new(),
    };
    let mut spin = tokio::time::interval(Duration::from_millis(150));
    let mut sigint = if mode.ctrl_c_kills { Some(signal(SignalKind::interrupt())?) } else { None };
    // Subscribe first, then print what was logged before: `next_log` is the
    // first line not printed yet, so nothing is missed or printed twice.
    let mut events = match client.open_events(exec).await {
        Ok(Some(ev)) => ev,
        Ok(None) | Err(_) => return follow_polling(client, exec, task_id, printer).await,
    };
    let (head, next) = client.log(exec, 0).await?;
    printer.log_text(&head);
    printer.next_log = next;
    loop {
        let next = tokio::select! {
            ev = events.next() => ev?,
            _ = spin.tick(), if printer.line.enabled() => {
                printer.line.tick();
                continue;
            }
            _ = interrupted(&mut sigint) => {
                printer.line.clear();
                if printer.outcome.interrupted {
                    eprintln!("\njob {task_id} left running; `hangar kill {task_id}` stops it");
                    printer.outcome.left_running = true;
                    return Ok(printer.outcome);
                }
                printer.outcome.interrupted = true;
                eprintln!("\nkilling job {task_id} (press Ctrl-C again to leave it running)");
                if let Err(e) = client.kill(exec).await {
                    eprintln!("cannot kill job {task_id}: {e:#}");
                }
                continue;
            }
        };
        let Some(v) = next else {
            printer.line.clear();
            return follow_polling(client, exec, task_id, printer).await;
        };
        match v["type"].as_str() {
            Some("status") => printer.line.status(v["status"].as_str().unwrap_or("")),
            Some("progress") => printer.line.progress(v["progress"].as_f64().unwrap_or(0.0)),
            Some("log") => {
                let from = v["fromLine"].as_u64().unwrap_or(0);
                if from > printer.next_log {
                    let (gap, to) = client.log(exec, printer.next_log).await?;
                    printer.log_text(&gap);
                    printer.next_log = to;
                }
                for (i, l) in v["lines"].as_array().into_iter().flatten().enumerate() {
                    if from + i as u64 == printer.next_log {
                        printer.log_line(l.as_str().unwrap_or(""));
                        printer.next_log += 1;
                    }
                }
            }
            Some("output") => printer.output(&v),
            Some("lagged") => printer.outcome.missed_output = true,
            Some("end") => {
                printer.line.clear();
                let (tail, _) = client.log(exec, printer.next_log).await?;
                printer.log_text(&tail);
                let o = &mut printer.outcome;
                o.status = v["status"].as_str().unwrap_or("").to_string();
                o.err_desc = v["errDesc"].as_str().map(str::to_string);
                o.exit_code = v["exitCode"].as_i64().and_then(|c| i32::try_from(c).ok());
                return Ok(printer.outcome);
            }
            _ => {}
        }
    }
}

async fn interrupted(sigint: &mut Option<tokio::signal::unix::Signal>) {
    match sigint {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

struct Printer {
    mode: FollowMode,
    next_log: u64,
    next_out: u64,
    outcome: Outcome,
    /// The status line on a terminal.
    line: crate::progress::StatusLine,
}

impl Printer {
    fn log_line(&mut self, line: &str) {
        if self.mode.verbose || logline::level_of(line) == Level::Warn {
            self.line.clear();
            eprintln!("{line}");
            self.line.redraw();
        }
    }

    fn log_text(&mut self, text: &str) {
        text.lines().for_each(|l| self.log_line(l));
    }

    /// An `output` event: lines from `fromLine`, each printed once, in order.
    fn output(&mut self, v: &Value) {
        if !self.mode.live_output {
            return;
        }
        let from = v["fromLine"].as_u64().unwrap_or(0);
        self.line.clear();
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
        for (i, l) in v["lines"].as_array().into_iter().flatten().enumerate() {
            let n = from + i as u64;
            if n < self.next_out {
                continue;
            }
            if n > self.next_out {
                self.outcome.missed_output = true;
            }
            self.next_out = n + 1;
            let text = l["line"].as_str().unwrap_or("");
            let written = if l["stream"] == "stderr" {
                self.outcome.stderr_shown = true;
                writeln!(err, "{text}")
            } else {
                writeln!(out, "{text}")
            };
            // A closed stdout (`| head`) ends the printing, not the job.
            if written.is_err() {
                break;
            }
            self.outcome.streamed = true;
        }
        let _ = out.flush();
        drop((out, err));
        self.line.redraw();
    }
}

/// Without the event stream: poll status and log, print results at the end.
async fn follow_polling(client: &Client, exec: &str, task_id: i64, mut p: Printer) -> anyhow::Result<Outcome> {
    let mut delay = Duration::from_millis(20);
    loop {
        let status = client.status(exec).await?;
        let (text, next) = client.log(exec, p.next_log).await?;
        p.log_text(&text);
        p.next_log = next;
        if matches!(status.as_str(), "Succeed" | "Failed" | "Cancelled" | "Timeout") {
            let (text, _) = client.log(exec, p.next_log).await?;
            p.log_text(&text);
            let job = client.job(task_id).await?;
            p.outcome.status = status;
            p.outcome.err_desc = job["errDesc"].as_str().map(str::to_string);
            p.outcome.exit_code =
                job.pointer("/metrics/exitCode").and_then(Value::as_i64).and_then(|c| i32::try_from(c).ok());
            return Ok(p.outcome);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// After a followed job: the results not shown yet, or the failure once;
/// returns the exit code.
async fn finish(client: &Client, task_id: i64, o: &Outcome) -> anyhow::Result<i32> {
    if o.left_running {
        return Ok(130);
    }
    if o.missed_output {
        eprintln!("(some output was not shown live; `hangar result {task_id}` has all of it)");
    }
    if o.status == "Succeed" {
        let mut sets = client.results(task_id).await?;
        // Text result sets are the output already printed live.
        if o.streamed || o.missed_output {
            sets.retain(|rs| rs.rs_type != "1");
        }
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
        print_results(&mut std::io::stdout().lock(), &sets, crate::Format::Table, terminal)?;
        return Ok(0);
    }
    let desc = o.err_desc.as_deref().unwrap_or("no reason recorded");
    // The stderr lines quoted in the reason were printed as they came.
    let desc = if o.stderr_shown { desc.split(STDERR_TAIL).next().unwrap_or(desc) } else { desc };
    eprintln!("job {task_id} {}: {desc}", o.status);
    Ok(match (o.interrupted, o.exit_code) {
        (true, _) => 130,
        (false, Some(c)) if (1..=255).contains(&c) => c,
        _ => 1,
    })
}
