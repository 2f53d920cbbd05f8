//! The tables of a drive's metadata index and the write operations on them.

use serde::{Deserialize, Serialize};

/// The tables every drive's index holds. Keys are byte strings ordered lexicographically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Table {
    /// `bucket \0 key` -> versioned object record (newest version wins).
    Objects,
    /// `bucket` -> bucket record.
    Buckets,
    /// `bucket \0 key \0 upload-id` -> multipart upload record.
    Uploads,
    /// `upload-id \0 part-number (4 bytes, big endian)` -> part record.
    Parts,
}

impl Table {
    pub(crate) const ALL: [Table; 4] = [Table::Objects, Table::Buckets, Table::Uploads, Table::Parts];

    pub(crate) fn def(self) -> redb::TableDefinition<'static, &'static [u8], &'static [u8]> {
        redb::TableDefinition::new(match self {
            Table::Objects => "objects",
            Table::Buckets => "buckets",
            Table::Uploads => "uploads",
            Table::Parts => "parts",
        })
    }
}

/// Orders concurrent writes of the same key: the later timestamp wins, the random id breaks
/// ties, so every drive converges on the same record whatever order writes arrive in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Version {
    pub ts_nanos: u64,
    pub id: u128,
}

impl Version {
    pub const LEN: usize = 24;

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..8].copy_from_slice(&self.ts_nanos.to_be_bytes());
        b[8..].copy_from_slice(&self.id.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < Self::LEN {
            return None;
        }
        Some(Self {
            ts_nanos: u64::from_be_bytes(b[..8].try_into().ok()?),
            id: u128::from_be_bytes(b[8..24].try_into().ok()?),
        })
    }

    /// Hex form, used for data file names and upload ids.
    pub fn hex(self) -> String {
        hex::encode(self.to_bytes())
    }

    /// The version whose [`Version::hex`] form `s` is.
    pub fn from_hex(s: &str) -> Option<Self> {
        let b = hex::decode(s).ok()?;
        (b.len() == Self::LEN).then(|| Self::from_bytes(&b)).flatten()
    }
}

/// One write to a drive's index; a batch of them commits atomically. Serialisable so that a
/// node can send it to a drive on another node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    /// Store `value` under `key` unless the stored value carries a newer [`Version`]
    /// (values of versioned tables begin with their version's 24 bytes).
    PutIfNewer {
        table: Table,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Store `value` (whose version must be above `expected`) only if the stored value is
    /// absent or no newer than `expected` (`None`: only if absent): one drive's half of a
    /// compare-and-swap. A drive that missed `expected` (it holds an older version) takes
    /// the value too; a drive where another write landed after `expected` refuses it.
    /// Answers the value found, as `PutIfNewer` does.
    PutIfVersion {
        table: Table,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        expected: Option<Version>,
    },
    /// Store unconditionally.
    Put {
        table: Table,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Take the lease on a key of the objects table for `owner` for `ttl_ms`, unless
    /// another owner holds an unexpired one (answered with a non-empty value). Leases live
    /// in the drive's memory, on its own monotonic clock, and end with the process: they
    /// make conditional writers of one key take turns, while correctness rests on
    /// `PutIfVersion`. Must be the only operation of its commit.
    Lease {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        owner: u128,
        ttl_ms: u64,
    },
    /// Give a lease back (nothing when another owner holds it).
    Release {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        owner: u128,
    },
    /// Remove the key.
    Delete {
        table: Table,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Remove the key only if its stored version is exactly `version`.
    DeleteIfVersion {
        table: Table,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        version: Version,
    },
}
