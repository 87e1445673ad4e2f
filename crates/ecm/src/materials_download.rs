//! Fetching one material's bytes from the control plane: each of its base
//! URLs in turn (the one that answered last first), the next when one cannot
//! be reached, times out, answers 5xx or breaks off; a 4xx answer and bytes
//! that do not match what was announced are final.

use std::path::Path;

use hangar_protocol::HangarError;
use hangar_protocol::endpoints::{Attempt, Endpoints, retry_elsewhere};
use hangar_protocol::rpc::{MANAGER_MATERIAL_PATH, MaterialRef, RPC_TOKEN_HEADER};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{MaterialCache, failed, lower_hex};

impl MaterialCache {
    /// Stream the bytes to `part`, checking size and digest on the way.
    pub(super) async fn download(&self, m: &MaterialRef, manager: &Endpoints, part: &Path) -> Result<(), HangarError> {
        manager
            .try_each(|base| {
                let url = format!("{base}{MANAGER_MATERIAL_PATH}/{}", m.sha256);
                async move { self.download_from(m, &url, part).await }
            })
            .await
    }

    async fn download_from(&self, m: &MaterialRef, url: &str, part: &Path) -> Attempt<(), HangarError> {
        let mut resp = match self.http.get(url).header(RPC_TOKEN_HEADER, &self.token).send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Next(failed(format!("cannot fetch from {url}: {e}"))),
        };
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let e = failed(format!("the manager answered {status} for {url}: {}", body.trim()));
            return if retry_elsewhere(status.as_u16()) { Attempt::Next(e) } else { Attempt::Final(e) };
        }
        let write_err = |e: std::io::Error| Attempt::Final(failed(format!("cannot write {}: {e}", part.display())));
        // Created (or emptied, after an attempt that broke off) here.
        let mut file = match tokio::fs::File::create(part).await {
            Ok(f) => f,
            Err(e) => return write_err(e),
        };
        let mut h = Sha256::new();
        let mut n = 0u64;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return Attempt::Next(failed(format!("fetch from {url} broke off: {e}"))),
            };
            n += chunk.len() as u64;
            if n > m.size {
                return Attempt::Final(failed(format!("the manager sent more than the {} bytes announced", m.size)));
            }
            h.update(&chunk);
            if let Err(e) = file.write_all(&chunk).await {
                return write_err(e);
            }
        }
        if let Err(e) = file.flush().await {
            return write_err(e);
        }
        let got = lower_hex(&h.finalize());
        if got != m.sha256 || n != m.size {
            return Attempt::Final(failed(format!(
                "the fetched bytes do not match: sha256 {got} ({n} bytes), expected {} ({} bytes)",
                m.sha256, m.size
            )));
        }
        Attempt::Done(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;
    use hangar_protocol::rpc::MaterialKind;

    use super::*;

    async fn serve(status: StatusCode, body: &'static [u8]) -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let app = Router::new().route(
            &format!("{MANAGER_MATERIAL_PATH}/{{sha}}"),
            get(move || async move {
                h.fetch_add(1, Ordering::SeqCst);
                (status, body)
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), hits)
    }

    fn material(bytes: &[u8]) -> MaterialRef {
        MaterialRef {
            kind: MaterialKind::UserFile,
            name: "f.txt".into(),
            sha256: lower_hex(&Sha256::digest(bytes)),
            size: bytes.len() as u64,
            origin: "r@v000001".into(),
        }
    }

    #[tokio::test]
    async fn a_material_is_fetched_past_an_instance_without_a_leader() {
        let d = tempfile::tempdir().expect("tmp");
        let cache = MaterialCache::new(d.path().join("cache"), 1 << 20, "t".into()).expect("cache");
        let (no_leader, no_leader_hits) = serve(StatusCode::SERVICE_UNAVAILABLE, b"no leader").await;
        let (leader, leader_hits) = serve(StatusCode::OK, b"hello").await;
        let urls = Endpoints::parse(&format!("{no_leader},{leader}")).expect("urls");
        let part = d.path().join("part");
        cache.download(&material(b"hello"), &urls, &part).await.expect("fetched from the leader");
        assert_eq!(std::fs::read(&part).expect("read"), b"hello");
        cache.download(&material(b"hello"), &urls, &part).await.expect("again");
        assert_eq!((no_leader_hits.load(Ordering::SeqCst), leader_hits.load(Ordering::SeqCst)), (1, 2));

        let (refusing, _) = serve(StatusCode::FORBIDDEN, b"bad token").await;
        let (other, other_hits) = serve(StatusCode::OK, b"hello").await;
        let urls = Endpoints::parse(&format!("{refusing},{other}")).expect("urls");
        let e = cache.download(&material(b"hello"), &urls, &part).await.expect_err("403 is final");
        assert!(e.message.contains("403"), "{}", e.message);
        assert_eq!(other_hits.load(Ordering::SeqCst), 0);
        // Wrong bytes are final too: another instance serves the same store.
        let urls = Endpoints::parse(&format!("{leader},{other}")).expect("urls");
        let e = cache.download(&material(b"other"), &urls, &part).await.expect_err("digest mismatch");
        assert!(e.message.contains("do not match"), "{}", e.message);
        assert_eq!(other_hits.load(Ordering::SeqCst), 0);
    }
}
