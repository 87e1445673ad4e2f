//! The material library (Linkis BML, "BigData Material Library"): the bytes
//! engines need besides their binary, kept by the control plane and named by
//! their SHA-256.
//!
//! * Plugin materials: `<engineconn_home>/<type>/dist/<version>/{conf,lib}`
//!   (Linkis's layout; `v<version>` is accepted too). Each directory is packed
//!   into a deterministic tar archive, so the same files always give the same
//!   digest, and re-scanned on [`MaterialLibrary::refresh_plugins`].
//! * User resources: files uploaded through the BML REST API, versioned
//!   (`v000001`, ...) per `resourceId` in the store; an engine names them in
//!   its startup parameter [`RESOURCES_KEY`].
//!
//! Blobs live in `<dir>/blobs/<sha256>`, written to a temporary name, synced
//! and renamed, so a crash never leaves a half blob under a digest. ECMs fetch
//! them by digest from the manager and cache them (see `hangar-ecm`).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use hangar_protocol::rpc::{MaterialKind, MaterialRef};
use hangar_protocol::{EngineType, HangarError};
use hangar_store::{MaterialVersion, Store};
use sha2::{Digest, Sha256};

/// Startup parameter naming user resources an engine needs:
/// comma-separated `resourceId` (latest version) or `resourceId@version`.
pub const RESOURCES_KEY: &str = "hangar.engineconn.resources";

/// The plugin directories Linkis ships per engine version.
const PLUGIN_DIRS: [&str; 2] = ["conf", "lib"];

pub struct MaterialLibrary {
    store: Store,
    blobs: PathBuf,
    engineconn_home: PathBuf,
    max_upload: u64,
    plugins: RwLock<HashMap<(String, String), Vec<MaterialRef>>>,
    /// Held from a blob's write to its row's insert, and from a delete's
    /// rows to its blob removal: a blob is never removed under a new version.
    blob_lock: tokio::sync::Mutex<()>,
}

fn lower_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of everything `r` yields, as lower-case hex, and its length.
pub fn sha256_of(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            return Ok((lower_hex(&h.finalize()), n));
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> HangarError {
    move |e| HangarError::internal(format!("{what}: {e}"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HangarError> + Send + 'static,
) -> Result<T, HangarError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| HangarError::internal(e.to_string()))?
}

/// A file name a user may give a resource: one plain component.
fn check_file_name(name: &str) -> Result<(), HangarError> {
    if MaterialRef::valid_name(name) && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(HangarError::invalid(format!(
            "'{name}' is not a usable file name: give one plain name without '/', not starting with '.'"
        )))
    }
}

impl MaterialLibrary {
    /// Open the library in `dir` and scan the plugin materials under `engineconn_home`.
    pub async fn open(
        store: Store,
        dir: &Path,
        engineconn_home: &Path,
        max_upload: u64,
    ) -> Result<std::sync::Arc<Self>, HangarError> {
        let blobs = dir.join("blobs");
        tokio::fs::create_dir_all(&blobs).await.map_err(io_err(format!("cannot create {}", blobs.display())))?;
        let lib = std::sync::Arc::new(Self {
            store,
            blobs,
            engineconn_home: engineconn_home.to_path_buf(),
            max_upload,
            plugins: RwLock::new(HashMap::new()),
            blob_lock: tokio::sync::Mutex::new(()),
        });
        lib.refresh_plugins().await?;
        Ok(lib)
    }

    pub fn max_upload(&self) -> u64 {
        self.max_upload
    }

    /// Re-scan the plugin materials (Linkis `engineplugin/refreshAll`); returns
    /// `type-version: name(digest prefix)` lines for what was found.
    pub async fn refresh_plugins(&self) -> Result<Vec<String>, HangarError> {
        let home = self.engineconn_home.clone();
        let blobs = self.blobs.clone();
        let _held = self.blob_lock.lock().await;
        let found = blocking(move || scan_plugins(&home, &blobs)).await?;
        let mut summary = Vec::new();
        for ((t, v), refs) in &found {
            for r in refs {
                summary.push(format!("{t}-{v}: {} ({} bytes, sha256 {})", r.name, r.size, &r.sha256[..12]));
            }
        }
        summary.sort();
        if !summary.is_empty() {
            tracing::info!(home = %self.engineconn_home.display(), materials = summary.len(), "plugin materials scanned");
        }
        *self.plugins.write().unwrap_or_else(|p| p.into_inner()) = found;
        Ok(summary)
    }

