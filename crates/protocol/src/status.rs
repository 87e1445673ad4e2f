//! State machines as enums with guarded transitions.
//!
//! [`NodeStatus`] is the Linkis `NodeStatus` of engines and ECMs; [`JobStatus`]
//! is the Linkis `SchedulerEventState` of jobs and of tasks inside an engine.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::HangarError;

/// Status of an EngineConn or an EngineConnManager, names and ordinals as in Linkis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum NodeStatus {
    Starting,
    Unlock,
    Locked,
    Idle,
    Busy,
    Running,
    ShuttingDown,
    Failed,
    Success,
}

impl NodeStatus {
    pub const ALL: [NodeStatus; 9] = [
        NodeStatus::Starting,
        NodeStatus::Unlock,
        NodeStatus::Locked,
        NodeStatus::Idle,
        NodeStatus::Busy,
        NodeStatus::Running,
        NodeStatus::ShuttingDown,
        NodeStatus::Failed,
        NodeStatus::Success,
    ];

    /// Linkis persists the ordinal.
    pub fn ordinal(self) -> i32 {
        Self::ALL.iter().position(|s| *s == self).map_or(-1, |p| p as i32)
    }

    /// Ready and not ended: can serve or be locked later.
    pub fn is_available(self) -> bool {
        matches!(
            self,
            NodeStatus::Idle | NodeStatus::Busy | NodeStatus::Locked | NodeStatus::Unlock | NodeStatus::Running
        )
    }

    /// Held by a client.
    pub fn is_locked(self) -> bool {
        matches!(self, NodeStatus::Busy | NodeStatus::Locked | NodeStatus::Idle)
    }

    /// Ended or ending: never used again.
    pub fn is_completed(self) -> bool {
        matches!(self, NodeStatus::Success | NodeStatus::Failed | NodeStatus::ShuttingDown)
    }

    /// Whether `self -> to` is a legal transition. Staying put is always legal
    /// except out of a final state, where nothing is.
    pub fn can_transition(self, to: NodeStatus) -> bool {
        use NodeStatus::*;
        match (self, to) {
            (Failed | Success, _) => false,
            (ShuttingDown, Failed | Success | ShuttingDown) => true,
            (ShuttingDown, _) => false,
            (_, Starting) => self == Starting,
            (Starting, Unlock | Running | ShuttingDown | Failed | Success) => true,
            (Starting, _) => false,
            (Running, Running | ShuttingDown | Failed | Success) => true,
            (Running, _) => false,
            (_, Running) => false,
            (Unlock | Locked | Idle | Busy, _) => true,
        }
    }

    /// Apply a transition or say why not.
    pub fn transition(&mut self, to: NodeStatus) -> Result<(), HangarError> {
        if self.can_transition(to) {
            *self = to;
            Ok(())
        } else {
            Err(HangarError::invalid(format!("illegal node status transition {self} -> {to}")))
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Status of a job (Entrance) or a task (EngineConn).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum JobStatus {
    Inited,
    WaitForRetry,
    Scheduled,
    Running,
    Succeed,
    Failed,
    Cancelled,
    Timeout,
}

impl JobStatus {
    pub const ALL: [JobStatus; 8] = [
        JobStatus::Inited,
        JobStatus::WaitForRetry,
        JobStatus::Scheduled,
        JobStatus::Running,
        JobStatus::Succeed,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::Timeout,
    ];

    pub fn is_completed(self) -> bool {
        matches!(self, JobStatus::Succeed | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Timeout)
    }

    pub fn can_transition(self, to: JobStatus) -> bool {
        use JobStatus::*;
        if self.is_completed() {
            return false;
        }
        match to {
            Inited => false,
            Scheduled => matches!(self, Inited | WaitForRetry),
            WaitForRetry => matches!(self, Scheduled),
            Running => matches!(self, Scheduled | Running),
            Succeed => matches!(self, Running),
            Failed | Cancelled | Timeout => true,
        }
    }

    pub fn transition(&mut self, to: JobStatus) -> Result<(), HangarError> {
        if self.can_transition(to) {
            *self = to;
            Ok(())
        } else {
            Err(HangarError::invalid(format!("illegal job status transition {self} -> {to}")))
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Inited => "Inited",
            JobStatus::WaitForRetry => "WaitForRetry",
            JobStatus::Scheduled => "Scheduled",
            JobStatus::Running => "Running",
            JobStatus::Succeed => "Succeed",
            JobStatus::Failed => "Failed",
            JobStatus::Cancelled => "Cancelled",
            JobStatus::Timeout => "Timeout",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = HangarError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| HangarError::internal(format!("unknown job status '{s}'")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_node_states_are_final() {
        for to in NodeStatus::ALL {
            assert!(!NodeStatus::Failed.can_transition(to));
            assert!(!NodeStatus::Success.can_transition(to));
        }
        assert!(!NodeStatus::ShuttingDown.can_transition(NodeStatus::Unlock));
        assert!(NodeStatus::Starting.can_transition(NodeStatus::Unlock));
        assert!(!NodeStatus::Starting.can_transition(NodeStatus::Busy));
        assert!(NodeStatus::Unlock.can_transition(NodeStatus::Idle));
        assert!(!NodeStatus::Idle.can_transition(NodeStatus::Starting));
    }

    #[test]
    fn job_flow() {
        let mut s = JobStatus::Inited;
        s.transition(JobStatus::Scheduled).expect("sched");
        s.transition(JobStatus::Running).expect("run");
        s.transition(JobStatus::Succeed).expect("ok");
        assert!(s.transition(JobStatus::Failed).is_err());
        assert!(!JobStatus::Inited.can_transition(JobStatus::Succeed));
        assert_eq!("Cancelled".parse::<JobStatus>().expect("p"), JobStatus::Cancelled);
    }
}
