//! The Raft state machine: the control-plane state in memory, persisted as snapshots in redb.

use std::io::Cursor;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use redb::{Database, ReadableDatabase, TableDefinition, WriteTransaction};

use crate::db::{Fault, blocking, get_json, io, write_txn};
use crate::{
    Entry, LogId, Response, Snapshot, SnapshotMeta, StateMachineData, StorageError, StoredMembership,
    TypeConfig,
};

/// The one current snapshot: its metadata and its data, always written together.
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");
const SNAPSHOT_META: &str = "meta";
const SNAPSHOT_DATA: &str = "data";

pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), Fault> {
    txn.open_table(SNAPSHOT)?;
    Ok(())
}

/// A read handle on the applied control-plane state, for the layers above (S3 bucket checks,
/// key lookups, the admin API) while openraft owns the [`StateMachineStore`].
///
/// The lock is a plain `std` lock held only for the duration of a closure: it is never held
/// across an `.await`, and reads are short.
#[derive(Clone, Default)]
pub struct SharedState(Arc<RwLock<StateMachineData>>);

impl SharedState {
    /// Runs `f` on the current state.
    pub fn read<R>(&self, f: impl FnOnce(&StateMachineData) -> R) -> R {
        // A poisoned lock means a panic while applying; the process is going down with the
        // Raft task anyway, and readers may still look at the last state.
        f(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn write<R>(&self, f: impl FnOnce(&mut StateMachineData) -> R) -> R {
        f(&mut self.0.write().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The Raft state machine. The state is in memory; it is made durable by snapshots, and
/// rebuilt on open from the last snapshot plus the committed log entries after it (replayed by
/// openraft).
pub struct StateMachineStore {
    db: Arc<Database>,
    state: SharedState,
}

/// Builds a snapshot from a copy of the state taken when openraft asked for the builder, so that
/// applying continues while the snapshot is encoded and written.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    data: StateMachineData,
}

impl StateMachineStore {
    /// Restores the state from the stored snapshot, if any.
    pub(crate) fn load(db: Arc<Database>) -> Result<Self, Fault> {
        let data = match read_snapshot(&db)? {
            Some((meta, bytes)) => decode(&meta, &bytes)?,
            None => StateMachineData::default(),
        };
        Ok(StateMachineStore {
            db,
            state: SharedState(Arc::new(RwLock::new(data))),
        })
    }

    /// A handle on the applied state that stays valid after the store is given to openraft.
    pub fn state(&self) -> SharedState {
        self.state.clone()
    }
}

/// Reads the stored snapshot's metadata and data.
fn read_snapshot(db: &Database) -> Result<Option<(SnapshotMeta, Vec<u8>)>, Fault> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    let Some(meta) = get_json::<SnapshotMeta>(&table, SNAPSHOT_META)? else {
        return Ok(None);
    };
    let data = table
        .get(SNAPSHOT_DATA)?
        .map(|v| v.value().to_vec())
        .unwrap_or_default();
    Ok(Some((meta, data)))
}

/// Replaces the stored snapshot. With `only_if_newer`, a snapshot older than the stored one is
/// not written (returns false): a slow build must not overwrite a newer snapshot installed from
/// the leader in the meantime.
fn write_snapshot(
    db: &Database,
    meta: &SnapshotMeta,
    data: &[u8],
    only_if_newer: bool,
) -> Result<bool, Fault> {
    write_txn(db, |txn| {
        let mut table = txn.open_table(SNAPSHOT)?;
        if only_if_newer {
            let current: Option<SnapshotMeta> = get_json(&table, SNAPSHOT_META)?;
            if current.is_some_and(|c| c.last_log_id > meta.last_log_id) {
                return Ok(false);
            }
        }
        table.insert(SNAPSHOT_META, serde_json::to_vec(meta)?.as_slice())?;
        table.insert(SNAPSHOT_DATA, data)?;
        Ok(true)
    })
}

/// Decodes snapshot data. The metadata is authoritative for Raft's own pointers, so they are
/// taken from it rather than from the data.
fn decode(meta: &SnapshotMeta, bytes: &[u8]) -> Result<StateMachineData, serde_json::Error> {
    let mut data: StateMachineData = serde_json::from_slice(bytes)?;
    data.last_applied = meta.last_log_id;
    data.last_membership = meta.last_membership.clone();
    Ok(data)
}

/// A snapshot id unique across builds (and restarts), even of the same last log id.
fn snapshot_id(last_log_id: Option<LogId>) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    match last_log_id {
        Some(id) => format!("{}-{}-{nanos}", id.leader_id, id.index),
        None => format!("empty-{nanos}"),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let bytes = serde_json::to_vec(&self.data)
            .map_err(|e| io(ErrorSubject::StateMachine, ErrorVerb::Read, &e))?;
        let meta = SnapshotMeta {
            last_log_id: self.data.last_applied,
            last_membership: self.data.last_membership.clone(),
            snapshot_id: snapshot_id(self.data.last_applied),
        };
        let db = self.db.clone();
        let stored_meta = meta.clone();
        let (bytes, written) = blocking(move || {
            let written = write_snapshot(&db, &stored_meta, &bytes, true)?;
            Ok((bytes, written))
        })
        .await
        .map_err(|e| {
            io(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                &e,
            )
        })?;
        if !written {
            tracing::debug!(snapshot = %meta, "a newer snapshot is already stored; not replacing it");
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self.state.read(|s| (s.last_applied, s.last_membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // In memory only: durability comes from the log (entries are durable before they are
        // committed) and from snapshots.
        Ok(self
            .state
            .write(|s| entries.into_iter().map(|entry| s.apply_entry(&entry)).collect()))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            data: self.state.read(StateMachineData::clone),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        // Decode before writing anything: a corrupt snapshot must not replace a good one.
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data = decode(meta, &bytes).map_err(|e| io(subject(), ErrorVerb::Read, &e))?;
        let db = self.db.clone();
        let stored_meta = meta.clone();
        blocking(move || write_snapshot(&db, &stored_meta, &bytes, false))
            .await
            .map_err(|e| io(subject(), ErrorVerb::Write, &e))?;
        // Durable first, then visible: a crash in between restarts from the new snapshot.
        self.state.write(|s| *s = data);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let stored =
            read_snapshot(&self.db).map_err(|e| io(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))?;
        Ok(stored.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
