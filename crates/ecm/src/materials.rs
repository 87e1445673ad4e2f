//! Material localization (Linkis `BmlResourceLocalizationService`): an
//! engine's plugin `conf`/`lib` and the user files its launch names are
//! fetched from the manager once per host, into a cache keyed by their
//! SHA-256, verified, shared read-only between engines and linked into each
//! work dir.
//!
//! Cache layout, under `ecm.material_cache_dir`:
//! `<sha256>/data` (the unpacked directory, or the file) and
//! `<sha256>/manifest.json` (every file's relative path, size and SHA-256).
//! Before every use an entry is checked against its manifest: files whose
//! size, mtime, ctime and inode match what this process last hashed are
//! trusted, any other file is hashed again. A mismatch, a missing or extra
//! file, or an unreadable manifest means the entry is corrupt: it is fetched
//! again and swapped in atomically. Fetches of one digest are single-flight.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_protocol::endpoints::Endpoints;
use hangar_protocol::rpc::{MaterialKind, MaterialRef};
use hangar_protocol::{ErrorCode, HangarError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[path = "materials_download.rs"]
mod download;

const MANIFEST: &str = "manifest.json";
const DATA: &str = "data";
/// Touched on every use; pruning evicts the least recently used first.
const LAST_USED: &str = "last-used";
/// Entries used this recently are never pruned (a launch may be linking them).
const PRUNE_MIN_IDLE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct ManifestFile {
    /// Relative to `data`; empty when `data` is the file itself.
    path: String,
    size: u64,
    sha256: String,
}

/// What a file looked like when this process last hashed it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stamp {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        Self {
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
        }
    }
}

type Stamps = HashMap<String, Stamp>;

/// Counters for logs and tests.
#[derive(Debug, Default)]
pub struct MaterialStats {
    /// Entries fetched from the manager (first fetches and refetches).
    pub fetches: AtomicU64,
    /// Entries found corrupt and fetched again.
    pub refetches: AtomicU64,
}

pub struct MaterialCache {
    root: PathBuf,
    max_bytes: u64,
    token: String,
    http: reqwest::Client,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    verified: Arc<Mutex<HashMap<String, Stamps>>>,
    pub stats: MaterialStats,
}

fn lower_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_of(mut r: impl Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf)? {
            0 => return Ok(lower_hex(&h.finalize())),
            k => h.update(&buf[..k]),
        }
    }
}

fn failed(message: String) -> HangarError {
    HangarError::new(ErrorCode::EngineStartFailed, message)
}

