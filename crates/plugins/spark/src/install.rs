//! Where Spark is and which version it is, and how Hangar installs it: the
//! `pyspark` package from PyPI (it carries Spark's jars and launch scripts)
//! in a virtual environment, run on the machine's Java 17 or 21.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What `hangar spark install` installs unless told otherwise.
pub const DEFAULT_PYSPARK_VERSION: &str = "4.3.0";

/// An installed Spark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparkInstall {
    /// `SPARK_HOME`: the folder with `bin/spark-submit` and `jars/`.
    pub home: PathBuf,
    /// The Spark version, read from its `spark-core` jar.
    pub version: String,
    /// The Python that imports this pyspark (the venv's, when it is one).
    pub python: PathBuf,
}

/// How to install Spark, for error messages.
pub fn install_hint() -> String {
    "install it with `hangar spark install` (pyspark from PyPI into <data_dir>/spark; needs python3 with venv \
     and Java 17 or 21: apt-get install openjdk-17-jre-headless), or set spark.home (HANGAR_SPARK_HOME) to a \
     Spark distribution or a pyspark package folder"
        .to_string()
}

/// The version of the Spark in `home`, from `jars/spark-core_<scala>-<version>.jar`.
pub fn spark_version(home: &Path) -> Option<String> {
    let entries = std::fs::read_dir(home.join("jars")).ok()?;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(rest) = name.strip_prefix("spark-core_")
            && let Some(rest) = rest.strip_suffix(".jar")
            && let Some((_, version)) = rest.split_once('-')
            && !version.contains("tests")
        {
            return Some(version.to_string());
        }
    }
    None
}

/// The pyspark package folder inside a virtual environment made by
/// `hangar spark install` (`<venv>/lib/python3.X/site-packages/pyspark`).
fn pyspark_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.flatten()
        .map(|e| e.path().join("site-packages").join("pyspark"))
        .find(|p| p.join("jars").is_dir() && p.join("bin").join("spark-submit").is_file())
}

/// The venv a pyspark package folder lives in, if it is one.
fn venv_of(home: &Path) -> Option<PathBuf> {
    // <venv>/lib/python3.X/site-packages/pyspark
    let venv = home.parent()?.parent()?.parent()?.parent()?;
    venv.join("pyvenv.cfg").is_file().then(|| venv.to_path_buf())
}

/// Find Spark: `home` (config `spark.home`), else `SPARK_HOME`, else the
/// install `hangar spark install` made under `data_dir`; its Python is
/// `python` (config), else the venv's, else `python3`.
pub fn find(home: &str, python: &str, data_dir: &Path) -> Result<SparkInstall, String> {
    let (home, from) = if !home.trim().is_empty() {
        (PathBuf::from(home.trim()), "spark.home")
    } else if let Some(h) = std::env::var_os("SPARK_HOME").filter(|h| !h.is_empty()) {
        (PathBuf::from(h), "SPARK_HOME")
    } else {
        let venv = data_dir.join("spark").join("venv");
        match pyspark_in_venv(&venv) {
            Some(h) => (h, "hangar spark install"),
            None => return Err(format!("Spark is not installed: {}", install_hint())),
        }
    };
    let home = std::path::absolute(&home).unwrap_or(home);
    // A venv given as the home: its pyspark.
    let home = if home.join("pyvenv.cfg").is_file() { pyspark_in_venv(&home).unwrap_or(home) } else { home };
    if !home.join("bin").join("spark-submit").is_file() {
        return Err(format!("{} ({from}) has no bin/spark-submit: {}", home.display(), install_hint()));
    }
    let version = spark_version(&home).ok_or_else(|| {
        format!("cannot tell the Spark version of {} ({from}): no jars/spark-core_*.jar", home.display())
    })?;
    let python = if !python.trim().is_empty() {
        PathBuf::from(python.trim())
    } else if let Some(venv) = venv_of(&home) {
        venv.join("bin").join("python")
    } else {
        PathBuf::from("python3")
    };
    Ok(SparkInstall { home, version, python })
}

