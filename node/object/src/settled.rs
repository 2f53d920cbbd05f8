//! Versions known to sit on a write quorum ("settled"), so that a lookup can stop at a read
//! quorum instead of a write quorum.
//!
//! A lookup may return a version without repairing it only when a write quorum of its drives
//! holds it (see `Inner::confirm`): otherwise a later read through other drives could go
//! back in time. Asking a write quorum on every lookup proves that, at the cost of
//! `W - R` more drives per read (one more remote call per GET with EC 2+2). Instead, the
//! writer that saw a write quorum take a version (and a lookup that saw one hold it) notes
//! it here and shares the note with the other nodes; a lookup whose read quorum all hold
//! the noted version of the same drive set returns it at once.
//!
//! Why that is linearizable: a note is only ever true (a write quorum of that drive set held
//! the version, and drives replace a record only by a newer one). A write acknowledged
//! before the lookup started, or a version another read returned before it (returned only
//! once on a write quorum), is on a write quorum of the set, which meets every read quorum:
//! one of the drives asked would hold it or something newer, and the lookup would not
//! agree on the noted version. Notes are kept in memory only: a node that restarts, or
//! forgot a key, asks a write quorum as before. A late or lost note costs a larger read,
//! never a wrong one.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use ringstore_store::Version;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// How many keys a node remembers (oldest notes are forgotten first).
const CAPACITY: usize = 1 << 16;
/// Notes waiting to be shared, at most (beyond that, new ones are kept only here).
const OUTBOX_MAX: usize = 1 << 14;

/// A settled version of one key, as shared between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettledNote {
    key: ByteBuf,
    version: ByteBuf,
    /// Hash of the drive set the version is settled on ([`set_hash`]).
    set: u64,
}

#[derive(Default)]
pub(crate) struct Settled {
    known: Mutex<Known>,
    outbox: Mutex<Vec<SettledNote>>,
}

#[derive(Default)]
struct Known {
    map: HashMap<Box<[u8]>, (Version, u64)>,
    /// Keys in the order they were first noted, for forgetting the oldest.
    order: VecDeque<Box<[u8]>>,
}

/// A stable hash of an object's drive set (the drive ids of its record, in shard order).
pub(crate) fn set_hash(drives: &[String]) -> u64 {
    // SipHash with fixed keys: the same on every node built with the same Rust release
    // (the standard library may change it between releases; a mismatch between nodes only
    // costs larger reads, never a wrong one)
    let mut h = std::hash::DefaultHasher::new();
    drives.hash(&mut h);
    h.finish()
}

impl Settled {
    /// `version` of `key` is held by a write quorum of the drive set `set`; `share`: tell
    /// the other nodes too.
    pub(crate) fn note(&self, key: &[u8], version: Version, set: u64, share: bool) {
        if self.remember(key, version, set) && share {
            let mut out = self.outbox.lock().expect("not poisoned");
            if out.len() < OUTBOX_MAX {
                out.push(SettledNote {
                    key: ByteBuf::from(key.to_vec()),
                    version: ByteBuf::from(version.to_bytes().to_vec()),
                    set,
                });
            }
        }
    }

    /// The version of `key` noted as settled, and the drive set it is settled on: a lookup
    /// then first asks a read quorum only, and stops there when all of it holds that
    /// version of that set.
    pub(crate) fn noted(&self, key: &[u8]) -> Option<(Version, u64)> {
        self.known.lock().expect("not poisoned").map.get(key).copied()
    }

    /// Notes from another node.
    pub(crate) fn accept(&self, notes: Vec<SettledNote>) {
        for n in notes {
            if let Some(v) = Version::from_bytes(&n.version) {
                self.remember(&n.key, v, n.set);
            }
        }
    }

    /// The notes to share since the last call.
    pub(crate) fn take_outbox(&self) -> Vec<SettledNote> {
        std::mem::take(&mut *self.outbox.lock().expect("not poisoned"))
    }

    /// Keeps the newest version noted per key; whether this one was news.
    fn remember(&self, key: &[u8], version: Version, set: u64) -> bool {
        let mut known = self.known.lock().expect("not poisoned");
        let known = &mut *known;
        match known.map.get_mut(key) {
            Some(have) if have.0 >= version => false,
            Some(have) => {
                *have = (version, set);
                true
            }
            None => {
                let key: Box<[u8]> = key.into();
                known.map.insert(key.clone(), (version, set));
                known.order.push_back(key);
                while known.order.len() > CAPACITY {
                    if let Some(old) = known.order.pop_front() {
                        known.map.remove(&old);
                    }
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ts: u64) -> Version {
        Version { ts_nanos: ts, id: 1 }
    }

    #[test]
    fn keeps_the_newest_note_per_key_and_the_set_it_is_on() {
        let s = Settled::default();
        s.note(b"k", v(2), 7, true);
        s.note(b"k", v(1), 7, true); // late note of an older version
        assert_eq!(s.noted(b"k"), Some((v(2), 7)), "the newest, with its drive set");
        assert_eq!(s.take_outbox().len(), 1, "only news is shared");
        let peer = Settled::default();
        s.note(b"k", v(3), 7, true);
        peer.accept(s.take_outbox());
        assert_eq!(peer.noted(b"k"), Some((v(3), 7)));
        assert!(s.take_outbox().is_empty());
    }

    #[test]
    fn forgets_the_oldest_keys_beyond_its_capacity() {
        let s = Settled::default();
        for i in 0..CAPACITY + 10 {
            s.note(format!("k{i}").as_bytes(), v(1), 0, false);
        }
        assert_eq!(s.noted(b"k0"), None);
        assert!(s.noted(format!("k{}", CAPACITY + 9).as_bytes()).is_some());
        assert!(s.take_outbox().is_empty(), "unshared notes stay here");
    }
}
