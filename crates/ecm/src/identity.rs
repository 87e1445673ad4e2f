//! Which OS account an engine runs as.
//!
//! A root ECM never runs an engine as root or as a system account unless the
//! operator says so (`ecm.run_as = "server"` with `ecm.allow_root_engines`).
//! By default (`auto`) a root ECM runs each Hangar user's engines as an
//! account of their own, `<ecm.account_prefix><user>` (created on first use,
//! no login shell, no home); `user` runs them as the same-named OS account,
//! which must exist (Linkis's model, for hosts that share a user directory).
//! Either way the account's uid must be at least `ecm.min_uid`. An ECM that
//! is not root cannot switch accounts: its engines run as its own user.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use sha2::Digest;

/// How engines get their OS account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// The ECM's own account.
    Server,
    /// The OS account named like the Hangar user.
    User,
    /// `<prefix><user>`, created on first use.
    Account { prefix: String },
}

/// The identity rules of one ECM.
#[derive(Debug, Clone)]
pub struct Identity {
    pub run_as: RunAs,
    pub min_uid: u32,
}

/// An OS account an engine runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Its home directory, when it exists.
    pub home: Option<PathBuf>,
}

/// Accounts are created one at a time in this process (useradd locks the
/// password files; other processes are waited for by retrying).
static CREATING: Mutex<()> = Mutex::new(());

impl Identity {
    /// The rules from the configuration (`mode`: auto, server, user, account).
    pub fn from_config(mode: &str, prefix: &str, min_uid: u32, allow_root_engines: bool) -> Result<Self, String> {
        let root = nix::unistd::geteuid().is_root();
        let run_as = match (mode, root) {
            ("auto", true) | ("account", true) => RunAs::Account { prefix: prefix.to_string() },
            ("auto", false) | ("server", false) => RunAs::Server,
            ("user", true) => RunAs::User,
            ("server", true) if allow_root_engines => RunAs::Server,
            ("server", true) => {
                return Err("ecm.run_as = \"server\" on a root ECM would run every engine as root; \
                     use \"auto\" (an account per user) or \"user\", or set ecm.allow_root_engines = true \
                     if you really mean it"
                    .into());
            }
            ("user" | "account", false) => {
                return Err(format!(
                    "ecm.run_as = \"{mode}\" needs a root ECM to switch accounts; this one runs as uid {}",
                    nix::unistd::geteuid()
                ));
            }
            (other, _) => {
                return Err(format!("ecm.run_as must be auto, server, user or account, not '{other}'"));
            }
        };
        if let RunAs::Account { prefix } = &run_as
            && (prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        {
            return Err(format!("ecm.account_prefix '{prefix}' must be lowercase letters, digits and '-'"));
        }
        Ok(Self { run_as, min_uid })
    }

    /// Whether engines run as accounts other than the ECM's.
    pub fn switches(&self) -> bool {
        self.run_as != RunAs::Server
    }

    /// The OS account name of a Hangar user's engines.
    pub fn account_name(&self, user: &str) -> Option<String> {
        match &self.run_as {
            RunAs::Server => None,
            RunAs::User => Some(user.to_string()),
            RunAs::Account { prefix } => Some(account_name(prefix, user)),
        }
    }

    /// The account a user's engines run as (None: the ECM's own); creates it
    /// when the rules say so. Blocking: call from a blocking thread.
    pub fn account_for(&self, user: &str) -> Result<Option<Account>, String> {
        let Some(name) = self.account_name(user) else { return Ok(None) };
        let found = lookup(&name)?;
        let account = match (found, &self.run_as) {
            (Some(a), _) => a,
            (None, RunAs::User) => {
                return Err(format!(
                    "OS user '{name}' does not exist on this host: the engine cannot run as that user \
                     (ecm.run_as = \"user\")"
                ));
            }
            (None, _) => create(&name)?,
        };
        if account.uid == 0 || account.uid < self.min_uid {
            return Err(format!(
                "engines may not run as OS user '{name}' (uid {}): uids below ecm.min_uid = {} and root are refused",
                account.uid, self.min_uid
            ));
        }
        Ok(Some(account))
    }
}

/// `<prefix><user>` when that is a plain account name, else `<prefix>u`
/// and a digest of the user name (OS names are short and plain).
pub fn account_name(prefix: &str, user: &str) -> String {
    let plain = user.len() <= 24
        && user.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && user.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'));
    if plain {
        format!("{prefix}{user}")
    } else {
        let digest = sha2::Sha256::digest(user.as_bytes());
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("{prefix}u{hex}")
    }
}

fn lookup(name: &str) -> Result<Option<Account>, String> {
    let u = nix::unistd::User::from_name(name).map_err(|e| format!("cannot look up OS user '{name}': {e}"))?;
    Ok(u.map(|u| Account {
        name: name.to_string(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: Some(u.dir).filter(|d| d.is_dir() && d != std::path::Path::new("/")),
    }))
}

fn create(name: &str) -> Result<Account, String> {
    let _one = CREATING.lock().unwrap_or_else(|p| p.into_inner());
    for attempt in 0..50 {
        if let Some(a) = lookup(name)? {
            return Ok(a);
        }
        let out = std::process::Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", "--comment"])
            .arg("Hangar engine account")
            .arg(name)
            .output()
            .map_err(|e| format!("cannot run useradd to create the engine account '{name}': {e}"))?;
        match out.status.code() {
            Some(0) => {
                tracing::info!(account = %name, "created an engine account");
                continue;
            }
            // 9: the name is taken (another process created it): look it up again.
            Some(9) => continue,
            // 10: the password files are locked by another useradd: wait.
            Some(10) | Some(1) if attempt < 49 => std::thread::sleep(Duration::from_millis(20 + attempt * 10)),
            _ => {
                return Err(format!(
                    "cannot create the engine account '{name}': {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    Err(format!("cannot create the engine account '{name}': the password files stayed locked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_are_plain_os_names() {
        assert_eq!(account_name("hangar-", "alice"), "hangar-alice");
        assert_eq!(account_name("hangar-", "a.b_c"), "hangar-a.b_c");
        let odd = account_name("hangar-", "Alice@corp");
        assert!(odd.starts_with("hangar-u") && odd.len() == "hangar-u".len() + 16, "{odd}");
        assert_ne!(odd, account_name("hangar-", "alice@corp"));
        assert!(account_name("hangar-", &"x".repeat(60)).len() <= 32);
    }

    #[test]
    fn rules_from_config() {
        let root = nix::unistd::geteuid().is_root();
        let auto = Identity::from_config("auto", "hangar-", 1000, false).expect("auto");
        assert_eq!(auto.switches(), root);
        assert!(Identity::from_config("sometimes", "hangar-", 1000, false).is_err());
        if root {
            let e = Identity::from_config("server", "hangar-", 1000, false).expect_err("root engines");
            assert!(e.contains("allow_root_engines"), "{e}");
            assert!(Identity::from_config("server", "hangar-", 1000, true).is_ok());
            assert!(Identity::from_config("account", "Bad_", 1000, false).is_err());
        } else {
            assert!(Identity::from_config("user", "hangar-", 1000, false).is_err());
        }
    }

    #[test]
    fn root_and_system_accounts_are_refused() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let id = Identity { run_as: RunAs::User, min_uid: 1000 };
        let e = id.account_for("root").expect_err("root");
        assert!(e.contains("uid 0"), "{e}");
        let e = id.account_for("daemon").expect_err("system account");
        assert!(e.contains("ecm.min_uid"), "{e}");
        let e = id.account_for("no-such-user-here").expect_err("missing");
        assert!(e.contains("does not exist"), "{e}");
    }
}