/// Install pyspark `version` into the virtual environment `<dir>/venv`
/// (nothing to do when it is there already). Says what it does on stderr.
pub fn install(dir: &Path, version: &str) -> Result<SparkInstall, String> {
    let dir = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = dir.as_path();
    let venv = dir.join("venv");
    if let Some(home) = pyspark_in_venv(&venv)
        && spark_version(&home).as_deref() == Some(version)
    {
        eprintln!("spark: pyspark {version} is already installed in {}", venv.display());
        return find(&home.display().to_string(), "", dir);
    }
    let java = Command::new("java").arg("-version").output();
    match java {
        Ok(out) if out.status.success() => {}
        _ => {
            return Err("Spark needs Java 17 or 21 and `java` is not on PATH: install it (Debian: apt-get install \
                        openjdk-17-jre-headless) and run this again"
                .into());
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let run = |what: &str, cmd: &mut Command| -> Result<(), String> {
        eprintln!("spark: {what}");
        let st = cmd.status().map_err(|e| format!("{what}: {e}"))?;
        if st.success() { Ok(()) } else { Err(format!("{what} failed ({st})")) }
    };
    if !venv.join("bin").join("python").is_file() {
        let base = base_python();
        run(&format!("{base} -m venv {}", venv.display()), Command::new(&base).args(["-m", "venv"]).arg(&venv))
            .map_err(|e| format!("{e}; Debian needs python3-venv"))?;
    }
    let pip = venv.join("bin").join("pip");
    run(
        &format!("pip install pyspark=={version} (from PyPI, about 450 MB)"),
        Command::new(&pip).args(["install", "--quiet", "--disable-pip-version-check", &format!("pyspark=={version}")]),
    )?;
    let home =
        pyspark_in_venv(&venv).ok_or_else(|| format!("pyspark is not in {} after pip install", venv.display()))?;
    find(&home.display().to_string(), "", dir)
}

/// The Python a venv is made from: one that engines running as other
/// accounts can run too (a venv links to its base interpreter, and a
/// version manager's under a private home is out of their reach).
fn base_python() -> String {
    use std::os::unix::fs::PermissionsExt;
    let others_can_run = |p: &Path| -> bool {
        let Ok(real) = std::fs::canonicalize(p) else { return false };
        real.ancestors().all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    };
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("python3")).collect::<Vec<_>>())
        .unwrap_or_default();
    let candidates = on_path.into_iter().chain(["/usr/bin/python3".into(), "/usr/local/bin/python3".into()]);
    for c in candidates {
        if c.is_file() && others_can_run(&c) {
            return c.display().to_string();
        }
    }
    "python3".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_the_core_jar_and_the_venv_layout() {
        let dir = tempfile::tempdir().expect("tmp");
        let home = dir.path().join("spark").join("venv").join("lib").join("python3.11").join("site-packages");
        let home = home.join("pyspark");
        std::fs::create_dir_all(home.join("jars")).expect("jars");
        std::fs::create_dir_all(home.join("bin")).expect("bin");
        std::fs::write(home.join("bin").join("spark-submit"), "").expect("submit");
        std::fs::write(dir.path().join("spark").join("venv").join("pyvenv.cfg"), "").expect("cfg");
        assert_eq!(spark_version(&home), None);
        std::fs::write(home.join("jars").join("spark-core_2.13-4.0.1.jar"), "").expect("jar");
        std::fs::write(home.join("jars").join("spark-core_2.13-4.0.1-tests.jar"), "").expect("jar");
        assert_eq!(spark_version(&home).as_deref(), Some("4.0.1"));
        // Found under the data dir when nothing is configured (and SPARK_HOME is unset in tests).
        if std::env::var_os("SPARK_HOME").is_none() {
            let found = find("", "", dir.path()).expect("found");
            assert_eq!(found.home, home);
            assert_eq!(found.version, "4.0.1");
            assert_eq!(found.python, dir.path().join("spark").join("venv").join("bin").join("python"));
        }
        let err = find(&dir.path().join("nope").display().to_string(), "", dir.path()).expect_err("no spark there");
        assert!(err.contains("no bin/spark-submit") && err.contains("hangar spark install"), "{err}");
    }
}
