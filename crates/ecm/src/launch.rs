//! One engine's launch: its account, its folders (created without following
//! a link, handed to the account at the end), its materials and options, an
//! environment from an allowlist, `engineConnExec.sh`, and the process with
//! its secrets on standard input and its logs opened by the ECM.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use hangar_engineconn_plugin::{EngineConnBuildRequest, find_plugin};
use hangar_protocol::HangarError;
use hangar_protocol::endpoints::Endpoints;
use tokio::sync::watch;

use crate::{
    Account, Ecm, INHERITED_ENV, Launched, PARENT_DIR, PLUGIN_PROPERTIES, PRIVATE_DIR, ProcessRecord, TICKET_ENV,
    proc_start_time, start_failed,
};

impl Ecm {
    pub(crate) async fn launch_inner(
        self: &Arc<Self>,
        req: EngineConnBuildRequest,
        manager_url: &str,
        engine_conf: &[(String, String)],
    ) -> Result<Launched, HangarError> {
        let plugin = find_plugin(&self.plugins, &req.labels)?;
        let launch = plugin.build_launch(&req)?;
        if launch.command.is_empty() {
            return Err(start_failed(format!("plugin {} gave an empty launch command", plugin.engine_type())));
        }
        for var in &launch.necessary_environment {
            if std::env::var_os(var).is_none() {
                return Err(start_failed(format!(
                    "necessary environment variable {var} is not set on ECM {}",
                    self.cfg.instance
                )));
            }
        }
        let work_dir = self.work_dir(&req)?;
        let log_dir = work_dir.join("logs");
        // The account first: an engine that may not run fails before any folder exists.
        let account = self.account_for(&req.user).await?;
        // Root-owned parents (traverse only), the work dir root's until it is
        // handed over: nothing below is reached through a user's symlink.
        let rel = work_dir.strip_prefix(&self.cfg.engineconn_root).unwrap_or(&work_dir).to_path_buf();
        let root = self.cfg.engineconn_root.clone();
        let logs = tokio::task::spawn_blocking(move || -> Result<std::os::fd::OwnedFd, HangarError> {
            let dir = |r: &Path| {
                hangar_fsguard::create_dirs(
                    &root,
                    r,
                    hangar_fsguard::Perms::mode(PARENT_DIR),
                    hangar_fsguard::Perms::mode(PRIVATE_DIR),
                )
                .map_err(|e| start_failed(format!("cannot create the work dir: {e}")))
            };
            dir(&rel)?;
            dir(&rel.join("tmp"))?;
            dir(&rel.join("logs"))
        })
        .await
        .map_err(|e| HangarError::internal(e.to_string()))??;
        // Materials first (`conf`, `lib` and `resources/*` become links into
        // the shared cache), then empty `conf`/`lib` where the plugin has none.
        let fetched_before = self.materials.stats.fetches.load(std::sync::atomic::Ordering::Relaxed);
        // The addresses this host is known to reach, else the request's.
        let manager = match &self.cfg.manager_urls {
            Some(urls) => urls.clone(),
            None => Endpoints::parse(manager_url).unwrap_or_else(|_| Endpoints::single(manager_url)),
        };
        self.materials.localize(&req.materials, &manager, &work_dir).await?;
        // Only new bytes can push the cache over its limit.
        if self.materials.stats.fetches.load(std::sync::atomic::Ordering::Relaxed) != fetched_before {
            let this = self.clone();
            tokio::spawn(async move {
                let in_use = this.materials_in_use().await;
                this.materials.prune(in_use).await;
            });
        }
        for d in ["conf", "lib"] {
            let p = work_dir.join(d);
            if tokio::fs::symlink_metadata(&p).await.is_err() {
                tokio::fs::create_dir_all(&p)
                    .await
                    .map_err(|e| start_failed(format!("cannot create {}: {e}", p.display())))?;
            }
        }
        // Startup parameters win over the plugin's own defaults
        // (`conf/linkis-engineconn.properties`), which win over the server's.
        let mut conf: BTreeMap<String, String> = req.properties.clone();
        let plugin_conf = work_dir.join("conf").join(PLUGIN_PROPERTIES);
        if let Ok(text) = tokio::fs::read_to_string(&plugin_conf).await {
            for (k, v) in parse_properties(&text) {
                conf.entry(k).or_insert(v);
            }
        }
        for (k, v) in engine_conf {
            conf.entry(k.clone()).or_insert_with(|| v.clone());
        }
        conf.insert(hangar_protocol::rpc::ECM_INSTANCE_CONF.into(), self.cfg.instance.clone());
        // Engines listen on the host the ECM is reached at (other hosts call them there).
        let host = self.cfg.instance.rsplit_once(':').map_or(self.cfg.instance.as_str(), |(h, _)| h);
        conf.insert(hangar_protocol::rpc::ENGINE_BIND_HOST_CONF.into(), host.trim_matches(['[', ']']).to_string());
        conf.insert("hangar.resource.memory".into(), req.resource.memory.to_string());
        conf.insert("hangar.resource.cores".into(), req.resource.cores.to_string());
        conf.insert("hangar.resource.instances".into(), req.resource.instances.to_string());
        if let Some(c) = &req.cluster
            && let Ok(json) = serde_json::to_string(c)
        {
            conf.insert(hangar_protocol::rpc::CLUSTER_CHARGE_CONF.into(), json);
        }

        let mut args: Vec<String> = launch.command.clone();
        args.extend(["--ticket-id".into(), req.ticket_id.clone(), "--user".into(), req.user.clone()]);
        args.extend(["--manager-url".into(), manager.joined()]);
        args.extend(["--work-dir".into(), work_dir.display().to_string()]);
        for pair in req.labels.to_pairs() {
            args.extend(["--label".into(), pair]);
        }
        // Secrets (the engine key, passwords) go to the engine on its standard
        // input, never onto its command line, into its environment or on disk.
        let (secret, public): (BTreeMap<String, String>, BTreeMap<String, String>) =
            conf.into_iter().partition(|(k, v)| hangar_protocol::is_secret_value(k, v));
        for (k, v) in &public {
            args.extend(["--conf".into(), format!("{k}={v}")]);
        }
        let env = self.engine_env(&launch, &req, &work_dir, account.as_ref());
        if let Some(u) = &account {
            // Drop to the account's uid, gid and groups right before the engine starts.
            let mut wrapped = vec![
                "setpriv".to_string(),
                format!("--reuid={}", u.uid),
                format!("--regid={}", u.gid),
                "--init-groups".to_string(),
                "--".to_string(),
            ];
            wrapped.extend(args);
            args = wrapped;
        }
        let script_path = work_dir.join("engineConnExec.sh");
        tokio::fs::write(&script_path, startup_script(&env, &args))
            .await
            .map_err(|e| start_failed(format!("cannot write {}: {e}", script_path.display())))?;
        let owner = account.as_ref().map(|a| (a.uid, a.gid));
        let (stdout, stderr) = {
            let dir = work_dir.clone();
            tokio::task::spawn_blocking(move || -> Result<(std::fs::File, std::fs::File), HangarError> {
                let perms = hangar_fsguard::Perms { mode: 0o600, owner };
                let open = |name: &str| {
                    hangar_fsguard::append_file_at(&logs, name, perms)
                        .map_err(|e| start_failed(format!("cannot open the engine's {name} log: {e}")))
                };
                let files = (open("stdout")?, open("stderr")?);
                if let Some((uid, gid)) = owner {
                    chown_tree(&dir, nix::unistd::Uid::from_raw(uid), nix::unistd::Gid::from_raw(gid))
                        .map_err(|e| start_failed(format!("cannot hand {} to uid {uid}: {e}", dir.display())))?;
                }
                Ok(files)
            })
            .await
            .map_err(|e| HangarError::internal(e.to_string()))??
        };

        let mut cmd = tokio::process::Command::new("/bin/bash");
        cmd.arg(&script_path)
            .current_dir(&work_dir)
            .env_clear()
            .env("PATH", env.get("PATH").map_or("/usr/bin:/bin", String::as_str))
            .stdin(Stdio::piped())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| start_failed(format!("cannot run {}: {e}", script_path.display())))?;
        let pid = child.id().ok_or_else(|| start_failed("the engine process vanished at once".into()))?;
        let secrets = hangar_protocol::credential::EngineSecrets {
            engine_key: req.engine_key.expose().to_string(),
            conf: secret,
        };
        if let Some(mut stdin) = child.stdin.take() {
            let bytes = serde_json::to_vec(&secrets).unwrap_or_default();
            // The engine reads it at once; a dead engine is reported by the watcher below.
            if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut stdin, &bytes).await {
                tracing::warn!(ticket = %req.ticket_id, error = %e, "cannot hand the engine its secrets");
            }
        }
        let start_time = proc_start_time(pid).unwrap_or(0);
        let (exit_tx, exit_rx) = watch::channel(false);
        self.engines().insert(
            req.ticket_id.clone(),
            ProcessRecord { pid, start_time, killing: false, work_dir: work_dir.clone(), exited: exit_rx },
        );
        let record = serde_json::json!({"ticketId": req.ticket_id, "pid": pid, "startTime": start_time, "user": req.user, "ecm": self.cfg.instance});
        // Never through a link the engine's account may have put there.
        let record_path = work_dir.join("engine.json");
        let written = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&record_path).await;
        match written {
            Ok(mut f) => {
                let _ = tokio::io::AsyncWriteExt::write_all(&mut f, record.to_string().as_bytes()).await;
            }
            Err(e) => tracing::warn!(ticket = %req.ticket_id, error = %e, "cannot write engine.json"),
        }
        tracing::info!(ticket = %req.ticket_id, pid, work_dir = %work_dir.display(), account = ?account.as_ref().map(|a| &a.name), "engine process started");

        let this = self.clone();
        let ticket = req.ticket_id.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = exit_tx.send(true);
            let how = match &status {
                Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(s)) {
                    (Some(c), _) => format!("exit code {c}"),
                    (None, Some(sig)) => format!("signal {sig}"),
                    _ => "an unknown status".into(),
                },
                Err(e) => format!("an error waiting for it: {e}"),
            };
            let retry = matches!(status.as_ref().ok().and_then(|s| s.code()), Some(143) | None);
            this.report_exit(&ticket, pid, &how, retry).await;
        });
        Ok(Launched { pid, work_dir, log_dir })
    }

    /// The engine's whole environment: a short allowlist from the ECM's own
    /// (locale, time zone, `PATH`, `ecm.engine_env_passthrough`, the plugin's
    /// necessary variables), the plugin's variables, the account's identity
    /// and the work dir's folders. Nothing else: no server secret.
    fn engine_env(
        &self,
        launch: &hangar_engineconn_plugin::EngineConnLaunchRequest,
        req: &EngineConnBuildRequest,
        work_dir: &Path,
        account: Option<&Account>,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for (k, v) in std::env::vars() {
            let inherited = INHERITED_ENV.contains(&k.as_str())
                || k.starts_with("LC_")
                || self.cfg.env_passthrough.contains(&k)
                || launch.necessary_environment.contains(&k);
            if inherited {
                env.insert(k, v);
            }
        }
        env.extend(launch.environment.clone());
        let (name, home) = match (account, &self.own_account) {
            (Some(a), _) => (a.name.clone(), a.home.clone().unwrap_or_else(|| work_dir.to_path_buf())),
            (None, Some((name, home))) => (name.clone(), home.clone()),
            (None, None) => (req.user.clone(), work_dir.to_path_buf()),
        };
        env.insert("USER".into(), name.clone());
        env.insert("LOGNAME".into(), name);
        env.insert("HOME".into(), home.display().to_string());
        env.insert("PWD".into(), work_dir.display().to_string());
        env.insert("LOG_DIRS".into(), work_dir.join("logs").display().to_string());
        env.insert("TEMP_DIRS".into(), work_dir.join("tmp").display().to_string());
        env.insert("TMPDIR".into(), work_dir.join("tmp").display().to_string());
        env.insert("HANGAR_CONF_DIR".into(), work_dir.join("conf").display().to_string());
        env.insert("HANGAR_LIB_DIR".into(), work_dir.join("lib").display().to_string());
        env.insert("HANGAR_RESOURCES_DIR".into(), work_dir.join("resources").display().to_string());
        env.insert("HANGAR_USER".into(), req.user.clone());
        env.insert(TICKET_ENV.into(), req.ticket_id.clone());
        env
    }

    /// The account a user's engines run as (None: the ECM's own).
    async fn account_for(&self, user: &str) -> Result<Option<Account>, HangarError> {
        if !self.cfg.identity.switches() {
            return Ok(None);
        }
        let identity = self.cfg.identity.clone();
        let name = user.to_string();
        tokio::task::spawn_blocking(move || identity.account_for(&name))
            .await
            .map_err(|e| HangarError::internal(e.to_string()))?
            .map_err(|m| start_failed(format!("{m} (ECM {})", self.cfg.instance)))
    }
}

