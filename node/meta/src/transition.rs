//! The Raft record of a layout transition: which layouts it goes between, how far it got
//! (partitions moved and verified), whether it is paused and how fast it may move. The plan
//! itself (which shards move where) is a pure function of the two layouts (`ringstore_ring::
//! Transition`), so only progress and settings are replicated, never per-object state.

use serde::{Deserialize, Serialize};

use crate::Rejection;

/// How fast a transition may move data; changed live by `SetThrottle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttle {
    /// Bytes moved per second over the whole cluster; 0 means unbounded.
    pub bytes_per_sec: u64,
    /// Objects moved at once per node.
    pub concurrency: u32,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            bytes_per_sec: 256 * 1024 * 1024,
            concurrency: 8,
        }
    }
}

/// Where a transition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Every node is to read from both layouts' places while writes still go where the old
    /// layout places them, so that a node that has not seen the new layout yet and one that
    /// has write to one set of drives. Ends with `TransitionSynced` once every node reads
    /// both.
    Syncing,
    /// Writes go where the new layout places them; partitions are being moved (or
    /// re-encoded) from the old layout's drives.
    Moving,
    /// Every partition is done: the old layout is retired and its leftovers collected.
    Finished,
}

/// One layout change in progress (or the last one, finished).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionState {
    /// The layout data moves off.
    pub from: u64,
    /// The layout data moves onto (the current one).
    pub to: u64,
    pub phase: Phase,
    pub paused: bool,
    pub throttle: Throttle,
    /// When it started, nanoseconds since the Unix epoch (chosen by the proposer).
    pub started_nanos: u64,
    /// What the change does (`rebalance`, `drain`, `reencode`), for status.
    #[serde(default)]
    pub kind: String,
    /// How many partitions the ring has.
    pub partitions: u32,
    /// One bit per partition: its data is moved and verified.
    pub done: Vec<u8>,
}

impl TransitionState {
    pub(crate) fn new(from: u64, to: u64, partitions: u32, started_nanos: u64) -> Self {
        TransitionState {
            from,
            to,
            phase: Phase::Syncing,
            paused: false,
            throttle: Throttle::default(),
            started_nanos,
            kind: String::new(),
            partitions,
            done: vec![0; partitions.div_ceil(8) as usize],
        }
    }

    pub fn is_done(&self, partition: u32) -> bool {
        partition < self.partitions && self.done[(partition / 8) as usize] & (1 << (partition % 8)) != 0
    }

    /// Partitions done so far.
    pub fn done_count(&self) -> u32 {
        self.done.iter().map(|b| b.count_ones()).sum()
    }

    /// Whether data may still sit where the old layout put it.
    pub fn is_running(&self) -> bool {
        self.phase != Phase::Finished
    }

    /// Marks partitions done; a partition out of range rejects the whole command.
    pub(crate) fn mark_done(&mut self, partitions: &[u32]) -> Result<(), Rejection> {
        if let Some(p) = partitions.iter().find(|p| **p >= self.partitions) {
            return Err(Rejection::NoSuchPartition {
                partition: *p,
                partitions: self.partitions,
            });
        }
        for p in partitions {
            self.done[(p / 8) as usize] |= 1 << (p % 8);
        }
        Ok(())
    }
}
