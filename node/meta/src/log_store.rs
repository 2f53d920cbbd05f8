//! The Raft log store: log entries, the vote and the purge and commit pointers, in redb.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::Deserialize;

use crate::db::{Fault, blocking, get_json, io, write_txn, write_txn_with};
use crate::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

/// Log entries by index. redb's `u64` keys compare numerically, so ranges are index ranges.
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Small Raft records, JSON encoded, under the keys below.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const VOTE: &str = "vote";
const LAST_PURGED: &str = "last_purged";
const COMMITTED: &str = "committed";

pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), Fault> {
    txn.open_table(LOGS)?;
    txn.open_table(META)?;
    Ok(())
}

/// The Raft log store. Cheap to clone: clones share the database, which is how openraft's
/// replication tasks get their log readers.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

/// The part of a stored entry needed to know its log id, so that finding the last log id does
/// not decode the entry's payload.
#[derive(Deserialize)]
struct EntryHead {
    log_id: LogId,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>) -> Self {
        LogStore { db }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Fault> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        get_json(&meta, key)
    }

    fn read_log_state(&self) -> Result<LogState<TypeConfig>, Fault> {
        let txn = self.db.begin_read()?;
        let last_purged_log_id: Option<LogId> = get_json(&txn.open_table(META)?, LAST_PURGED)?;
        let logs = txn.open_table(LOGS)?;
        let last_log_id = match logs.last()? {
            Some((_, value)) => Some(serde_json::from_slice::<EntryHead>(value.value())?.log_id),
            // No entries: openraft expects the last purged id, so the log still knows where it
            // ends after everything was purged.
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    fn read_entries(&self, start: u64, end: Bound<u64>) -> Result<Vec<Entry>, Fault> {
        let txn = self.db.begin_read()?;
        let logs = txn.open_table(LOGS)?;
        let mut entries = Vec::new();
        for row in logs.range::<u64>((Bound::Included(start), end))? {
            let (_, value) = row?;
            entries.push(serde_json::from_slice(value.value())?);
        }
        Ok(entries)
    }

    /// Commits one write to the meta table on the blocking pool.
    async fn write_meta(
        &self,
        subject: ErrorSubject<NodeId>,
        durability: Durability,
        f: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> Result<(), Fault> + Send + 'static,
    ) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || write_txn_with(&db, durability, |txn| f(&mut txn.open_table(META)?)))
            .await
            .map_err(|e| io(subject, ErrorVerb::Write, &e))
    }
}

/// Turns any index range into `start..end` with an inclusive start, or `None` if it is empty
/// (redb, like `BTreeMap`, must not be given a range that ends before it starts).
fn index_range(range: &impl RangeBounds<u64>) -> Option<(u64, Bound<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let empty = match range.end_bound() {
        Bound::Included(e) => *e < start,
        Bound::Excluded(e) => *e <= start,
        Bound::Unbounded => false,
    };
    (!empty).then(|| (start, range.end_bound().cloned()))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some((start, end)) = index_range(&range) else {
            return Ok(Vec::new());
        };
        self.read_entries(start, end)
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.read_log_state()
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(vote).map_err(|e| io(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
        // A vote must survive a crash (granting two votes in one term breaks Raft): fsync.
        self.write_meta(ErrorSubject::Vote, Durability::Immediate, move |meta| {
            meta.insert(VOTE, bytes.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE)
            .map_err(|e| io(ErrorSubject::Vote, ErrorVerb::Read, &e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let bytes =
            serde_json::to_vec(&committed).map_err(|e| io(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        // The committed id only lets a restarting node re-apply its committed entries before
        // hearing from a leader. A stale value is safe (it is a lower bound; the leader tells the
        // rest), so skip the fsync: the value becomes durable with the next append or vote.
        self.write_meta(ErrorSubject::Store, Durability::None, move |meta| {
            meta.insert(COMMITTED, bytes.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = self
            .read_meta(COMMITTED)
            .map_err(|e| io(ErrorSubject::Store, ErrorVerb::Read, &e))?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| io(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, &e))?;
            rows.push((entry.log_id.index, bytes));
        }
        let db = self.db.clone();
        let result = blocking(move || {
            write_txn(&db, |txn| {
                let mut logs = txn.open_table(LOGS)?;
                for (index, bytes) in &rows {
                    logs.insert(*index, bytes.as_slice())?;
                }
                Ok(())
            })
        })
        .await
        .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Write, &e));
        // The commit above fsynced, so the entries are durable when the callback fires; on
        // failure the callback carries the error too, so nothing waits for a flush that never
        // comes.
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            write_txn(&db, |txn| {
                txn.open_table(LOGS)?.retain_in(log_id.index.., |_, _| false)?;
                Ok(())
            })
        })
        .await
        .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            // The pointer and the deletion commit together, so the log state never claims a
            // purge that did not happen (or the reverse).
            write_txn(&db, |txn| {
                let mut meta = txn.open_table(META)?;
                let previous: Option<LogId> = get_json(&meta, LAST_PURGED)?;
                if previous.is_some_and(|p| p >= log_id) {
                    return Ok(());
                }
                meta.insert(LAST_PURGED, serde_json::to_vec(&log_id)?.as_slice())?;
                txn.open_table(LOGS)?.retain_in(..=log_id.index, |_, _| false)?;
                Ok(())
            })
        })
        .await
        .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_ranges() {
        assert_eq!(index_range(&(3..3)), None);
        assert_eq!(index_range(&(3..4)), Some((3, Bound::Excluded(4))));
        assert_eq!(index_range(&(Bound::Included(5), Bound::Included(4))), None);
        assert_eq!(index_range(&(5..=5)), Some((5, Bound::Included(5))));
        assert_eq!(index_range(&(..)), Some((0, Bound::Unbounded)));
        let excluded_max = (Bound::Excluded(u64::MAX), Bound::Unbounded);
        assert_eq!(index_range(&excluded_max), None);
    }
}
