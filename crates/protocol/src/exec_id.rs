//! Linkis execIDs: `exec_id` + len3(app) + len3(instance) + app + instance + shortExecID.
//!
//! Hangar's shortExecID is `<creator>_<user>_<engineType>_<taskID>`, so an
//! execID always names its taskID and survives an Entrance restart.

use crate::error::HangarError;

pub const ENTRANCE_APP_NAME: &str = "linkis-cg-entrance";

/// Build an execID for a job of the given Entrance instance (`host:port`).
pub fn build(instance: &str, creator: &str, user: &str, engine: &str, task_id: i64) -> String {
    format!(
        "exec_id{:03}{:03}{}{}{}_{}_{}_{}",
        ENTRANCE_APP_NAME.len(),
        instance.len(),
        ENTRANCE_APP_NAME,
        instance,
        creator,
        user,
        engine,
        task_id
    )
}

/// The parts of a parsed execID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecId {
    pub app_name: String,
    pub instance: String,
    pub short_id: String,
    pub task_id: i64,
}

/// Parse an execID produced by [`build`].
pub fn parse(exec_id: &str) -> Result<ExecId, HangarError> {
    let bad = || HangarError::not_found(format!("'{exec_id}' is not a valid execID"));
    let rest = exec_id.strip_prefix("exec_id").ok_or_else(bad)?;
    // Six ASCII digits (a multi-byte character among them once panicked the slicing below).
    if rest.len() < 6 || !rest.as_bytes()[..6].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let app_len: usize = rest[..3].parse().map_err(|_| bad())?;
    let inst_len: usize = rest[3..6].parse().map_err(|_| bad())?;
    let body = &rest[6..];
    let end = app_len.checked_add(inst_len).ok_or_else(bad)?;
    if body.len() <= end || !body.is_char_boundary(app_len) || !body.is_char_boundary(end) {
        return Err(bad());
    }
    let short_id = &body[end..];
    let task_id = short_id.rsplit('_').next().and_then(|t| t.parse::<i64>().ok()).filter(|t| *t > 0).ok_or_else(bad)?;
    Ok(ExecId {
        app_name: body[..app_len].to_string(),
        instance: body[app_len..end].to_string(),
        short_id: short_id.to_string(),
        task_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = build("127.0.0.1:9001", "IDE", "alice", "shell", 42);
        assert_eq!(id, "exec_id018014linkis-cg-entrance127.0.0.1:9001IDE_alice_shell_42");
        let p = parse(&id).expect("parse");
        assert_eq!(p.task_id, 42);
        assert_eq!(p.instance, "127.0.0.1:9001");
        assert_eq!(p.short_id, "IDE_alice_shell_42");
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "exec_id",
            "exec_id999999x",
            "exec_id018014linkis",
            "12",
            "exec_idé0001",
            "exec_id000000_0",
            "exec_id2\u{d036}2x",
        ] {
            assert!(parse(s).is_err(), "{s}");
        }
    }
}
