//! redb helpers, and the mapping of redb, serde and task failures into openraft storage errors.

use std::path::Path;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use redb::{Database, Durability, ReadableTable, WriteTransaction};

use crate::{NodeId, StorageError};

/// A failure inside one storage operation, before it is given its openraft subject and verb.
/// Exists so that `?` works across redb's many error types and serde's in the same function.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Fault {
    #[error(transparent)]
    Db(#[from] redb::Error),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
    /// The blocking task panicked or the runtime is shutting down: the write may or may not
    /// have been committed.
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

macro_rules! redb_fault {
    ($($t:ty),*) => {$(
        impl From<$t> for Fault {
            fn from(e: $t) -> Self {
                Fault::Db(e.into())
            }
        }
    )*};
}
redb_fault!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// An I/O-class storage error about `subject`, raised while doing `verb`.
pub(crate) fn io(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    source: impl Into<AnyError>,
) -> StorageError {
    StorageIOError::new(subject, verb, source).into()
}

/// Opening or preparing the database file failed.
pub(crate) fn store_open(path: &Path, e: &Fault) -> StorageError {
    let source = AnyError::new(e).add_context(|| format!("opening {}", path.display()));
    io(ErrorSubject::Store, ErrorVerb::Read, source)
}

/// Runs `f` in one write transaction and commits it durably (fsync, redb's default).
/// On error the transaction is dropped, which aborts it: nothing of `f` becomes visible.
pub(crate) fn write_txn<T>(
    db: &Database,
    f: impl FnOnce(&WriteTransaction) -> Result<T, Fault>,
) -> Result<T, Fault> {
    write_txn_with(db, Durability::Immediate, f)
}

/// [`write_txn`] with a chosen durability. `Durability::None` skips the fsync: the write
/// becomes durable with the next durable commit, or is lost in a crash before that.
pub(crate) fn write_txn_with<T>(
    db: &Database,
    durability: Durability,
    f: impl FnOnce(&WriteTransaction) -> Result<T, Fault>,
) -> Result<T, Fault> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    let out = f(&txn)?;
    txn.commit()?;
    Ok(out)
}

/// Runs a blocking storage operation (a redb commit, i.e. an fsync) on tokio's blocking pool, so
/// that it does not hold up an async worker thread, and waits for it.
pub(crate) async fn blocking<T>(f: impl FnOnce() -> Result<T, Fault> + Send + 'static) -> Result<T, Fault>
where
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

/// Reads and decodes the JSON value at `key`, if present.
pub(crate) fn get_json<T: serde::de::DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, Fault> {
    match table.get(key)? {
        Some(value) => Ok(Some(serde_json::from_slice(value.value())?)),
        None => Ok(None),
    }
}
