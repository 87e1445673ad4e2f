//! Log lines in Linkis's format `yyyy-MM-dd HH:mm:ss.SSS LEVEL message`, and
//! the Entrance's split of a log into the `[ERROR, WARN, INFO, ALL]` array.

use chrono::{DateTime, Local};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

/// Format one line (no trailing newline).
pub fn format(level: Level, msg: &str) -> String {
    format_at(Local::now(), level, msg)
}

pub fn format_at(at: DateTime<Local>, level: Level, msg: &str) -> String {
    format!("{} {} {}", at.format("%Y-%m-%d %H:%M:%S%.3f"), level.as_str(), msg)
}

/// The level of a formatted line; lines without a recognised prefix are INFO.
pub fn level_of(line: &str) -> Level {
    // "2026-11-22 10:00:00.000 " is 24 bytes; an optional "SYSTEM-" may follow.
    let Some(rest) = line.get(24..) else { return Level::Info };
    let b = line.as_bytes();
    let looks_dated = b.len() > 23
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b' '
        && b[13] == b':'
        && b[19] == b'.'
        && b[23] == b' ';
    if !looks_dated {
        return Level::Info;
    }
    let rest = rest.strip_prefix("SYSTEM-").unwrap_or(rest);
    if rest.starts_with("ERROR ") {
        Level::Error
    } else if rest.starts_with("WARN ") {
        Level::Warn
    } else {
        Level::Info
    }
}

/// Linkis's 4-element log array: ERROR, WARN, INFO and ALL lines, each joined by '\n'.
pub fn split_levels<'a>(lines: impl IntoIterator<Item = &'a str>) -> [String; 4] {
    let mut out: [String; 4] = Default::default();
    for line in lines {
        let idx = match level_of(line) {
            Level::Error => 0,
            Level::Warn => 1,
            Level::Info => 2,
        };
        for i in [idx, 3] {
            out[i].push_str(line);
            out[i].push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify() {
        let e = format(Level::Error, "boom");
        let w = format(Level::Warn, "hmm");
        let i = format(Level::Info, "ok");
        assert_eq!(level_of(&e), Level::Error);
        assert_eq!(level_of(&w), Level::Warn);
        assert_eq!(level_of(&i), Level::Info);
        assert_eq!(level_of("plain ERROR text"), Level::Info);
        assert_eq!(level_of("2026-11-22 10:00:00.000 SYSTEM-WARN x"), Level::Warn);
        let s = split_levels([e.as_str(), w.as_str(), i.as_str(), "x"]);
        assert_eq!(s[0].lines().count(), 1);
        assert_eq!(s[2].lines().count(), 2);
        assert_eq!(s[3].lines().count(), 4);
    }
}