impl MaterialCache {
    pub fn new(root: PathBuf, max_bytes: u64, token: String) -> Result<Self, HangarError> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| HangarError::internal(format!("material client: {e}")))?;
        Ok(Self {
            root,
            max_bytes,
            token,
            http,
            locks: Mutex::new(HashMap::new()),
            verified: Arc::new(Mutex::new(HashMap::new())),
            stats: MaterialStats::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock_for(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).entry(digest.to_string()).or_default().clone()
    }

    /// The verified, read-only local copy of a material (its `data` path),
    /// fetched from the control plane at `manager` when missing or corrupt.
    pub async fn ensure(&self, m: &MaterialRef, manager: &Endpoints) -> Result<PathBuf, HangarError> {
        if !MaterialRef::valid_digest(&m.sha256) || !MaterialRef::valid_name(&m.name) {
            return Err(HangarError::invalid(format!("material {} has a bad digest or name", m.origin)));
        }
        let lock = self.lock_for(&m.sha256);
        let _held = lock.lock().await;
        let entry = self.root.join(&m.sha256);
        let verified = self.verified.clone();
        let digest = m.sha256.clone();
        let check_entry = entry.clone();
        let check = tokio::task::spawn_blocking(move || verify(&check_entry, &digest, &verified))
            .await
            .map_err(|e| HangarError::internal(e.to_string()))?;
        match check {
            Ok(()) => {
                let _ = tokio::fs::File::create(entry.join(LAST_USED)).await;
                return Ok(entry.join(DATA));
            }
            Err(Problem::Missing) => {}
            Err(Problem::Corrupt(why)) => {
                self.stats.refetches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(material = %m.origin, sha256 = %m.sha256, %why, "material cache entry is corrupt; fetching it again");
            }
        }
        self.fetch(m, manager, &entry).await?;
        let _ = tokio::fs::File::create(entry.join(LAST_USED)).await;
        Ok(entry.join(DATA))
    }

    async fn fetch(&self, m: &MaterialRef, manager: &Endpoints, entry: &Path) -> Result<(), HangarError> {
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| failed(format!("cannot create the material cache {}: {e}", self.root.display())))?;
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let part = self.root.join(format!(".part-{tag}"));
        let staged = self.root.join(format!(".new-{tag}"));
        let result = self.download(m, manager, &part).await;
        let result = match result {
            Ok(()) => {
                let (part2, staged2, kind) = (part.clone(), staged.clone(), m.kind);
                tokio::task::spawn_blocking(move || stage(&part2, &staged2, kind))
                    .await
                    .map_err(|e| HangarError::internal(e.to_string()))
                    .and_then(|r| r.map_err(|e| failed(format!("cannot unpack material: {e}"))))
            }
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&part).await;
        let stamps = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = remove_tree(&staged);
                return Err(HangarError::new(e.code, format!("material {}: {}", m.origin, e.message)));
            }
        };
        // Swap the new entry in; a corrupt old one goes to the side first.
        let (entry2, staged2, root) = (entry.to_path_buf(), staged.clone(), self.root.clone());
        let swapped = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if entry2.exists() {
                let trash = root.join(format!(".old-{tag}"));
                std::fs::rename(&entry2, &trash)?;
                let _ = remove_tree(&trash);
            }
            std::fs::rename(&staged2, &entry2)
        })
        .await
        .map_err(|e| HangarError::internal(e.to_string()))?;
        if let Err(e) = swapped {
            let _ = remove_tree(&staged);
            return Err(failed(format!("cannot place material {} in the cache: {e}", m.origin)));
        }
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).insert(m.sha256.clone(), stamps);
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        tracing::info!(material = %m.origin, sha256 = %m.sha256, size = m.size, "material localized");
        Ok(())
    }

    /// Link every material into a work dir: plugin dirs as `<name>`, user
    /// files as `resources/<name>`.
    pub async fn localize(
        &self,
        materials: &[MaterialRef],
        manager: &Endpoints,
        work_dir: &Path,
    ) -> Result<(), HangarError> {
        for m in materials {
            let data = self.ensure(m, manager).await?;
            let link = match m.kind {
                MaterialKind::PluginDir => work_dir.join(&m.name),
                MaterialKind::UserFile => work_dir.join("resources").join(&m.name),
            };
            if let Some(parent) = link.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| failed(format!("cannot create {}: {e}", parent.display())))?;
            }
            // An empty placeholder dir from the work-dir layout gives way.
            let _ = tokio::fs::remove_dir(&link).await;
            tokio::fs::symlink(&data, &link)
                .await
                .map_err(|e| failed(format!("cannot link {} to {}: {e}", link.display(), data.display())))?;
        }
        Ok(())
    }
}

impl MaterialCache {
    /// Keep the cache under its size limit: evict least recently used
    /// entries that no engine in `in_use` links to and that were not used
    /// in the last ten minutes. Returns the digests evicted.
    pub async fn prune(&self, in_use: std::collections::HashSet<String>) -> Vec<String> {
        let root = self.root.clone();
        let max = self.max_bytes;
        let entries = tokio::task::spawn_blocking(move || cache_entries(&root)).await.unwrap_or_default();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        let mut evicted = Vec::new();
        for (digest, size, last_used) in entries {
            if total <= max {
                break;
            }
            if in_use.contains(&digest) || last_used.elapsed().unwrap_or_default() < PRUNE_MIN_IDLE {
                continue;
            }
            // Never under a fetch or a check of the same entry.
            let lock = self.lock_for(&digest);
            let Ok(_held) = lock.try_lock() else { continue };
            let path = self.root.join(&digest);
            if tokio::task::spawn_blocking(move || remove_tree(&path)).await.is_ok_and(|r| r.is_ok()) {
                total = total.saturating_sub(size);
                self.verified.lock().unwrap_or_else(|p| p.into_inner()).remove(&digest);
                tracing::info!(sha256 = %digest, size, "evicted a material from the cache");
                evicted.push(digest);
            }
        }
        evicted
    }