/// Hand a work dir to the engine's user. Links into the shared material
/// cache are re-owned themselves, never followed: the cache stays the ECM's.
fn chown_tree(dir: &Path, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid.as_raw()), Some(gid.as_raw()))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            chown_tree(&entry.path(), uid, gid)?;
        } else {
            std::os::unix::fs::lchown(entry.path(), Some(uid.as_raw()), Some(gid.as_raw()))?;
        }
    }
    Ok(())
}

/// `key=value` (or `key: value`) lines of a Java-style properties file;
/// `#` and `!` start comments.
fn parse_properties(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .filter_map(|l| {
            let (k, v) = l.split_once('=').or_else(|| l.split_once(':'))?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The generated `engineConnExec.sh`.
fn startup_script(env: &BTreeMap<String, String>, args: &[String]) -> String {
    let mut s = String::from(
        "#!/usr/bin/env bash\n# Generated by the Hangar EngineConnManager; kept for debugging.\nulimit -c 0\n",
    );
    for (k, v) in env {
        s.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    let cmd: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    s.push_str(&format!("exec {}\n", cmd.join(" ")));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_like_java() {
        let p = parse_properties("# c\n! c\na=1\n b : two words \n\nbad line\nc=x=y\n");
        assert_eq!(p, vec![("a".into(), "1".into()), ("b".into(), "two words".into()), ("c".into(), "x=y".into())]);
    }

    #[test]
    fn script_quotes_everything() {
        let mut env = BTreeMap::new();
        env.insert("A".to_string(), "it's $HOME".to_string());
        let s = startup_script(&env, &["/bin/echo".into(), "a b".into()]);
        assert!(s.contains("export A='it'\\''s $HOME'"));
        assert!(s.contains("exec '/bin/echo' 'a b'"));
    }
}
