//! The data dir and the secrets kept in it: folder modes (private to the
//! server, traverse-only where engines of other accounts must reach their own
//! folders), whether engine accounts can reach what they need, and the
//! control plane's secrets by role.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::Config;
use crate::serve::Roles;

/// The all-in-one server's own RPC secret, kept in `<data_dir>/rpc-token`
/// (mode 0600) so engines that outlive a restart still talk to it.
fn data_dir_rpc_token(data_dir: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("rpc-token");
    if let Ok(t) = std::fs::read_to_string(&path)
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_string());
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

/// This control-plane instance's name as a job owner, kept in
/// `<data_dir>/instance-id`: the same across restarts (it takes its own jobs
/// back at once), different for every data dir (instances sharing a store
/// never take each other's live jobs).
pub(crate) fn instance_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("instance-id");
    if let Ok(t) = std::fs::read_to_string(&path)
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_string());
    }
    let id = format!("entrance-{}", uuid::Uuid::new_v4().simple());
    let tmp = data_dir.join("instance-id.tmp");
    std::fs::write(&tmp, &id).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// A configured directory, or `<data_dir>/<default>` when empty.
pub(crate) fn dir_or(configured: &str, data_dir: &Path, default: &str) -> PathBuf {
    if configured.is_empty() { data_dir.join(default) } else { PathBuf::from(configured) }
}

/// The data dir: private to the server (0700); traverse-only (0711) for a
/// root server whose engines run as other accounts and must reach their own
/// work and result folders inside it (nothing in it is listable by them).
pub(crate) fn prepare_data_dir(dir: &Path, engines_switch: bool) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir).with_context(|| format!("cannot resolve the data dir {}", dir.display()))?;
    private_dir(&dir, if engines_switch { 0o711 } else { 0o700 })?;
    Ok(dir)
}

/// One server per data dir: an exclusive `flock` on `<data_dir>/server.lock`,
/// held for the life of the process (the kernel drops it when the process
/// dies, so a crashed server never leaves it stuck; engines do not inherit
/// it). The file says who holds it, for the next server's refusal.
pub(crate) struct DataDirLock {
    file: nix::fcntl::Flock<std::fs::File>,
}

impl DataDirLock {
    pub(crate) fn take(data_dir: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join("server.lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(file) => Ok(Self { file }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let holder = if holder.is_empty() { "another Hangar server (starting)" } else { holder };
                bail!(
                    "the data dir {} is in use by {holder}; stop that server first, or give this one its own --data-dir",
                    data_dir.display()
                )
            }
            Err((_, e)) => bail!("cannot lock {}: {e}", path.display()),
        }
    }

    /// Record who holds the lock (shown to a second server).
    pub(crate) fn describe(&mut self, what: &str) {
        use std::io::{Seek, Write};
        let text = format!("{what} (pid {})\n", std::process::id());
        let f: &mut std::fs::File = &mut self.file;
        let written = f.set_len(0).and_then(|()| f.rewind()).and_then(|()| f.write_all(text.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot record this server in server.lock");
        }
    }
}

/// Create a server-owned folder (if missing) and set its mode.
pub(crate) fn private_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let md = std::fs::symlink_metadata(dir).with_context(|| format!("cannot stat {}", dir.display()))?;
    if !md.is_dir() {
        bail!("{} must be a directory, not a link", dir.display());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))
}

/// Engines running as other accounts must reach the binaries and their
/// folders: every ancestor searchable by others. Say which one is not.
pub(crate) fn engines_can_reach(paths: &[&Path]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for p in paths {
        for a in p.ancestors().skip(1) {
            let Ok(md) = std::fs::metadata(a) else { continue };
            if md.permissions().mode() & 0o001 == 0 {
                bail!(
                    "engines run as unprivileged accounts (ecm.run_as) and cannot reach {} because {} is not \
                     searchable by others (mode {:o}); put the data dir and the hangar binary under a folder others \
                     may traverse (for example --data-dir /var/lib/hangar), or run the server as a normal user",
                    p.display(),
                    a.display(),
                    md.permissions().mode() & 0o7777
                );
            }
        }
    }
    Ok(())
}

/// The control plane's secrets (and an ECM's token), by role.
pub(crate) fn control_plane_secrets(
    cfg: &Config,
    roles: Roles,
    data_dir: &Path,
) -> anyhow::Result<hangar_manager::ControlPlaneSecrets> {
    let ecm_token = cfg.auth.ecm_token.clone();
    match roles {
        Roles::All => {
            let rpc_secret =
                if cfg.auth.rpc_token.is_empty() { data_dir_rpc_token(data_dir)? } else { cfg.auth.rpc_token.clone() };
            let ecm_token = if ecm_token.is_empty() {
                hangar_protocol::credential::derived_token(rpc_secret.as_bytes(), "ecm")
            } else {
                ecm_token
            };
            Ok(hangar_manager::ControlPlaneSecrets { rpc_secret, ecm_token })
        }
        Roles::Ecm => {
            if ecm_token.is_empty() {
                bail!("auth.ecm_token (HANGAR_AUTH_ECM_TOKEN) must be set on an ECM, the same as on its control plane")
            }
            if !cfg.auth.rpc_token.is_empty() {
                tracing::warn!(
                    "auth.rpc_token is set on an ECM: ECMs need only auth.ecm_token; remove it from this host"
                );
            }
            Ok(hangar_manager::ControlPlaneSecrets { rpc_secret: String::new(), ecm_token })
        }
        Roles::ControlPlane => {
            if cfg.auth.rpc_token.is_empty() || ecm_token.is_empty() {
                bail!(
                    "auth.rpc_token (HANGAR_AUTH_RPC_TOKEN, the control plane's own secret) and auth.ecm_token \
                     (HANGAR_AUTH_ECM_TOKEN, shared with the ECMs) must both be set when roles are split"
                )
            }
            if cfg.auth.rpc_token == ecm_token {
                bail!("auth.rpc_token and auth.ecm_token must differ: ECMs must not hold the control plane's secret")
            }
            Ok(hangar_manager::ControlPlaneSecrets { rpc_secret: cfg.auth.rpc_token.clone(), ecm_token })
        }
    }
}
