//! openraft's storage conformance suite, run against our log store and state machine.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use ringstore_meta::{LogStore, NodeId, StateMachineStore, TypeConfig};
use tempfile::TempDir;

/// Builds every store in a fresh temporary folder; the folder (the guard) lives as long as the
/// store under test and is deleted afterwards.
struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("create a temporary folder");
        let (logs, sm) = ringstore_meta::open(dir.path().join("meta.redb"))?;
        Ok((dir, logs, sm))
    }
}

// A plain test, not `#[tokio::test]`: the suite starts a fresh tokio runtime for each of its
// cases and would panic inside another runtime.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(RedbBuilder).expect("openraft storage suite");
}
