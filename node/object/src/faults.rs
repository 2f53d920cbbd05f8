//! Fault-injection points for tests, compiled only with the `faults` feature (the test
//! builds of the server have it, release builds do not). `RINGSTORE_FAULTS` holds
//! comma-separated `point=value` settings, read once:
//!
//! - `record-commits=N`: an object record commit (PUT, Complete) reaches at most `N`
//!   drives; the others fail as if their drive had answered with an error;
//! - `record-commit-offset=K`: with `record-commits`, the first `K` drives of the set are
//!   refused too, so that the commit reaches drives `K..K+N`;
//! - `crash-after-record-commits=N`: the process aborts as soon as `N` drives committed an
//!   object record, as a crash between the per-drive commits would;
//! - `conditional-pause-ms=N`: a conditional write waits `N` ms between its lookup and its
//!   compare-and-swap, so that a test can land another write in between;
//! - `move-pause-ms=N`: the mover of a layout transition waits `N` ms between copying an
//!   object's shards and switching its record, so that a test can overwrite or delete it
//!   in between;
//! - `switch-commits=N`: the mover's switch of a record stops after `N` drives took it, as
//!   a crash between the per-drive commits would (the move fails; the next one completes it).

use std::sync::OnceLock;

#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub record_commits: Option<usize>,
    pub record_commit_offset: usize,
    pub crash_after_record_commits: Option<usize>,
    pub conditional_pause_ms: u64,
    pub move_pause_ms: u64,
    pub switch_commits: Option<usize>,
}

/// The settings of this process.
pub(crate) fn get() -> &'static Faults {
    static FAULTS: OnceLock<Faults> = OnceLock::new();
    FAULTS.get_or_init(|| {
        let mut f = Faults::default();
        for item in std::env::var("RINGSTORE_FAULTS").unwrap_or_default().split(',') {
            let Some((point, value)) = item.split_once('=') else {
                continue;
            };
            let value: usize = value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("RINGSTORE_FAULTS: {item:?} needs a number"));
            match point.trim() {
                "record-commits" => f.record_commits = Some(value),
                "crash-after-record-commits" => f.crash_after_record_commits = Some(value),
                "record-commit-offset" => f.record_commit_offset = value,
                "conditional-pause-ms" => f.conditional_pause_ms = value as u64,
                "move-pause-ms" => f.move_pause_ms = value as u64,
                "switch-commits" => f.switch_commits = Some(value),
                other => panic!("RINGSTORE_FAULTS: unknown fault point {other:?}"),
            }
        }
        if f.record_commits.is_some()
            || f.crash_after_record_commits.is_some()
            || f.conditional_pause_ms > 0
            || f.move_pause_ms > 0
            || f.switch_commits.is_some()
        {
            tracing::warn!(faults = ?f, "fault injection is on");
        }
        f
    })
}
