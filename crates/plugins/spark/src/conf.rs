//! From startup parameters to Spark: what the engine costs (driver on the ECM,
//! executors on a cluster queue), the spark-submit options fixed at the
//! driver JVM's start, and the Spark conf set over py4j.
//!
//! Keys (Linkis's names): `spark.driver.memory` / `spark.driver.cores` /
//! `spark.executor.memory` / `spark.executor.cores` / `spark.executor.instances`,
//! `spark.master`, `spark.conf` (`k=v;k=v`), `wds.linkis.rm.yarnqueue` (the queue),
//! and any other `spark.*` key, passed through.

use std::collections::BTreeMap;
use std::path::Path;

use hangar_engineconn_plugin::ClusterCharge;
use hangar_protocol::resource::parse_bytes;
use hangar_protocol::{HangarError, Resource};

/// Server settings handed to engines as `--conf` (a startup parameter of the
/// same name wins).
pub const MASTER_KEY: &str = "hangar.spark.master";
pub const PYTHON_KEY: &str = "hangar.spark.python";
pub const SQL_LIMIT_KEY: &str = "hangar.spark.sql_default_limit";
pub const QUEUE_KEY: &str = "wds.linkis.rm.yarnqueue";

pub const DRIVER_MEMORY: &str = "spark.driver.memory";
pub const DRIVER_CORES: &str = "spark.driver.cores";
pub const EXECUTOR_MEMORY: &str = "spark.executor.memory";
pub const EXECUTOR_CORES: &str = "spark.executor.cores";
pub const EXECUTOR_INSTANCES: &str = "spark.executor.instances";
pub const MASTER: &str = "spark.master";

const DEFAULT_DRIVER_MEMORY: &str = "1g";
const DEFAULT_DRIVER_CORES: u32 = 2;
const DEFAULT_EXECUTOR_MEMORY: &str = "1g";
const DEFAULT_EXECUTOR_CORES: u32 = 1;
const DEFAULT_EXECUTOR_INSTANCES: u32 = 2;

/// Startup parameters with `spark.conf` expanded (its pairs lose to keys given alone).
pub fn expand(props: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = props.clone();
    if let Some(extra) = props.get("spark.conf") {
        for pair in extra.split(';') {
            if let Some((k, v)) = pair.split_once('=') {
                let k = k.trim();
                if !k.is_empty() {
                    out.entry(k.to_string()).or_insert_with(|| v.trim().to_string());
                }
            }
        }
        out.remove("spark.conf");
    }
    out
}

/// A size; a bare number is gigabytes, as in Linkis.
fn size(props: &BTreeMap<String, String>, key: &str, default: &str) -> Result<(String, u64), HangarError> {
    let raw = props.get(key).map(|s| s.trim()).filter(|s| !s.is_empty()).unwrap_or(default);
    let text = if raw.chars().all(|c| c.is_ascii_digit()) { format!("{raw}g") } else { raw.to_string() };
    let bytes =
        parse_bytes(&text).map_err(|e| HangarError::invalid(format!("startup parameter {key}: {}", e.message)))?;
    Ok((text, bytes))
}

fn count(props: &BTreeMap<String, String>, key: &str, default: u32) -> Result<u32, HangarError> {
    match props.get(key).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(v) => v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
            HangarError::invalid(format!("startup parameter {key} must be a whole number > 0, got '{v}'"))
        }),
    }
}

/// The master: `spark.master`, else the server's `spark.master` setting, else `local[<driver cores>]`.
pub fn master(props: &BTreeMap<String, String>) -> Result<String, HangarError> {
    let given = props.get(MASTER).or_else(|| props.get(MASTER_KEY)).map(|m| m.trim()).filter(|m| !m.is_empty());
    Ok(match given {
        Some(m) => m.to_string(),
        None => format!("local[{}]", count(props, DRIVER_CORES, DEFAULT_DRIVER_CORES)?),
    })
}

/// Whether executors run inside the driver (`local`, `local[N]`, `local[*]`).
pub fn is_local(master: &str) -> bool {
    master == "local" || master.starts_with("local[")
}

/// The driver: its memory and cores, charged on the ECM and the user.
pub fn driver_resource(props: &BTreeMap<String, String>) -> Result<Resource, HangarError> {
    let props = expand(props);
    let (_, memory) = size(&props, DRIVER_MEMORY, DEFAULT_DRIVER_MEMORY)?;
    let mut cores = count(&props, DRIVER_CORES, DEFAULT_DRIVER_CORES)?;
    // local[N] runs its tasks on N threads of this host.
    let m = master(&props)?;
    if let Some(n) = m.strip_prefix("local[").and_then(|r| r.strip_suffix(']')).and_then(|n| n.parse::<u32>().ok()) {
        cores = cores.max(n);
    }
    Ok(Resource::new(memory, cores, 1))
}

