//! The crate's one error type.

use ringstore_meta::Rejection;
use ringstore_rpc::RpcError;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command reached the state machine, which refused it (identically on every node).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A proposed layout cannot place data.
    #[error("invalid layout: {0}")]
    InvalidLayout(#[from] ringstore_ring::Error),
    /// The control-plane database could not be opened.
    #[error("control-plane storage: {0}")]
    Storage(String),
    /// openraft refused to start or failed fatally.
    #[error("raft: {0}")]
    Raft(String),
    /// No leader could serve the request within the time budget (no quorum, elections, or the
    /// leader did not answer). A write that failed this way may still have been applied.
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    /// A peer refused us or answered something we could not understand.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// A committed layout could not be decoded.
    #[error("undecodable layout: {0}")]
    Decode(String),
    /// The cluster refuses this request for good (retrying cannot help): for example a
    /// second node with a member's name.
    #[error("refused: {0}")]
    Refused(String),
    #[error("the cluster node is shutting down")]
    ShuttingDown,
}
