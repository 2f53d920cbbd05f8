//! A single node's copy of its control-plane state (layouts, buckets, access keys) on every
//! drive. The Raft state lives on the first drive; when that drive is replaced, the node
//! founds its cluster again from the newest copy on the others (see
//! `ringstore_cluster::ControlPlaneCopy`), so no bucket or key goes with the drive.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringstore_cluster::{Cluster, ControlPlaneCopy};

const FILE: &str = "control-plane.json";
/// On the first drive while a restore from the copy is to finish: a crash before then runs
/// the restore again at the next start (the copies on the other drives are not touched
/// meanwhile).
const PENDING: &str = "restore-pending";

/// Where the first drive marks a restore as pending.
pub fn restore_pending(first_drive: &Path) -> PathBuf {
    first_drive.join(".ringstore").join(PENDING)
}
/// How often the copy is brought up to date with layout and key changes (bucket changes
/// are copied before they are acknowledged).
const EVERY: Duration = Duration::from_secs(1);

/// Writes the copy to every drive when it changed.
pub struct Mirror {
    cluster: Cluster,
    folders: Vec<PathBuf>,
    last: Mutex<Option<ControlPlaneCopy>>,
}

impl Mirror {
    /// A mirror onto the `.ringstore` folders of `drives`, kept current in the background.
    pub fn start(cluster: Cluster, drives: &[PathBuf]) -> Arc<Mirror> {
        let mirror = Arc::new(Mirror {
            cluster,
            folders: drives.iter().map(|d| d.join(".ringstore")).collect(),
            last: Mutex::new(None),
        });
        let m = mirror.clone();
        tokio::spawn(async move {
            loop {
                m.save().await;
                tokio::time::sleep(EVERY).await;
            }
        });
        mirror
    }

    /// Writes the current state to every drive unless it is what was written last.
    pub async fn save(self: &Arc<Self>) {
        if self.cluster.restoring() {
            return; // a copy now would be partial, over the good ones
        }
        let m = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            // the copy is taken under the lock, so an older one is never written last
            let mut last = m.last.lock().expect("mirror lock");
            let copy = m.cluster.copy();
            if last.as_ref() == Some(&copy) || copy.layouts.is_empty() {
                return;
            }
            let body = serde_json::to_vec_pretty(&copy).expect("the copy serialises");
            let mut all = true;
            for folder in &m.folders {
                if let Err(e) = write_private(&folder.join(FILE), &body) {
                    all = false;
                    tracing::warn!(folder = %folder.display(), error = %e, "could not copy the control-plane state");
                }
            }
            if all {
                *last = Some(copy);
                // every drive holds the restored state now
                let _ = fs::remove_file(m.folders[0].join(PENDING));
            }
        })
        .await;
    }
}

/// Writes `body` to `path`, readable by the owner only, durably and whole or not at all
/// (a temporary file, fsynced, renamed over `path`, and the folder fsynced).
pub fn write_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    match path.parent() {
        Some(folder) => fs::File::open(folder)?.sync_all(),
        None => Ok(()),
    }
}

/// The newest copy found on `drives` (by revision), if any.
pub fn newest(drives: &[PathBuf]) -> Option<ControlPlaneCopy> {
    drives
        .iter()
        .filter_map(|d| {
            let path = d.join(".ringstore").join(FILE);
            let bytes = fs::read(&path).ok()?;
            match serde_json::from_slice::<ControlPlaneCopy>(&bytes) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "damaged control-plane copy ignored");
                    None
                }
            }
        })
        .max_by_key(|c| c.revision)
}