/// The executors of a cluster master, charged to its queue's label
/// (`sparkQueue=<queue>@<master>`); none for a local master.
pub fn executors(props: &BTreeMap<String, String>, queue_max: Resource) -> Result<Option<ClusterCharge>, HangarError> {
    let props = expand(props);
    let m = master(&props)?;
    if is_local(&m) {
        return Ok(None);
    }
    let (_, memory) = size(&props, EXECUTOR_MEMORY, DEFAULT_EXECUTOR_MEMORY)?;
    let cores = count(&props, EXECUTOR_CORES, DEFAULT_EXECUTOR_CORES)?;
    let n = count(&props, EXECUTOR_INSTANCES, DEFAULT_EXECUTOR_INSTANCES)?;
    let queue = props.get(QUEUE_KEY).or_else(|| props.get("spark.yarn.queue")).map(|q| q.trim()).unwrap_or("");
    let queue = if queue.is_empty() { "default" } else { queue };
    Ok(Some(ClusterCharge {
        label: format!("sparkQueue={queue}@{m}"),
        max: queue_max,
        resource: Resource::new(memory.saturating_mul(u64::from(n)), cores.saturating_mul(n), n),
    }))
}

/// What starts the driver: spark-submit options (fixed at the JVM's start,
/// and so on its command line: no secrets) and the conf set over py4j.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverLaunch {
    pub submit: Vec<String>,
    pub conf: BTreeMap<String, String>,
}

/// Keys spark-submit must see (they shape the driver JVM itself).
const SUBMIT_KEYS: &[&str] =
    &[DRIVER_MEMORY, "spark.driver.extraJavaOptions", "spark.driver.extraClassPath", "spark.driver.extraLibraryPath"];

