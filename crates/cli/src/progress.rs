//! The status line `hangar run` keeps on a terminal while it follows a job:
//! a spinner, the job's state in words (queued, waiting for an engine,
//! running), its progress as a bar once the engine reports one, and the time
//! so far. Drawn on stderr only when stderr is a terminal that can move the
//! cursor (not `TERM=dumb`), cleared before every line of output or log and
//! redrawn after it, and gone when the job ends.

use std::io::{IsTerminal, Write};
use std::time::Instant;

const SPINNER: [char; 4] = ['|', '/', '-', '\\'];
const BAR: usize = 24;

pub(crate) struct StatusLine {
    enabled: bool,
    shown: bool,
    state: String,
    progress: Option<f64>,
    frame: usize,
    started: Instant,
}

/// What a job's status means to someone waiting for it.
fn state_words(status: &str) -> &str {
    match status {
        "Inited" => "queued",
        "Scheduled" => "asking for an engine",
        "WaitForRetry" => "waiting for an engine",
        "Running" => "running",
        other => other,
    }
}

impl StatusLine {
    pub(crate) fn new() -> Self {
        let term_ok = std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb");
        Self::with(std::io::stderr().is_terminal() && term_ok)
    }

    pub(crate) fn with(enabled: bool) -> Self {
        Self { enabled, shown: false, state: "queued".into(), progress: None, frame: 0, started: Instant::now() }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    pub(crate) fn status(&mut self, status: &str) {
        self.state = state_words(status).to_string();
        self.draw();
    }

    pub(crate) fn progress(&mut self, p: f64) {
        if p.is_finite() {
            self.progress = Some(p.clamp(0.0, 1.0));
        }
        self.draw();
    }

    /// The spinner moves on.
    pub(crate) fn tick(&mut self) {
        self.frame = self.frame.wrapping_add(1);
        self.draw();
    }

    /// Off the screen (before a line is printed, and at the end).
    pub(crate) fn clear(&mut self) {
        if self.shown {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K");
            let _ = e.flush();
            self.shown = false;
        }
    }

    /// Back on the screen after a line was printed.
    pub(crate) fn redraw(&mut self) {
        self.draw();
    }

    pub(crate) fn render(&self) -> String {
        let spin = SPINNER[self.frame % SPINNER.len()];
        let secs = self.started.elapsed().as_secs_f64();
        match self.progress {
            Some(p) if self.state == "running" => {
                let full = (p * BAR as f64).round() as usize;
                let bar: String = (0..BAR).map(|i| if i < full { '#' } else { '.' }).collect();
                format!("{spin} {} [{bar}] {:>3.0}%  {secs:.1} s", self.state, p * 100.0)
            }
            _ => format!("{spin} {}  {secs:.1} s", self.state),
        }
    }

    fn draw(&mut self) {
        if !self.enabled {
            return;
        }
        let line = self.render();
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r\x1b[2K{line}");
        let _ = e.flush();
        self.shown = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_the_state_in_words_and_draws_the_bar_while_running() {
        let mut s = StatusLine::with(false);
        s.status("WaitForRetry");
        assert!(s.render().contains("waiting for an engine"), "{}", s.render());
        s.status("Running");
        assert!(s.render().starts_with("| running"), "{}", s.render());
        s.progress(0.5);
        let r = s.render();
        assert!(r.contains("[############............]") && r.contains(" 50%"), "{r}");
        s.tick();
        assert!(s.render().starts_with('/'));
        s.progress(f64::NAN);
        assert!(s.render().contains(" 50%"), "a bad figure changes nothing");
    }
}
