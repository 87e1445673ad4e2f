//! File access below a trusted root that never follows a symlink.
//!
//! Users own parts of the data dir (their work and result folders) and can put
//! symlinks there; the server runs as a more privileged account. Every path
//! below a trusted root is therefore walked one component at a time with
//! `openat(O_NOFOLLOW)`: a symlink anywhere (or `..`, or an absolute part) is
//! refused with [`std::io::ErrorKind::PermissionDenied`]-free
//! [`FsGuardError::Symlink`], and ownership and modes are changed on open file
//! descriptors (`fchown`, `fchmod`), never by path.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::{Mode, fchmod, mkdirat};
use nix::unistd::{Gid, Uid, fchown};

/// Why a guarded path could not be used.
#[derive(Debug)]
pub enum FsGuardError {
    /// A component is a symlink (or the path has `..` or is absolute).
    Symlink(String),
    /// Missing, or of the wrong kind.
    NotFound(String),
    Io(String, std::io::Error),
}

impl std::fmt::Display for FsGuardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsGuardError::Symlink(p) => write!(f, "{p}: a symbolic link or '..' in the path is not allowed"),
            FsGuardError::NotFound(p) => write!(f, "{p}: not found"),
            FsGuardError::Io(p, e) => write!(f, "{p}: {e}"),
        }
    }
}

impl std::error::Error for FsGuardError {}

impl FsGuardError {
    fn from_errno(what: &str, e: Errno) -> Self {
        match e {
            // O_NOFOLLOW on a symlink gives ELOOP; O_DIRECTORY on one, ENOTDIR.
            Errno::ELOOP | Errno::EMLINK => FsGuardError::Symlink(what.to_string()),
            Errno::ENOENT | Errno::ENOTDIR => FsGuardError::NotFound(what.to_string()),
            e => FsGuardError::Io(what.to_string(), std::io::Error::from(e)),
        }
    }
}

/// Owner and mode to give what a call creates (and the last component).
#[derive(Debug, Clone, Copy)]
pub struct Perms {
    pub mode: u32,
    pub owner: Option<(u32, u32)>,
}

impl Perms {
    pub const fn mode(mode: u32) -> Self {
        Self { mode, owner: None }
    }
}

fn parts(rel: &Path) -> Result<Vec<&std::ffi::OsStr>, FsGuardError> {
    rel.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(FsGuardError::Symlink(rel.display().to_string())),
        })
        .collect()
}

fn open_root(root: &Path) -> Result<OwnedFd, FsGuardError> {
    open(root, OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| FsGuardError::from_errno(&root.display().to_string(), e))
}

fn open_dir_at(dir: &OwnedFd, name: &std::ffi::OsStr, shown: &str) -> Result<OwnedFd, FsGuardError> {
    openat(dir, name, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| match e {
            // A symlink named as a directory with O_NOFOLLOW|O_DIRECTORY.
            Errno::ENOTDIR if is_symlink_at(dir, name) => FsGuardError::Symlink(shown.to_string()),
            e => FsGuardError::from_errno(shown, e),
        })
}

fn is_symlink_at(dir: &OwnedFd, name: &std::ffi::OsStr) -> bool {
    nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK)
}

fn apply(fd: impl AsFd + Copy, perms: Perms, shown: &str) -> Result<(), FsGuardError> {
    if let Some((uid, gid)) = perms.owner {
        fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| FsGuardError::Io(shown.to_string(), e.into()))?;
    }
    fchmod(fd, Mode::from_bits_truncate(perms.mode)).map_err(|e| FsGuardError::Io(shown.to_string(), e.into()))
}

/// Open the directory `root/rel`, refusing a symlink in any component of `rel`.
pub fn open_dir(root: &Path, rel: &Path) -> Result<OwnedFd, FsGuardError> {
    let shown = root.join(rel).display().to_string();
    let mut fd = open_root(root)?;
    for p in parts(rel)? {
        fd = open_dir_at(&fd, p, &shown)?;
    }
    Ok(fd)
}

/// Create `root/rel` and any missing directories on the way: each new one
/// with `parents`, the last one (new or not) with `last`. Returns it open.
pub fn create_dirs(root: &Path, rel: &Path, parents: Perms, last: Perms) -> Result<OwnedFd, FsGuardError> {
    let shown = root.join(rel).display().to_string();
    let mut fd = open_root(root)?;
    let parts = parts(rel)?;
    for (i, p) in parts.iter().enumerate() {
        let is_last = i + 1 == parts.len();
        let perms = if is_last { last } else { parents };
        let created = match mkdirat(&fd, *p, Mode::from_bits_truncate(perms.mode)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(FsGuardError::from_errno(&shown, e)),
        };
        fd = open_dir_at(&fd, p, &shown)?;
        if created || is_last {
            apply(&fd, perms, &shown)?;
        }
    }
    Ok(fd)
}

/// Open (creating it if missing, appending) the regular file `name` in an
/// open directory, never through a symlink; a file it creates gets `perms`.
pub fn append_file_at(dir: &OwnedFd, name: &str, perms: Perms) -> Result<File, FsGuardError> {
    write_file_at(dir, name, OFlag::O_APPEND, perms)
}

/// Create (or truncate) the regular file `name` in an open directory for
/// writing, never through a symlink; it gets `perms`.
pub fn create_file_at(dir: &OwnedFd, name: &str, perms: Perms) -> Result<File, FsGuardError> {
    write_file_at(dir, name, OFlag::O_TRUNC, perms)
}