/// The driver's launch for an engine in `work_dir` listening on `host`.
pub fn driver_launch(
    props: &BTreeMap<String, String>,
    work_dir: &Path,
    host: &str,
    app_name: &str,
) -> Result<DriverLaunch, HangarError> {
    let props = expand(props);
    let tmp = work_dir.join("tmp");
    let (driver_memory, _) = size(&props, DRIVER_MEMORY, DEFAULT_DRIVER_MEMORY)?;
    // Scratch files stay in the work dir: java.io.tmpdir (block managers'
    // fallback, shuffle spill), derby, no hsperfdata.
    let mut java_opts = format!(
        "-Djava.io.tmpdir={} -Dderby.system.home={} -XX:-UsePerfData",
        tmp.display(),
        tmp.join("derby").display()
    );
    if let Some(extra) = props.get("spark.driver.extraJavaOptions").filter(|v| !v.trim().is_empty()) {
        java_opts = format!("{java_opts} {}", extra.trim());
    }
    let mut submit = vec!["--driver-memory".to_string(), driver_memory, "--driver-java-options".into(), java_opts];
    for (k, flag) in [
        ("spark.driver.extraClassPath", "--driver-class-path"),
        ("spark.driver.extraLibraryPath", "--driver-library-path"),
    ] {
        if let Some(v) = props.get(k).filter(|v| !v.trim().is_empty()) {
            submit.extend([flag.to_string(), v.trim().to_string()]);
        }
    }
    for (k, v) in &props {
        let secret_property = |t: &str| {
            t.strip_prefix("-D").and_then(|t| t.split_once('=')).is_some_and(|(k, _)| hangar_protocol::is_secret_key(k))
        };
        if SUBMIT_KEYS.contains(&k.as_str())
            && (hangar_protocol::is_secret_value(k, v) || v.split_whitespace().any(secret_property))
        {
            return Err(HangarError::invalid(format!(
                "startup parameter {k} would put a secret on the Spark driver's command line; pass it as another spark.* key"
            )));
        }
    }

    let m = master(&props)?;
    let mut conf = BTreeMap::new();
    conf.insert(MASTER.to_string(), m.clone());
    conf.insert("spark.app.name".into(), app_name.to_string());
    conf.insert("spark.submit.deployMode".into(), "client".into());
    conf.insert("spark.driver.host".into(), host.to_string());
    conf.insert("spark.driver.bindAddress".into(), host.to_string());
    conf.insert("spark.local.dir".into(), tmp.join("spark-local").display().to_string());
    conf.insert("spark.sql.warehouse.dir".into(), work_dir.join("spark-warehouse").display().to_string());
    conf.insert("spark.jars.ivy".into(), tmp.join("ivy").display().to_string());
    conf.insert("spark.ui.showConsoleProgress".into(), "false".into());
    conf.insert(
        "spark.hadoop.javax.jdo.option.ConnectionURL".into(),
        format!("jdbc:derby:;databaseName={};create=true", tmp.join("metastore_db").display()),
    );
    if !is_local(&m) {
        let cores = count(&props, EXECUTOR_CORES, DEFAULT_EXECUTOR_CORES)?;
        let n = count(&props, EXECUTOR_INSTANCES, DEFAULT_EXECUTOR_INSTANCES)?;
        let (memory, _) = size(&props, EXECUTOR_MEMORY, DEFAULT_EXECUTOR_MEMORY)?;
        conf.insert(EXECUTOR_MEMORY.into(), memory);
        conf.insert(EXECUTOR_CORES.into(), cores.to_string());
        conf.insert(EXECUTOR_INSTANCES.into(), n.to_string());
        if m.starts_with("spark://") {
            // Standalone has no instance count: cap the cores at what the queue was charged.
            conf.insert("spark.cores.max".into(), (cores * n).to_string());
        }
    }
    // Every other spark.* key as given (a given key wins over the defaults above).
    for (k, v) in &props {
        if k.starts_with("spark.") && !SUBMIT_KEYS.contains(&k.as_str()) && k != DRIVER_CORES {
            conf.insert(k.clone(), v.clone());
        }
    }
    conf.insert(DRIVER_CORES.into(), count(&props, DRIVER_CORES, DEFAULT_DRIVER_CORES)?.to_string());
    Ok(DriverLaunch { submit, conf })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn resources_of_local_and_cluster_masters() {
        let max = Resource::new(64 << 30, 32, 16);
        let local = props(&[(DRIVER_MEMORY, "2"), (DRIVER_CORES, "1"), (MASTER, "local[3]")]);
        assert_eq!(driver_resource(&local).expect("ok"), Resource::new(2 << 30, 3, 1));
        assert_eq!(executors(&local, max).expect("ok"), None);
        let cluster = props(&[
            (MASTER_KEY, "spark://10.0.0.1:7077"),
            ("spark.conf", "spark.executor.memory=2g;spark.executor.instances=3; spark.sql.shuffle.partitions=4"),
            (EXECUTOR_CORES, "2"),
            (QUEUE_KEY, "etl"),
        ]);
        assert_eq!(driver_resource(&cluster).expect("ok"), Resource::new(1 << 30, 2, 1));
        let c = executors(&cluster, max).expect("ok").expect("charged");
        assert_eq!(c.label, "sparkQueue=etl@spark://10.0.0.1:7077");
        assert_eq!(c.resource, Resource::new(6 << 30, 6, 3));
        let err = driver_resource(&props(&[(DRIVER_CORES, "two")])).expect_err("bad");
        assert!(err.message.contains("spark.driver.cores"), "{}", err.message);
    }

    #[test]
    fn launch_keeps_scratch_in_the_work_dir_and_secrets_off_the_command_line() {
        let p = props(&[
            ("spark.conf", "spark.sql.shuffle.partitions=4;spark.executor.instances=3"),
            (MASTER, "spark://h:7077"),
            ("spark.hadoop.fs.s3a.secret.key", "s3cr3t"),
        ]);
        let l = driver_launch(&p, Path::new("/w"), "10.0.0.2", "Linkis-EngineConn-Spark_IDE").expect("ok");
        assert_eq!(l.submit[..2], ["--driver-memory".to_string(), "1g".to_string()]);
        assert!(l.submit[3].contains("-Djava.io.tmpdir=/w/tmp") && l.submit[3].contains("-XX:-UsePerfData"));
        assert!(!l.submit.iter().any(|a| a.contains("s3cr3t")));
        assert_eq!(l.conf["spark.hadoop.fs.s3a.secret.key"], "s3cr3t");
        assert_eq!(l.conf["spark.sql.shuffle.partitions"], "4");
        assert_eq!(l.conf["spark.cores.max"], "3");
        assert_eq!(l.conf["spark.local.dir"], "/w/tmp/spark-local");
        assert_eq!(l.conf["spark.sql.warehouse.dir"], "/w/spark-warehouse");
        assert_eq!(l.conf["spark.driver.host"], "10.0.0.2");
        let bad = props(&[("spark.driver.extraJavaOptions", "-Dpassword=hunter2")]);
        assert!(driver_launch(&bad, Path::new("/w"), "h", "a").is_err());
    }
}
