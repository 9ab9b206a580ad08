//! Fault injection: switches that make parts of the node fail on purpose, for tests and drills.
//!
//! Compiled in, inert unless `faults.enabled = true`: with it off the switches cannot be set
//! (and the admin route that sets them does not exist), so production behaviour never depends
//! on them.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::engine::outbox::RelayStep;
use crate::engine::transcode::ChildFault;

/// The switches as the admin route shows and sets them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSwitches {
    /// Makes every transcode child crash or hang part-way through.
    pub transcode_child: Option<ChildFault>,
    /// Makes the data disk look full (0 bytes free) to admission and readiness.
    pub disk_full: bool,
    /// Makes the probe of every upload hang for ever without reading, as a parser bug would:
    /// drills the probe's deadline and a shutdown with a blocking thread that never ends.
    pub wedged_probe: bool,
    /// Holds the outbox relay at a step (`before_send`, `before_remove`): drills a crash in
    /// that window.
    pub relay_hold: Option<RelayStep>,
}

#[derive(Debug, Default)]
pub struct Faults {
    enabled: bool,
    switches: Mutex<FaultSwitches>,
}

impl Faults {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            switches: Mutex::new(FaultSwitches::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn switches(&self) -> FaultSwitches {
        self.switches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets the switches; refused (false) when fault injection is disabled.
    pub fn set(&self, switches: FaultSwitches) -> bool {
        if !self.enabled {
            return false;
        }
        *self.switches.lock().unwrap_or_else(|p| p.into_inner()) = switches;
        true
    }

    /// Whether the relay must wait before `step`.
    pub fn relay_held(&self, step: RelayStep) -> bool {
        self.enabled
            && self
                .switches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .relay_hold
                == Some(step)
    }

    /// Whether the disk must be reported full.
    pub fn disk_full(&self) -> bool {
        self.enabled
            && self
                .switches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .disk_full
    }

    /// Free bytes on the disk holding `path`, as admission and readiness must see them.
    pub fn free_disk_bytes(&self, path: &std::path::Path) -> std::io::Result<u64> {
        if self.disk_full() {
            return Ok(0);
        }
        crate::system::free_disk_bytes(path)
    }

    /// Whether the probe of an upload must hang.
    pub fn wedged_probe(&self) -> bool {
        self.enabled
            && self
                .switches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .wedged_probe
    }

    /// The fault a new transcode child must simulate, if any.
    pub fn transcode_child(&self) -> Option<ChildFault> {
        if !self.enabled {
            return None;
        }
        self.switches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .transcode_child
    }
}

/// Blocks the calling thread for good (the `wedged_probe` fault).
pub fn wedge_this_thread() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_are_inert_unless_enabled() {
        let off = Faults::new(false);
        let crash = FaultSwitches {
            transcode_child: Some(ChildFault::Crash),
            disk_full: true,
            wedged_probe: true,
            relay_hold: Some(RelayStep::BeforeSend),
        };
        assert!(!off.set(crash.clone()));
        assert_eq!(off.transcode_child(), None);
        assert!(!off.disk_full());
        assert!(!off.relay_held(RelayStep::BeforeSend));
        let on = Faults::new(true);
        assert!(on.set(crash));
        assert_eq!(on.transcode_child(), Some(ChildFault::Crash));
        assert!(on.disk_full());
        assert!(on.relay_held(RelayStep::BeforeSend));
        assert!(!on.relay_held(RelayStep::BeforeRemove));
        assert!(on.wedged_probe());
        assert!(!off.wedged_probe());
        assert_eq!(on.free_disk_bytes(std::path::Path::new("/")).unwrap(), 0);
    }
}

/// A failure an actor is told to suffer (fault injection; only reachable when enabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorFault {
    /// Panic inside a handler: the actor dies.
    Panic,
    /// Block the actor's thread: its heartbeat stops.
    Stall(std::time::Duration),
}