fn write_file_at(dir: &OwnedFd, name: &str, how: OFlag, perms: Perms) -> Result<File, FsGuardError> {
    let flags = OFlag::O_WRONLY | how | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dir, name, flags, Mode::from_bits_truncate(perms.mode))
        .map_err(|e| FsGuardError::from_errno(name, e))?;
    let file = File::from(fd);
    let md = file.metadata().map_err(|e| FsGuardError::Io(name.to_string(), e))?;
    if !md.is_file() {
        return Err(FsGuardError::NotFound(name.to_string()));
    }
    apply(&file, perms, name)?;
    Ok(file)
}

/// Rename `from` to `to` inside one open directory (atomic; `to` is replaced).
pub fn rename_at(dir: &OwnedFd, from: &str, to: &str) -> Result<(), FsGuardError> {
    nix::fcntl::renameat(dir, from, dir, to).map_err(|e| FsGuardError::from_errno(to, e))
}

/// Remove the file `name` from an open directory (a link is removed, not followed).
pub fn remove_file_at(dir: &OwnedFd, name: &str) -> Result<(), FsGuardError> {
    nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
        .map_err(|e| FsGuardError::from_errno(name, e))
}

/// Open the regular file `root/rel` for reading, refusing a symlink in any
/// component (the last one too).
pub fn open_file(root: &Path, rel: &Path) -> Result<File, FsGuardError> {
    let shown = root.join(rel).display().to_string();
    let parts = parts(rel)?;
    let Some((name, dirs)) = parts.split_last() else { return Err(FsGuardError::NotFound(shown)) };
    let mut fd = open_root(root)?;
    for p in dirs {
        fd = open_dir_at(&fd, p, &shown)?;
    }
    let f =
        openat(&fd, *name, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK, Mode::empty())
            .map_err(|e| FsGuardError::from_errno(&shown, e))?;
    let file = File::from(f);
    let md = file.metadata().map_err(|e| FsGuardError::Io(shown.clone(), e))?;
    if !md.is_file() {
        return Err(FsGuardError::NotFound(shown));
    }
    Ok(file)
}

/// Read the regular file `root/rel` (see [`open_file`]), at most `limit` bytes
/// from its end when it is longer.
pub fn read_tail(root: &Path, rel: &Path, limit: u64) -> Result<Vec<u8>, FsGuardError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = open_file(root, rel)?;
    let shown = || root.join(rel).display().to_string();
    let len = f.metadata().map_err(|e| FsGuardError::Io(shown(), e))?.len();
    if len > limit {
        f.seek(SeekFrom::Start(len - limit)).map_err(|e| FsGuardError::Io(shown(), e))?;
    }
    let mut out = Vec::new();
    f.take(limit).read_to_end(&mut out).map_err(|e| FsGuardError::Io(shown(), e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn creates_with_modes_and_reads_back() {
        let t = tempfile::tempdir().expect("tmp");
        let fd = create_dirs(t.path(), Path::new("a/b/c"), Perms::mode(0o711), Perms::mode(0o700)).expect("mk");
        let mut f = append_file_at(&fd, "log", Perms::mode(0o600)).expect("file");
        std::io::Write::write_all(&mut f, b"hello").expect("w");
        let md = |p: &str| std::fs::metadata(t.path().join(p)).expect("md").permissions().mode() & 0o777;
        assert_eq!((md("a"), md("a/b"), md("a/b/c"), md("a/b/c/log")), (0o711, 0o711, 0o700, 0o600));
        assert_eq!(read_tail(t.path(), Path::new("a/b/c/log"), 3).expect("read"), b"llo");
        assert_eq!(read_tail(t.path(), Path::new("a/b/c/log"), 100).expect("read"), b"hello");
    }

    #[test]
    fn symlinks_anywhere_are_refused() {
        let t = tempfile::tempdir().expect("tmp");
        let outside = tempfile::tempdir().expect("tmp");
        std::fs::write(outside.path().join("secret"), "s").expect("w");
        std::fs::create_dir_all(t.path().join("u/d")).expect("mk");
        symlink(outside.path(), t.path().join("u/link")).expect("ln");
        symlink(outside.path().join("secret"), t.path().join("u/d/file")).expect("ln");
        let sym = |r: Result<File, FsGuardError>| matches!(r, Err(FsGuardError::Symlink(_)));
        assert!(sym(open_file(t.path(), Path::new("u/link/secret"))));
        assert!(sym(open_file(t.path(), Path::new("u/d/file"))));
        assert!(sym(open_file(t.path(), Path::new("u/../u/d/file"))));
        assert!(matches!(open_dir(t.path(), Path::new("u/link")), Err(FsGuardError::Symlink(_))));
        let mk = create_dirs(t.path(), Path::new("u/link/new"), Perms::mode(0o700), Perms::mode(0o700));
        assert!(matches!(mk, Err(FsGuardError::Symlink(_))), "{mk:?}");
        assert!(!outside.path().join("new").exists());
        let fd = open_dir(t.path(), Path::new("u/d")).expect("dir");
        assert!(matches!(append_file_at(&fd, "file", Perms::mode(0o600)), Err(FsGuardError::Symlink(_))));
        assert_eq!(std::fs::read_to_string(outside.path().join("secret")).expect("r"), "s");
        assert!(matches!(open_file(t.path(), Path::new("u/missing")), Err(FsGuardError::NotFound(_))));
        assert!(matches!(open_file(t.path(), Path::new("u/d")), Err(FsGuardError::NotFound(_))));
    }
}