    /// Store bytes as a blob; returns their digest.
    async fn put_blob(&self, bytes: Vec<u8>) -> Result<String, HangarError> {
        let blobs = self.blobs.clone();
        blocking(move || write_blob(&blobs, &bytes)).await
    }

    /// Where a digest's bytes are kept (they may be absent); None for a malformed digest.
    pub fn blob_path(&self, sha256: &str) -> Option<PathBuf> {
        MaterialRef::valid_digest(sha256).then(|| self.blobs.join(sha256))
    }

    /// Upload a new resource (its first version).
    pub async fn upload(&self, owner: &str, file_name: &str, bytes: Vec<u8>) -> Result<MaterialVersion, HangarError> {
        check_file_name(file_name)?;
        let resource_id = uuid::Uuid::new_v4().to_string();
        self.add_version(owner, &resource_id, file_name, bytes).await
    }

    /// Upload a new version of a resource the user owns.
    pub async fn update(
        &self,
        user: &str,
        resource_id: &str,
        file_name: &str,
        bytes: Vec<u8>,
    ) -> Result<MaterialVersion, HangarError> {
        check_file_name(file_name)?;
        self.owned_versions(user, resource_id).await?;
        self.add_version(user, resource_id, file_name, bytes).await
    }

    async fn add_version(
        &self,
        owner: &str,
        resource_id: &str,
        file_name: &str,
        bytes: Vec<u8>,
    ) -> Result<MaterialVersion, HangarError> {
        if bytes.len() as u64 > self.max_upload {
            return Err(HangarError::invalid(format!(
                "'{file_name}' is {} bytes; the limit is {} bytes",
                bytes.len(),
                self.max_upload
            )));
        }
        let size = bytes.len() as u64;
        let _held = self.blob_lock.lock().await;
        let sha = self.put_blob(bytes).await?;
        let now = chrono_ms();
        let v = self.store.add_material_version(resource_id, owner, file_name, &sha, size, now).await?;
        tracing::info!(%resource_id, version = %v.version, %owner, size, "material stored");
        Ok(v)
    }

    /// All versions of a resource the user owns; unknown and foreign ids are both "not found".
    pub async fn owned_versions(&self, user: &str, resource_id: &str) -> Result<Vec<MaterialVersion>, HangarError> {
        let versions = self.store.material_versions(resource_id).await?;
        if versions.is_empty() || versions.iter().any(|v| v.owner != user) {
            return Err(HangarError::not_found(format!("no resource {resource_id} of user {user}")));
        }
        Ok(versions)
    }

    /// One version (the latest when `version` is `None`) of a user's resource.
    pub async fn version(
        &self,
        user: &str,
        resource_id: &str,
        version: Option<&str>,
    ) -> Result<MaterialVersion, HangarError> {
        let versions = self.owned_versions(user, resource_id).await?;
        let found = match version.filter(|v| !v.is_empty()) {
            Some(want) => versions.into_iter().find(|v| v.version == want),
            None => versions.into_iter().last(),
        };
        found.ok_or_else(|| {
            HangarError::not_found(format!("resource {resource_id} has no version {}", version.unwrap_or("")))
        })
    }

    /// A user's resources, latest version of each.
    pub async fn resources_of(&self, user: &str) -> Result<Vec<MaterialVersion>, HangarError> {
        Ok(self.store.materials_of(user).await?)
    }

    /// Delete a version or a whole resource the user owns; blobs nothing refers to any more go too.
    pub async fn delete(&self, user: &str, resource_id: &str, version: Option<&str>) -> Result<(), HangarError> {
        let versions = self.owned_versions(user, resource_id).await?;
        let doomed: Vec<String> = match version {
            Some(v) => {
                let found = versions
                    .iter()
                    .find(|x| x.version == v)
                    .ok_or_else(|| HangarError::not_found(format!("resource {resource_id} has no version {v}")))?;
                vec![found.sha256.clone()]
            }
            None => versions.iter().map(|v| v.sha256.clone()).collect(),
        };
        let _held = self.blob_lock.lock().await;
        self.store.delete_material(resource_id, version).await?;
        for sha in doomed {
            if !self.store.blob_in_use(&sha).await? && !self.plugin_digest(&sha) {
                let _ = tokio::fs::remove_file(self.blobs.join(&sha)).await;
            }
        }
        Ok(())
    }