    /// Remove what a crash may have left half-done (`.part-*`, `.new-*`, `.old-*`).
    pub async fn clean_leftovers(&self) {
        let root = self.root.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with(".part-") || name.starts_with(".new-") || name.starts_with(".old-") {
                    let _ = remove_tree(&e.path());
                }
            }
        })
        .await;
    }
}

/// The digest of the cache entry a work-dir link points into, if any.
pub(crate) fn linked_digest(root: &Path, link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    let entry = target.strip_prefix(root).ok()?.components().next()?;
    let d = entry.as_os_str().to_str()?;
    MaterialRef::valid_digest(d).then(|| d.to_string())
}

/// `(digest, bytes, last used)` of every entry, least recently used first.
fn cache_entries(root: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !MaterialRef::valid_digest(&name) {
            continue;
        }
        let p = e.path();
        let size = std::fs::read_to_string(p.join(MANIFEST))
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<ManifestFile>>(&t).ok())
            .map_or(0, |files| files.iter().map(|f| f.size).sum());
        let used = std::fs::metadata(p.join(LAST_USED))
            .or_else(|_| std::fs::metadata(&p))
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        out.push((name, size, used));
    }
    out.sort_by_key(|e| e.2);
    out
}

#[derive(Debug)]
enum Problem {
    Missing,
    Corrupt(String),
}

fn verify(entry: &Path, digest: &str, verified: &Mutex<HashMap<String, Stamps>>) -> Result<(), Problem> {
    let manifest_path = entry.join(MANIFEST);
    let text = match std::fs::read_to_string(&manifest_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !entry.exists() => return Err(Problem::Missing),
        Err(e) => return Err(Problem::Corrupt(format!("cannot read {}: {e}", manifest_path.display()))),
    };
    let files: Vec<ManifestFile> =
        serde_json::from_str(&text).map_err(|e| Problem::Corrupt(format!("bad manifest: {e}")))?;
    let data = entry.join(DATA);
    let mut on_disk = Vec::new();
    list_files(&data, &data, &mut on_disk)
        .map_err(|e| Problem::Corrupt(format!("cannot list {}: {e}", data.display())))?;
    on_disk.sort();
    let mut expected: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    expected.sort();
    if on_disk != expected {
        return Err(Problem::Corrupt(format!("files differ from the manifest: {on_disk:?} vs {expected:?}")));
    }
    let known = verified.lock().unwrap_or_else(|p| p.into_inner()).get(digest).cloned().unwrap_or_default();
    let mut fresh = Stamps::new();
    for f in &files {
        let path = if f.path.is_empty() { data.clone() } else { data.join(&f.path) };
        let meta =
            std::fs::symlink_metadata(&path).map_err(|e| Problem::Corrupt(format!("{}: {e}", path.display())))?;
        let stamp = Stamp::of(&meta);
        if meta.len() != f.size {
            return Err(Problem::Corrupt(format!("{} has {} bytes, expected {}", path.display(), meta.len(), f.size)));
        }
        if known.get(&f.path) != Some(&stamp) {
            let file = std::fs::File::open(&path).map_err(|e| Problem::Corrupt(format!("{}: {e}", path.display())))?;
            let sha = sha256_of(file).map_err(|e| Problem::Corrupt(format!("{}: {e}", path.display())))?;
            if sha != f.sha256 {
                return Err(Problem::Corrupt(format!("{} has sha256 {sha}, expected {}", path.display(), f.sha256)));
            }
        }
        fresh.insert(f.path.clone(), stamp);
    }
    verified.lock().unwrap_or_else(|p| p.into_inner()).insert(digest.to_string(), fresh);
    Ok(())
}

