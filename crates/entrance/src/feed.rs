//! What `/entrance/{execID}/events` subscribers of one job see: status, log,
//! progress, result-set and end events, and the task's output lines live.
//!
//! Output is numbered from 0 in the order it was printed, and the first
//! [`REPLAY_BYTES`] of it are kept, so a client that subscribes just after
//! submitting (the usual case) still sees the lines printed before it came.

use std::sync::{Arc, Mutex};

use hangar_protocol::rpc::OutputLine;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::lock;

/// Output kept for late subscribers: enough for the moment between a
/// submit and the client's subscription, small enough for thousands of
/// running jobs (the rest is in the result set and the log).
pub(crate) const REPLAY_BYTES: usize = 64 << 10;

pub(crate) type Feed = Arc<JobFeed>;

pub(crate) struct JobFeed {
    tx: broadcast::Sender<Value>,
    output: Mutex<Replay>,
}

#[derive(Default)]
struct Replay {
    kept: Vec<OutputLine>,
    bytes: usize,
    total: u64,
}

impl JobFeed {
    pub(crate) fn new() -> Feed {
        Arc::new(Self { tx: broadcast::channel(1024).0, output: Mutex::new(Replay::default()) })
    }

    /// Send an event to the current subscribers (none is fine).
    pub(crate) fn send(&self, event: Value) {
        let _ = self.tx.send(event);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Value> {
        self.tx.subscribe()
    }

    /// Lines the task printed: numbered, kept while the replay has room, sent.
    pub(crate) fn output(&self, lines: Vec<OutputLine>) {
        let mut r = lock(&self.output);
        let from = r.total;
        r.total += lines.len() as u64;
        if r.kept.len() as u64 == from {
            for l in &lines {
                if r.bytes + l.line.len() > REPLAY_BYTES {
                    break;
                }
                r.bytes += l.line.len();
                r.kept.push(l.clone());
            }
        }
        // Sent under the lock: a replay taken after this send holds the lines.
        // Nobody following (the usual case for API clients): nothing to build.
        if self.tx.receiver_count() > 0 {
            self.send(json!({"type": "output", "fromLine": from, "lines": lines}));
        }
    }

    /// The output printed so far that is kept, as one `output` event from line 0.
    pub(crate) fn replay(&self) -> Option<Value> {
        let r = lock(&self.output);
        (!r.kept.is_empty()).then(|| json!({"type": "output", "fromLine": 0, "lines": r.kept}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_protocol::rpc::OutputStream;

    fn out(s: &str) -> OutputLine {
        OutputLine { stream: OutputStream::Stdout, line: s.into() }
    }

    #[test]
    fn late_subscribers_get_the_replay_then_live_lines() {
        let feed = JobFeed::new();
        feed.output(vec![out("a"), out("b")]);
        let mut rx = feed.subscribe();
        let replay = feed.replay().expect("replay");
        assert_eq!(replay["fromLine"], 0);
        assert_eq!(replay["lines"].as_array().map(Vec::len), Some(2));
        feed.output(vec![out("c")]);
        let live = rx.try_recv().expect("live");
        assert_eq!((live["fromLine"].as_u64(), live["lines"][0]["line"].as_str()), (Some(2), Some("c")));
    }

    #[test]
    fn the_replay_is_bounded_and_keeps_the_start() {
        let feed = JobFeed::new();
        let big = "x".repeat(REPLAY_BYTES / 2 + 1);
        feed.output(vec![out(&big), out(&big), out("tail")]);
        let replay = feed.replay().expect("replay");
        assert_eq!(replay["lines"].as_array().map(Vec::len), Some(1));
    }
}
