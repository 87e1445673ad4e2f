//! The LoadInstance resource: memory (bytes), cores and engine instances.

use std::fmt;
use std::ops::{Add, Sub};

use serde::{Deserialize, Serialize};

use crate::error::HangarError;

/// Linkis `LoadInstanceResource`; arithmetic is component-wise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resource {
    /// Bytes.
    pub memory: u64,
    pub cores: u32,
    pub instances: u32,
}

impl Resource {
    pub const ZERO: Resource = Resource { memory: 0, cores: 0, instances: 0 };

    pub fn new(memory: u64, cores: u32, instances: u32) -> Self {
        Self { memory, cores, instances }
    }

    /// Every component `>=` the other's (Linkis `notLess`).
    pub fn not_less(&self, other: &Resource) -> bool {
        self.memory >= other.memory && self.cores >= other.cores && self.instances >= other.instances
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// Component-wise subtraction that refuses to go below zero.
    pub fn checked_sub(&self, other: &Resource) -> Option<Resource> {
        Some(Resource {
            memory: self.memory.checked_sub(other.memory)?,
            cores: self.cores.checked_sub(other.cores)?,
            instances: self.instances.checked_sub(other.instances)?,
        })
    }

    /// Which components of `need` exceed `left`, for error messages.
    pub fn shortfall(left: &Resource, need: &Resource) -> Vec<String> {
        let mut out = Vec::new();
        if need.memory > left.memory {
            out.push(format!("memory: requested {}, left {}", format_bytes(need.memory), format_bytes(left.memory)));
        }
        if need.cores > left.cores {
            out.push(format!("cores: requested {}, left {}", need.cores, left.cores));
        }
        if need.instances > left.instances {
            out.push(format!("instances: requested {}, left {}", need.instances, left.instances));
        }
        out
    }
}

/// What an engine takes from a cluster's queue beyond its own process (the
/// YarnResource part of Linkis's DriverAndYarnResource: Spark executors'
/// memory and cores times their number), charged to the queue's label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterCharge {
    /// The resource label of the queue (`sparkQueue=<master>#<queue>`).
    pub label: String,
    /// The queue's maximum, set when the label is first used.
    pub max: Resource,
    pub resource: Resource,
}

impl Add for Resource {
    type Output = Resource;
    fn add(self, o: Resource) -> Resource {
        Resource {
            memory: self.memory.saturating_add(o.memory),
            cores: self.cores.saturating_add(o.cores),
            instances: self.instances.saturating_add(o.instances),
        }
    }
}

impl Sub for Resource {
    type Output = Resource;
    /// Saturating; use [`Resource::checked_sub`] where going below zero is a bug.
    fn sub(self, o: Resource) -> Resource {
        Resource {
            memory: self.memory.saturating_sub(o.memory),
            cores: self.cores.saturating_sub(o.cores),
            instances: self.instances.saturating_sub(o.instances),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memory {}, cores {}, instances {}", format_bytes(self.memory), self.cores, self.instances)
    }
}

/// Parse `512m`, `1g`, `1.5G`, `2048k`, `1024` (bytes) into bytes.
pub fn parse_bytes(s: &str) -> Result<u64, HangarError> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 =
        num.trim().parse().map_err(|_| HangarError::invalid(format!("'{s}' is not a size such as 512m or 2g")))?;
    if !v.is_finite() || v < 0.0 {
        return Err(HangarError::invalid(format!("'{s}' is not a size such as 512m or 2g")));
    }
    Ok((v * mult as f64) as u64)
}

/// `1.0 GB`-style rendering.
pub fn format_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)];
    for (name, size) in UNITS {
        if b >= size {
            return format!("{:.1} {name}", b as f64 / size as f64);
        }
    }
    format!("{b} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sizes() {
        assert_eq!(parse_bytes("1g").expect("g"), 1 << 30);
        assert_eq!(parse_bytes("512M").expect("m"), 512 << 20);
        assert_eq!(parse_bytes("1.5g").expect("f"), 3 << 29);
        assert_eq!(parse_bytes("100").expect("b"), 100);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-1g").is_err());
    }

    #[test]
    fn arithmetic() {
        let a = Resource::new(10, 2, 1);
        let b = Resource::new(4, 1, 1);
        assert_eq!(a.checked_sub(&b), Some(Resource::new(6, 1, 0)));
        assert_eq!(b.checked_sub(&a), None);
        assert!(a.not_less(&b));
        assert_eq!(Resource::shortfall(&b, &a).len(), 2);
    }
}
