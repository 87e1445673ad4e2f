//! Login sessions (`POST /user/login`, the `linkis_user_session_ticket_id_v1`
//! cookie) and password hashes (PBKDF2-HMAC-SHA256).

use std::sync::LazyLock;
use std::time::Duration;

use hangar_protocol::HangarError;
use hangar_store::{Store, StoreError};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

pub const COOKIE: &str = "linkis_user_session_ticket_id_v1";
const ITERATIONS: u32 = 100_000;

/// Login sessions, kept in the store so every instance on it honours them:
/// by the SHA-256 of the ticket (a copy of the store holds no live cookie);
/// a session idle longer than the timeout is gone.
pub(crate) struct Sessions {
    timeout: Duration,
    store: Store,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What the store keeps of a ticket.
fn ticket_hash(ticket: &str) -> String {
    hex(&Sha256::digest(ticket.as_bytes()))
}

fn store_failed(what: &str, e: &StoreError) -> HangarError {
    HangarError::internal(format!("{what}: the session store failed ({e})"))
}

impl Sessions {
    pub(crate) fn new(store: Store, timeout: Duration) -> Self {
        Self { timeout, store }
    }

    fn timeout_ms(&self) -> i64 {
        i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX)
    }

    /// A new session of `user`; its ticket (64 random hex chars) is the cookie.
    /// Expired sessions are purged first.
    pub(crate) async fn open(&self, user: &str) -> Result<String, HangarError> {
        let ticket = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let now = now_ms();
        if let Err(e) = self.store.purge_sessions(now, self.timeout_ms()).await {
            tracing::warn!(error = %e, "purging expired sessions failed");
        }
        self.store
            .open_session(&ticket_hash(&ticket), user, now)
            .await
            .map_err(|e| store_failed("Login failed: the session could not be stored", &e))?;
        Ok(ticket)
    }

    /// The user of a live session (refreshing its last access now and then).
    pub(crate) async fn user(&self, ticket: &str) -> Result<Option<String>, HangarError> {
        self.store
            .session_user(&ticket_hash(ticket), now_ms(), self.timeout_ms())
            .await
            .map_err(|e| store_failed("The login session could not be checked", &e))
    }

    /// End a session; whether there was one.
    pub(crate) async fn close(&self, ticket: &str) -> Result<bool, HangarError> {
        self.store
            .close_session(&ticket_hash(ticket))
            .await
            .map_err(|e| store_failed("Logout failed: the session could not be ended", &e))
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
thread_local! {
    /// PBKDF2 rounds run on this thread (tests check that unknown users cost the same).
    static ROUNDS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> Option<[u8; 32]> {
    #[cfg(test)]
    ROUNDS.with(|r| r.set(r.get() + u64::from(iterations)));
    let mac = Hmac::<Sha256>::new_from_slice(password).ok()?;
    let mut u = {
        let mut m = mac.clone();
        m.update(salt);
        m.update(&1u32.to_be_bytes());
        m.finalize().into_bytes()
    };
    let mut out = [0u8; 32];
    out.copy_from_slice(&u);
    for _ in 1..iterations {
        let mut m = mac.clone();
        m.update(&u);
        u = m.finalize().into_bytes();
        for (o, b) in out.iter_mut().zip(u.iter()) {
            *o ^= b;
        }
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`.
pub fn hash_password(password: &str) -> String {
    let salt = uuid::Uuid::new_v4().into_bytes();
    let hash = pbkdf2(password.as_bytes(), &salt, ITERATIONS).map(|h| hex(&h)).unwrap_or_default();
    format!("pbkdf2-sha256${ITERATIONS}${}${hash}", hex(&salt))
}

/// A hash no password matches, of the cost [`hash_password`] uses: an unknown
/// user's password is checked against it so a failed login costs the same
/// whether or not the user exists.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| format!("pbkdf2-sha256${ITERATIONS}${}${}", "5a".repeat(16), "00".repeat(32)));

/// Whether `password` is `user`'s. Blocking (PBKDF2): call it off the async
/// workers. Known and unknown users take the same work.
pub(crate) fn check_credentials(users: &[crate::UserConfig], user: &str, password: &str) -> bool {
    let known = users.iter().find(|u| u.name == user);
    let hash = known.map_or(DUMMY_HASH.as_str(), |u| u.password_hash.as_str());
    let matches = verify_password(password, hash);
    known.is_some() && matches
}

/// Check a password against a hash from [`hash_password`].
pub fn verify_password(password: &str, stored: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let [scheme, iters, salt, hash] = parts.as_slice() else { return false };
    let (Ok(iters), Some(salt), Some(hash)) = (iters.parse::<u32>(), unhex(salt), unhex(hash)) else { return false };
    if *scheme != "pbkdf2-sha256" || iters == 0 || iters > 10_000_000 {
        return false;
    }
    match pbkdf2(password.as_bytes(), &salt, iters) {
        Some(h) => hangar_protocol::constant_time_eq(&h, &hash),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_matches_rfc_7914_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256("passwd", "salt", 1).
        let h = pbkdf2(b"passwd", b"salt", 1).expect("h");
        assert_eq!(hex(&h), "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc");
    }

    #[test]
    fn hashes_verify_and_reject() {
        let h = hash_password("s3cret");
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("S3cret", &h));
        assert!(!verify_password("s3cret", "plain"));
        assert_ne!(h, hash_password("s3cret"), "salted");
    }

    fn rounds() -> u64 {
        ROUNDS.with(|r| r.replace(0))
    }

    #[test]
    fn unknown_users_cost_the_same_pbkdf2_work_as_known_ones() {
        let users = vec![crate::UserConfig { name: "alice".into(), password_hash: hash_password("pw") }];
        let _ = rounds();
        assert!(check_credentials(&users, "alice", "pw"));
        let known_right = rounds();
        assert!(!check_credentials(&users, "alice", "wrong"));
        let known_wrong = rounds();
        assert!(!check_credentials(&users, "mallory", "pw"));
        let unknown = rounds();
        assert!(!check_credentials(&[], "admin", "pw"));
        let no_users = rounds();
        assert_eq!(known_right, u64::from(ITERATIONS));
        assert_eq!((known_wrong, unknown, no_users), (known_right, known_right, known_right));
        // The dummy hash matches nothing, not even the empty password.
        assert!(!check_credentials(&users, "mallory", ""));
    }

    #[tokio::test]
    async fn sessions_expire_and_close() {
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = Store::open(&url).await.expect("store");
        let s = Sessions::new(store.clone(), Duration::from_millis(200));
        let t = s.open("alice").await.expect("open");
        assert_eq!(t.len(), 64);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(s.user(&t).await.expect("user").as_deref(), Some("alice"));
        // Another instance on the same store knows the session, by its hash only.
        let other = Sessions::new(store.clone(), Duration::from_millis(200));
        assert_eq!(other.user(&t).await.expect("user").as_deref(), Some("alice"));
        assert_eq!(store.session_user(&t, now_ms(), 200).await.expect("raw"), None, "the ticket itself is not stored");
        assert!(other.close(&t).await.expect("close"));
        assert_eq!(s.user(&t).await.expect("user"), None);
        assert!(!s.close(&t).await.expect("close again"));
        let t = s.open("bob").await.expect("open");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(s.user(&t).await.expect("user"), None);
    }
}