/// Relative paths of the regular files under `dir` (`""` when `dir` is a file);
/// anything else (symlinks, devices) is reported so the entry counts as corrupt.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.is_file() && root == dir {
        out.push(String::new());
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let path = entry.path();
        if ty.is_dir() {
            list_files(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).map_err(std::io::Error::other)?;
            let mut name = rel.to_string_lossy().to_string();
            if !ty.is_file() {
                name.push_str(" (not a plain file)");
            }
            out.push(name);
        }
    }
    Ok(())
}

/// Build a complete entry in `staged` from the downloaded `part`: unpack or
/// move the data, write the manifest, make everything read-only.
fn stage(part: &Path, staged: &Path, kind: MaterialKind) -> std::io::Result<Stamps> {
    std::fs::create_dir_all(staged)?;
    let data = staged.join(DATA);
    match kind {
        MaterialKind::PluginDir => {
            std::fs::create_dir_all(&data)?;
            let mut archive = tar::Archive::new(std::fs::File::open(part)?);
            archive.set_preserve_mtime(false);
            archive.set_overwrite(false);
            for entry in archive.entries()? {
                let mut entry = entry?;
                let ty = entry.header().entry_type();
                if !(ty.is_file() || ty.is_dir()) {
                    return Err(std::io::Error::other("the archive holds something other than files and directories"));
                }
                // `unpack_in` refuses paths that would leave `data`.
                if !entry.unpack_in(&data)? {
                    return Err(std::io::Error::other("the archive holds a path outside its directory"));
                }
            }
        }
        MaterialKind::UserFile => {
            std::fs::copy(part, &data)?;
        }
    }
    let mut paths = Vec::new();
    list_files(&data, &data, &mut paths)?;
    let mut files = Vec::new();
    let mut stamps = Stamps::new();
    for rel in paths {
        let path = if rel.is_empty() { data.clone() } else { data.join(&rel) };
        let exec = std::fs::metadata(&path)?.permissions().mode() & 0o111 != 0;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(if exec { 0o555 } else { 0o444 }))?;
        let sha = sha256_of(std::fs::File::open(&path)?)?;
        let meta = std::fs::symlink_metadata(&path)?;
        stamps.insert(rel.clone(), Stamp::of(&meta));
        files.push(ManifestFile { path: rel, size: meta.len(), sha256: sha });
    }
    let manifest = serde_json::to_vec_pretty(&files).map_err(std::io::Error::other)?;
    std::fs::write(staged.join(MANIFEST), manifest)?;
    std::fs::set_permissions(staged.join(MANIFEST), std::fs::Permissions::from_mode(0o444))?;
    set_dirs_mode(&data, 0o555)?;
    // Engines of every account reach the entry through their links (the
    // server's umask would keep it to itself).
    std::fs::set_permissions(staged, std::fs::Permissions::from_mode(0o711))?;
    Ok(stamps)
}

