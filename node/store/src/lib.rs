//! A node's drives: shard files plus a crash-safe metadata index per drive.
//!
//! Each drive is a folder (one PVC on Kubernetes) holding:
//! - `.ringstore/drive.json`: the drive's permanent identity, written once when formatted;
//! - `.ringstore/meta.redb`: an ordered, ACID key-value index (redb, fsync per commit);
//! - `.ringstore/data/XX/ID`: one shard file per stored data file (object or multipart part).
//!
//! Durability: shard files are written, fsynced and their directory entry fsynced before the
//! metadata that references them is committed, so a committed record never points at data
//! that a crash can take away. Metadata writes from concurrent requests are grouped into one
//! redb transaction (group commit) so that many small writes share one fsync.

mod drive;
mod table;

pub use drive::{Drive, DriveInfo, KeyPage, Replaced, ShardWriter, UncachedShard, fs_usage};
pub use table::{Op, Table, Version};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("drive {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("drive {path}: metadata index: {source}")]
    Index {
        path: String,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("drive {path} is not usable: {reason}")]
    Unusable { path: String, reason: String },
    #[error("drive {0} is shutting down")]
    Closed(String),
    #[error("drive {drive} on another node: {reason}")]
    Remote { drive: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
