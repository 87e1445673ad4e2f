//! A list of control-plane base URLs (`http://10.0.0.1:8080,http://10.0.0.2:8080`)
//! and the rotation every client of the manager follows over it: send to the
//! URL that answered last; when one cannot be reached, times out or answers
//! 5xx, try the next at once (each URL at most once per send); a 4xx answer is
//! final. No I/O here: the caller makes each attempt.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::HangarError;

/// What one attempt against one URL came to.
#[derive(Debug)]
pub enum Attempt<T, E> {
    /// Answered: done.
    Done(T),
    /// Answered with a refusal (a 4xx, bad bytes): no other URL is tried.
    Final(E),
    /// Not reached, timed out, or a 5xx: the next URL is tried.
    Next(E),
}

/// Control-plane base URLs (no trailing `/`), with the one that answered last.
/// Clones share that memory.
#[derive(Debug, Clone)]
pub struct Endpoints {
    urls: Arc<[String]>,
    good: Arc<AtomicUsize>,
}

impl Endpoints {
    /// A comma-separated list; every entry an `http://` or `https://` URL with
    /// a host. The error names the bad entry.
    pub fn parse(list: &str) -> Result<Self, HangarError> {
        let mut urls = Vec::new();
        for raw in list.split(',') {
            let url = raw.trim();
            if url.is_empty() {
                return Err(HangarError::invalid(format!(
                    "'{list}' has an empty entry: give base URLs joined by commas"
                )));
            }
            let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
            let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
            match host {
                Some(h) if !h.is_empty() && !h.starts_with(':') && !h.contains(char::is_whitespace) => {}
                _ => {
                    return Err(HangarError::invalid(format!(
                        "'{url}' is not a control-plane URL: expected http://host:port or https://host:port"
                    )));
                }
            }
            urls.push(url.trim_end_matches('/').to_string());
        }
        Ok(Self::from_urls(urls))
    }

    /// One URL taken as it is (a launch request's, checked by its sender).
    pub fn single(url: &str) -> Self {
        Self::from_urls(vec![url.trim_end_matches('/').to_string()])
    }

    fn from_urls(urls: Vec<String>) -> Self {
        Self { urls: urls.into(), good: Arc::new(AtomicUsize::new(0)) }
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The first URL of the list (the one configured first).
    pub fn first(&self) -> &str {
        self.urls.first().map_or("", String::as_str)
    }

    /// The URL that answered last (the first until one has).
    pub fn current(&self) -> &str {
        let i = self.good.load(Ordering::Relaxed) % self.urls.len().max(1);
        self.urls.get(i).map_or("", String::as_str)
    }

    /// The list as it is written: comma-joined.
    pub fn joined(&self) -> String {
        self.urls.join(",")
    }

    /// Run `attempt` against each URL in turn, starting with the one that
    /// answered last, until one is `Done` or `Final`; that URL is remembered
    /// when it answered. Returns the last error when every URL said `Next`.
    pub async fn try_each<T, E, F, Fut>(&self, mut attempt: F) -> Result<T, E>
    where
        F: FnMut(&str) -> Fut,
        Fut: Future<Output = Attempt<T, E>>,
    {
        // Never empty: `parse` and `single` build one URL at least.
        let n = self.urls.len().max(1);
        let start = self.good.load(Ordering::Relaxed) % n;
        let mut k = 0;
        loop {
            let i = (start + k) % n;
            match attempt(&self.urls[i]).await {
                Attempt::Done(v) => {
                    self.good.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Attempt::Final(e) => {
                    // It answered: it is the one to try first next time.
                    self.good.store(i, Ordering::Relaxed);
                    return Err(e);
                }
                Attempt::Next(e) if k + 1 >= n => return Err(e),
                Attempt::Next(_) => k += 1,
            }
        }
    }
}

impl std::fmt::Display for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.joined())
    }
}

/// Whether an HTTP status sends a client on to the next URL: a 5xx (the
/// instance cannot forward to the leader, or is failing).
pub fn retry_elsewhere(status: u16) -> bool {
    (500..600).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        // The attempts below never wait: one poll with a no-op waker is enough.
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the attempt waited"),
        }
    }

    #[test]
    fn parse_takes_a_list_and_names_a_bad_entry() {
        let e = Endpoints::parse(" http://10.0.0.1:8080/ ,https://cp2:8443").expect("list");
        assert_eq!(e.urls(), ["http://10.0.0.1:8080", "https://cp2:8443"]);
        assert_eq!(e.joined(), "http://10.0.0.1:8080,https://cp2:8443");
        assert_eq!(e.first(), "http://10.0.0.1:8080");
        for (list, bad) in [
            ("http://a:1,ftp://b:2", "ftp://b:2"),
            ("http://a:1,10.0.0.2:8080", "10.0.0.2:8080"),
            ("http://", "http://"),
            ("http://:80", "http://:80"),
        ] {
            let err = Endpoints::parse(list).expect_err("bad entry");
            assert!(err.message.contains(&format!("'{bad}'")), "{list}: {}", err.message);
        }
        assert!(Endpoints::parse("http://a:1,,http://b:2").expect_err("empty entry").message.contains("empty entry"));
        assert!(Endpoints::parse("").is_err());
    }

    #[test]
    fn a_dead_url_is_skipped_and_the_good_one_remembered() {
        let e = Endpoints::parse("http://a:1,http://b:2,http://c:3").expect("list");
        let mut tried = Vec::new();
        let r: Result<&str, String> = block_on(e.try_each(|u| {
            tried.push(u.to_string());
            let outcome = if u.ends_with(":2") { Attempt::Done("ok") } else { Attempt::Next(format!("{u} down")) };
            async move { outcome }
        }));
        assert_eq!(r, Ok("ok"));
        assert_eq!(tried, ["http://a:1", "http://b:2"]);
        assert_eq!(e.current(), "http://b:2");
        // The next send starts at the one that answered; a clone shares that.
        let c = e.clone();
        let mut tried = Vec::new();
        let r: Result<(), String> = block_on(c.try_each(|u| {
            tried.push(u.to_string());
            async move { Attempt::Next(String::from("down")) }
        }));
        assert_eq!(r, Err("down".into()));
        assert_eq!(tried, ["http://b:2", "http://c:3", "http://a:1"], "each URL once, from the last good one");
        assert_eq!(e.current(), "http://b:2", "no answer moves nothing");
    }

    #[test]
    fn a_refusal_is_final() {
        let e = Endpoints::parse("http://a:1,http://b:2").expect("list");
        let mut tried = 0;
        let r: Result<(), &str> = block_on(e.try_each(|_| {
            tried += 1;
            async { Attempt::Final("401") }
        }));
        assert_eq!((r, tried), (Err("401"), 1));
        assert!(retry_elsewhere(503) && retry_elsewhere(500) && !retry_elsewhere(401) && !retry_elsewhere(200));
    }
}