    fn plugin_digest(&self, sha: &str) -> bool {
        self.plugins.read().unwrap_or_else(|p| p.into_inner()).values().flatten().any(|r| r.sha256 == sha)
    }

    /// Materials an engine needs: its plugin's `conf`/`lib` for this version
    /// and the user resources its startup parameters name.
    pub async fn materials_for(
        &self,
        user: &str,
        engine_type: &EngineType,
        properties: &BTreeMap<String, String>,
    ) -> Result<Vec<MaterialRef>, HangarError> {
        let mut out = self
            .plugins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(engine_type.engine.clone(), engine_type.version.clone()))
            .cloned()
            .unwrap_or_default();
        let Some(list) = properties.get(RESOURCES_KEY) else { return Ok(out) };
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (id, version) = match item.split_once('@') {
                Some((id, v)) => (id, Some(v)),
                None => (item, None),
            };
            let v = self
                .version(user, id, version)
                .await
                .map_err(|e| HangarError::invalid(format!("startup parameter {RESOURCES_KEY}: {}", e.message)))?;
            if out.iter().any(|m| m.kind == MaterialKind::UserFile && m.name == v.file_name) {
                return Err(HangarError::invalid(format!(
                    "startup parameter {RESOURCES_KEY} names two resources with the file name '{}'",
                    v.file_name
                )));
            }
            out.push(MaterialRef {
                kind: MaterialKind::UserFile,
                name: v.file_name.clone(),
                sha256: v.sha256.clone(),
                size: v.size as u64,
                origin: format!("{}@{}", v.resource_id, v.version),
            });
        }
        Ok(out)
    }
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn write_blob(blobs: &Path, bytes: &[u8]) -> Result<String, HangarError> {
    let (sha, _) = sha256_of(bytes).map_err(io_err("cannot hash".into()))?;
    let target = blobs.join(&sha);
    if target.is_file()
        && sha256_of(std::fs::File::open(&target).map_err(io_err("open blob".into()))?).ok().map(|x| x.0).as_deref()
            == Some(sha.as_str())
    {
        return Ok(sha);
    }
    let tmp = blobs.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        HangarError::internal(format!("cannot store a blob in {}: {e}", blobs.display()))
    })?;
    Ok(sha)
}

/// Pack one directory into a tar archive that depends only on its files'
/// relative paths, contents and executable bits.
pub fn pack_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    b.follow_symlinks(false);
    for rel in files {
        b.append_path_with_name(dir.join(&rel), &rel)?;
    }
    b.into_inner()
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let path = entry.path();
        if ty.is_dir() {
            walk(root, &path, out)?;
        } else if ty.is_file() {
            out.push(path.strip_prefix(root).map_err(std::io::Error::other)?.to_path_buf());
        } else {
            tracing::warn!(path = %path.display(), "skipping a material entry that is not a plain file or directory");
        }
    }
    Ok(())
}

type PluginMaterials = HashMap<(String, String), Vec<MaterialRef>>;