fn set_dirs_mode(dir: &Path, mode: u32) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Ok(());
    }
    // Children first while the dir is still writable, then the dir itself.
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            set_dirs_mode(&entry.path(), mode)?;
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Remove a tree whose dirs may be read-only.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            set_dirs_mode(path, 0o755)?;
            std::fs::remove_dir_all(path)
        }
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_entries_verify_and_corruption_is_found() {
        let d = tempfile::tempdir().expect("tmp");
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("bin")).expect("mk");
        std::fs::write(src.join("bin/tool.sh"), "#!/bin/sh\necho tool\n").expect("w");
        std::fs::set_permissions(src.join("bin/tool.sh"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(src.join("a.properties"), "k=v\n").expect("w");
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        b.append_dir_all(".", &src).expect("tar");
        let bytes = b.into_inner().expect("tar");
        let part = d.path().join("part");
        std::fs::write(&part, &bytes).expect("w");
        let entry = d.path().join("cache").join("x");
        let stamps = stage(&part, &entry, MaterialKind::PluginDir).expect("stage");
        assert_eq!(stamps.len(), 2);
        let tool = entry.join("data/bin/tool.sh");
        assert_eq!(std::fs::metadata(&tool).expect("m").permissions().mode() & 0o777, 0o555);
        assert_eq!(std::fs::metadata(entry.join("data/a.properties")).expect("m").permissions().mode() & 0o777, 0o444);

        let memo = Mutex::new(HashMap::new());
        verify(&entry, "x", &memo).expect("fresh entry verifies (full hash)");
        verify(&entry, "x", &memo).expect("and again (stamps)");
        // Same size, other bytes: only a hash finds it.
        let props = entry.join("data/a.properties");
        std::fs::set_permissions(&props, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::write(&props, "k=w\n").expect("corrupt");
        match verify(&entry, "x", &memo) {
            Err(Problem::Corrupt(why)) => assert!(why.contains("sha256"), "{why}"),
            other => panic!("corruption not found: {other:?}"),
        }
        std::fs::write(&props, "k=v\n").expect("restore");
        verify(&entry, "x", &memo).expect("restored bytes verify");
        std::fs::set_permissions(entry.join("data"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(entry.join("data/extra"), "").expect("extra");
        assert!(matches!(verify(&entry, "x", &memo), Err(Problem::Corrupt(_))), "an extra file is corruption");
        remove_tree(&entry).expect("remove read-only tree");
        assert!(matches!(verify(&entry, "x", &memo), Err(Problem::Missing)));
    }

    #[tokio::test]
    async fn prune_evicts_least_recently_used_idle_entries_only() {
        let d = tempfile::tempdir().expect("tmp");
        let cache = MaterialCache::new(d.path().to_path_buf(), 150, "t".into()).expect("cache");
        let make = |c: char, age_secs: u64| {
            let digest: String = std::iter::repeat_n(c, 64).collect();
            let part = d.path().join(format!("src-{c}"));
            std::fs::write(&part, vec![b'x'; 100]).expect("w");
            stage(&part, &d.path().join(&digest), MaterialKind::UserFile).expect("stage");
            let used = std::fs::File::create(d.path().join(&digest).join(LAST_USED)).expect("touch");
            used.set_modified(std::time::SystemTime::now() - Duration::from_secs(age_secs)).expect("mtime");
            digest
        };
        let (old, older_in_use, recent) = (make('a', 3600), make('b', 7200), make('c', 5));
        std::fs::create_dir_all(d.path().join(".part-crashed")).expect("leftover");
        let evicted = cache.prune([older_in_use.clone()].into_iter().collect()).await;
        assert_eq!(evicted, vec![old.clone()], "only the idle, unused entry goes");
        assert!(!d.path().join(&old).exists());
        assert!(d.path().join(&older_in_use).join(DATA).is_file() && d.path().join(&recent).join(DATA).is_file());
        cache.clean_leftovers().await;
        assert!(!d.path().join(".part-crashed").exists());
    }

    #[test]
    fn work_dir_links_name_their_cache_entries() {
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().join("cache");
        let digest = "c".repeat(64);
        std::fs::create_dir_all(root.join(&digest).join(DATA)).expect("entry");
        let wd = d.path().join("wd");
        std::fs::create_dir_all(&wd).expect("wd");
        std::os::unix::fs::symlink(root.join(&digest).join(DATA), wd.join("lib")).expect("link");
        std::os::unix::fs::symlink("/etc", wd.join("conf")).expect("foreign link");
        assert_eq!(linked_digest(&root, &wd.join("lib")), Some(digest));
        assert_eq!(linked_digest(&root, &wd.join("conf")), None, "outside the cache");
        assert_eq!(linked_digest(&root, &wd.join("missing")), None);
    }

    #[test]
    fn archives_cannot_escape() {
        let d = tempfile::tempdir().expect("tmp");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_link_name("/etc/passwd").expect("link");
        h.set_cksum();
        b.append_data(&mut h, "evil", &[][..]).expect("append");
        let part = d.path().join("part");
        std::fs::write(&part, b.into_inner().expect("tar")).expect("w");
        assert!(stage(&part, &d.path().join("e"), MaterialKind::PluginDir).is_err());
    }
}
