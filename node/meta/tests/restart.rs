//! What survives a restart: the vote, the log and its pointers, and the state via snapshots.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::Path;

use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogState, Membership, RaftLogReader, RaftSnapshotBuilder};
use ringstore_meta::{Command, Entry, LogId, LogStore, Response, Secret, StateMachineStore, Vote};

/// Boxed so the test signatures stay small (openraft's `StorageError` is over 200 bytes).
type TestResult = Result<(), Box<dyn std::error::Error>>;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn command(term: u64, index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn put_bucket(name: &str) -> Command {
    Command::PutBucket {
        name: name.into(),
        created_nanos: 1,
    }
}

/// Entries 0..=5, index = position: the initial membership of {1,2,3} (openraft's log starts
/// at index 0), a blank entry, then commands.
fn sample_log() -> Vec<Entry> {
    vec![
        Entry::new_membership(
            log_id(0, 0),
            Membership::new(vec![BTreeSet::from([1, 2, 3])], None),
        ),
        Entry::new_blank(log_id(1, 1)),
        command(1, 2, put_bucket("photos")),
        command(
            2,
            3,
            Command::PutAccessKey {
                access_key: "AK".into(),
                secret_key: Secret::new("sk"),
            },
        ),
        command(2, 4, put_bucket("logs")),
        command(2, 5, Command::DeleteBucket { name: "nope".into() }),
    ]
}

fn open(path: &Path) -> (LogStore, StateMachineStore) {
    ringstore_meta::open(path).expect("open the meta database")
}

#[tokio::test]
async fn log_and_vote_survive_a_restart() -> TestResult {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let entries = sample_log();
    let vote = Vote::new_committed(2, 1);
    {
        let (mut logs, _sm) = open(&path);
        logs.blocking_append(entries.clone()).await?;
        logs.save_vote(&vote).await?;
        logs.purge(log_id(0, 0)).await?;
        logs.save_committed(Some(log_id(2, 3))).await?;
        // A conflicting tail is truncated; the rewritten entry must be what comes back.
        logs.truncate(log_id(2, 5)).await?;
        logs.blocking_append([Entry::new_blank(log_id(3, 5))]).await?;
    }
    let (mut logs, _sm) = open(&path);
    assert_eq!(logs.read_vote().await?, Some(vote));
    assert_eq!(logs.read_committed().await?, Some(log_id(2, 3)));
    assert_eq!(
        logs.get_log_state().await?,
        LogState {
            last_purged_log_id: Some(log_id(0, 0)),
            last_log_id: Some(log_id(3, 5)),
        }
    );
    let mut want = entries[1..5].to_vec();
    want.push(Entry::new_blank(log_id(3, 5)));
    assert_eq!(logs.try_get_log_entries(..).await?, want);
    // Reads through a separate reader see the same log.
    let mut reader = logs.get_log_reader().await;
    assert_eq!(reader.try_get_log_entries(3..5).await?, entries[3..5].to_vec());
    Ok(())
}

#[tokio::test]
async fn state_is_rebuilt_from_snapshot_and_committed_log() -> TestResult {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let entries = sample_log();
    let snapshot_meta;
    {
        let (mut logs, mut sm) = open(&path);
        logs.blocking_append(entries.clone()).await?;
        logs.save_vote(&Vote::new_committed(2, 1)).await?;
        let responses = sm.apply(entries[..3].to_vec()).await?;
        assert_eq!(responses, vec![Response::Ok; 3]);
        snapshot_meta = sm.get_snapshot_builder().await.build_snapshot().await?.meta;
        assert_eq!(snapshot_meta.last_log_id, Some(log_id(1, 2)));
        // Applied after the snapshot: only in memory, recovered from the log below.
        sm.apply(entries[3..].to_vec()).await?;
        logs.save_committed(Some(log_id(2, 5))).await?;
    }

    let (mut logs, mut sm) = open(&path);
    let state = sm.state();
    // Right after open: the snapshot's state.
    assert_eq!(sm.applied_state().await?.0, Some(log_id(1, 2)));
    assert_eq!(
        sm.get_current_snapshot().await?.map(|s| s.meta),
        Some(snapshot_meta)
    );
    state.read(|s| {
        assert!(s.buckets.contains_key("photos"));
        assert!(s.access_keys.is_empty());
    });

    // What openraft does at startup: re-apply the committed entries after the snapshot.
    let initial = openraft::StorageHelper::new(&mut logs, &mut sm)
        .get_initial_state()
        .await?;
    assert_eq!(
        initial.membership_state.effective().membership(),
        &Membership::new(vec![BTreeSet::from([1, 2, 3])], None)
    );
    state.read(|s| {
        assert_eq!(s.last_applied, Some(log_id(2, 5)));
        assert_eq!(s.buckets.keys().collect::<Vec<_>>(), ["logs", "photos"]);
        assert_eq!(s.secret_key("AK").map(Secret::expose), Some("sk"));
    });
    Ok(())
}

#[tokio::test]
async fn installed_snapshot_survives_a_restart_and_a_corrupt_one_is_refused() -> TestResult {
    let dir = tempfile::tempdir().unwrap();
    let leader_path = dir.path().join("leader.redb");
    let follower_path = dir.path().join("follower.redb");

    let (_leader_logs, mut leader) = open(&leader_path);
    leader.apply(sample_log()).await?;
    let snapshot = leader.get_snapshot_builder().await.build_snapshot().await?;
    let want = leader.state().read(Clone::clone);
    {
        let (_logs, mut follower) = open(&follower_path);
        let mut receiving = follower.begin_receiving_snapshot().await?;
        *receiving = *snapshot.snapshot.clone();
        follower.install_snapshot(&snapshot.meta, receiving).await?;
        assert_eq!(follower.state().read(Clone::clone), want);

        let corrupt = Box::new(Cursor::new(b"not json".to_vec()));
        let mut newer = snapshot.meta.clone();
        newer.last_log_id = Some(log_id(9, 9));
        assert!(follower.install_snapshot(&newer, corrupt).await.is_err());
    }
    let (_logs, mut follower) = open(&follower_path);
    assert_eq!(follower.state().read(Clone::clone), want);
    assert_eq!(
        follower.get_current_snapshot().await?.map(|s| s.meta),
        Some(snapshot.meta)
    );
    Ok(())
}

#[tokio::test]
async fn a_slow_build_does_not_replace_a_newer_snapshot() -> TestResult {
    let dir = tempfile::tempdir().unwrap();
    let (_logs, mut sm) = open(&dir.path().join("meta.redb"));
    let entries = sample_log();
    sm.apply(entries[..2].to_vec()).await?;
    let mut old_builder = sm.get_snapshot_builder().await;
    sm.apply(entries[2..].to_vec()).await?;
    let newer = sm.get_snapshot_builder().await.build_snapshot().await?;
    // The older view finishes last: it returns its snapshot but keeps the newer one stored.
    let older = old_builder.build_snapshot().await?;
    assert_eq!(older.meta.last_log_id, Some(log_id(1, 1)));
    assert_eq!(sm.get_current_snapshot().await?.map(|s| s.meta), Some(newer.meta));
    Ok(())
}

#[tokio::test]
async fn opening_an_open_database_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let _open = open(&path);
    assert!(ringstore_meta::open(&path).is_err());
}