fn scan_plugins(home: &Path, blobs: &Path) -> Result<PluginMaterials, HangarError> {
    let mut out = HashMap::new();
    let Ok(types) = std::fs::read_dir(home) else { return Ok(out) };
    for t in types.flatten() {
        let engine = t.file_name().to_string_lossy().to_string();
        let Ok(versions) = std::fs::read_dir(t.path().join("dist")) else { continue };
        for v in versions.flatten() {
            let dir_name = v.file_name().to_string_lossy().to_string();
            // `v1.2` and `1.2` both name version 1.2; `python3` stays as it is.
            let version = dir_name
                .strip_prefix('v')
                .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
                .unwrap_or(&dir_name);
            let mut refs = Vec::new();
            for name in PLUGIN_DIRS {
                let d = v.path().join(name);
                if !d.is_dir() {
                    continue;
                }
                let bytes = pack_dir(&d).map_err(io_err(format!("cannot pack {}", d.display())))?;
                let size = bytes.len() as u64;
                let sha = write_blob(blobs, &bytes)?;
                refs.push(MaterialRef {
                    kind: MaterialKind::PluginDir,
                    name: name.to_string(),
                    sha256: sha,
                    size,
                    origin: format!("{engine}/dist/{dir_name}/{name}"),
                });
            }
            if !refs.is_empty() {
                out.insert((engine.clone(), version.to_string()), refs);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_deterministic_and_content_sensitive() {
        let d = tempfile::tempdir().expect("tmp");
        let lib = d.path().join("lib");
        std::fs::create_dir_all(lib.join("sub")).expect("mk");
        std::fs::write(lib.join("b.txt"), "b").expect("w");
        std::fs::write(lib.join("sub/a.txt"), "a").expect("w");
        let one = pack_dir(&lib).expect("pack");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(lib.join("b.txt"), "b").expect("rewrite, new mtime");
        assert_eq!(one, pack_dir(&lib).expect("pack"), "mtime does not change the digest");
        std::fs::write(lib.join("b.txt"), "B").expect("w");
        assert_ne!(one, pack_dir(&lib).expect("pack"));
    }

    #[tokio::test]
    async fn plugins_and_user_resources_resolve_to_digests() {
        let d = tempfile::tempdir().expect("tmp");
        let home = d.path().join("plugins");
        std::fs::create_dir_all(home.join("shell/dist/v1/conf")).expect("mk");
        std::fs::write(home.join("shell/dist/v1/conf/linkis-engineconn.properties"), "a=1\n").expect("w");
        let store = Store::open(&format!("sqlite://{}", d.path().join("s.db").display())).await.expect("store");
        let lib = MaterialLibrary::open(store, &d.path().join("m"), &home, 1024).await.expect("open");
        let et = EngineType { engine: "shell".into(), version: "1".into() };
        let none = BTreeMap::new();
        let refs = lib.materials_for("alice", &et, &none).await.expect("refs");
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].name, "conf");
        let blob = lib.blob_path(&refs[0].sha256).expect("blob");
        assert!(blob.is_file());
        let (sha, _) = sha256_of(std::fs::File::open(blob).expect("open")).expect("hash");
        assert_eq!(sha, refs[0].sha256);

        let v1 = lib.upload("alice", "data.csv", b"x,y\n1,2\n".to_vec()).await.expect("upload");
        let v2 = lib.update("alice", &v1.resource_id, "data.csv", b"x,y\n3,4\n".to_vec()).await.expect("update");
        assert_eq!(v2.version, "v000002");
        let mut props = BTreeMap::new();
        props.insert(RESOURCES_KEY.to_string(), format!("{}@v000001", v1.resource_id));
        let refs = lib.materials_for("alice", &et, &props).await.expect("refs");
        assert_eq!(refs[1].sha256, v1.sha256);
        props.insert(RESOURCES_KEY.to_string(), v1.resource_id.clone());
        assert_eq!(lib.materials_for("alice", &et, &props).await.expect("latest")[1].sha256, v2.sha256);
        let err = lib.materials_for("bob", &et, &props).await.expect_err("not bob's");
        assert!(err.message.contains(RESOURCES_KEY) && err.message.contains("no resource"), "{}", err.message);
        assert!(lib.update("bob", &v1.resource_id, "x", vec![1]).await.is_err(), "bob cannot add versions");
        assert!(lib.upload("alice", "../x", vec![1]).await.is_err());
        assert!(lib.upload("alice", "big", vec![0; 2048]).await.expect_err("too big").message.contains("limit"));
        lib.delete("alice", &v1.resource_id, Some("v000001")).await.expect("delete v1");
        assert!(!lib.blob_path(&v1.sha256).expect("path").exists(), "an unused blob goes");
        assert!(lib.blob_path(&v2.sha256).expect("path").is_file());
        assert!(lib.blob_path("../../etc/passwd").is_none());
    }
}
