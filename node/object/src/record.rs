//! The metadata records kept in every drive's index.

use std::collections::BTreeMap;

use ringstore_erasure::{Geometry, Redundancy};
use ringstore_store::Version;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BucketRecord {
    pub name: String,
    pub created_nanos: u64,
}

/// An additional checksum stored with an object (S3 `x-amz-checksum-*`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredChecksum {
    /// `CRC32`, `CRC32C`, `CRC64NVME`, `SHA1` or `SHA256`.
    pub algorithm: String,
    /// Base64 of the digest (with `-N` for composite multipart checksums).
    pub value: String,
    /// `FULL_OBJECT` or `COMPOSITE`.
    pub kind: String,
}

/// One erasure-coded data file of an object: the whole object, or one multipart part.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartRef {
    pub number: u32,
    pub size: u64,
    /// Hex MD5 of the part (without quotes).
    pub etag: String,
    pub data_id: String,
    #[serde(default)]
    pub checksum: Option<StoredChecksum>,
}

/// One version of an object as stored on one drive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectRecord {
    #[serde(skip)]
    pub version: Version,
    pub deleted: bool,
    pub size: u64,
    /// ETag without quotes: hex MD5, or `hex-N` for multipart objects.
    pub etag: String,
    /// Standard headers: content-type, content-encoding, content-disposition,
    /// cache-control, content-language, expires.
    pub headers: BTreeMap<String, String>,
    /// User metadata (`x-amz-meta-*`), names lower-cased without the prefix.
    pub user_meta: BTreeMap<String, String>,
    pub checksum: Option<StoredChecksum>,
    pub k: usize,
    pub m: usize,
    pub block_size: usize,
    pub codec: String,
    /// Drive ids in shard order: shard `i` lives on `drives[i]`.
    pub drives: Vec<String>,
    pub parts: Vec<PartRef>,
    /// This drive's shard index.
    pub shard: usize,
    /// This drive's shard frames when the object is stored inline.
    #[serde(with = "serde_bytes_opt")]
    pub inline: Option<Vec<u8>>,
    /// Wall-clock time of the write (ns), when it differs from the version's time: a
    /// conditional write's version sits just above the version it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<u64>,
    /// For a conditional write: the version it replaces by compare-and-swap (the default
    /// version when the key had none). Such a record may be copied to another drive only
    /// by the same compare-and-swap, so that one that lost on some drives never wins later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<Version>,
}

impl ObjectRecord {
    pub fn redundancy(&self) -> Redundancy {
        Redundancy { k: self.k, m: self.m }
    }

    pub fn geometry(&self, part: &PartRef) -> Geometry {
        Geometry {
            redundancy: self.redundancy(),
            block_size: self.block_size,
            size: part.size,
        }
    }

    pub fn modified_nanos(&self) -> u64 {
        self.modified.unwrap_or(self.version.ts_nanos)
    }

    /// Encodes with the version in front, as [`ringstore_store::Op::PutIfNewer`] expects.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = self.version.to_bytes().to_vec();
        v.extend_from_slice(&crate::rmp_encode(self));
        v
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        let version = Version::from_bytes(bytes).ok_or_else(|| Error::Internal("short record".into()))?;
        let mut rec: ObjectRecord = crate::rmp_decode(&bytes[Version::LEN..])?;
        rec.version = version;
        Ok(rec)
    }

    /// The operation that copies this record (`value`, encoded for one drive) to a drive
    /// under `key`: only above older versions, and for a conditional write only by its own
    /// compare-and-swap, so that one that lost on some drives never wins later.
    pub(crate) fn copy_op(&self, key: &[u8], value: Vec<u8>) -> ringstore_store::Op {
        let table = ringstore_store::Table::Objects;
        let key = key.to_vec();
        match self.swap {
            Some(expected) => ringstore_store::Op::PutIfVersion {
                table,
                key,
                value,
                expected: Some(expected),
            },
            None => ringstore_store::Op::PutIfNewer { table, key, value },
        }
    }

    /// The same record as it must be stored on the drive holding shard `shard`.
    pub(crate) fn for_shard(&self, shard: usize, inline: Option<Vec<u8>>) -> Self {
        Self {
            shard,
            inline,
            ..self.clone()
        }
    }
}

/// Stores inline frames as a msgpack binary rather than an array of integers.
mod serde_bytes_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&Bytes(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<ByteBuf>::deserialize(d).map(|o| o.map(|b| b.0))
    }

    struct Bytes<'a>(&'a [u8]);
    impl serde::Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    struct ByteBuf(Vec<u8>);
    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ObjectRecord {
        ObjectRecord {
            version: Version { ts_nanos: 42, id: 9 },
            deleted: false,
            size: 0,
            etag: "abc".into(),
            headers: BTreeMap::new(),
            user_meta: BTreeMap::new(),
            checksum: None,
            k: 2,
            m: 2,
            block_size: ringstore_erasure::block_size(2),
            codec: ringstore_erasure::CODEC_ID.into(),
            drives: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            parts: vec![],
            shard: 3,
            inline: None,
            modified: None,
            swap: None,
        }
    }

    #[test]
    fn the_first_window_covers_the_first_read_ahead_of_the_first_part() {
        let part = |size: u64, data_id: &str| PartRef {
            number: 1,
            size,
            etag: "e".into(),
            data_id: data_id.into(),
            checksum: None,
        };
        let with_parts = |parts: Vec<PartRef>| {
            let mut r = record();
            r.size = parts.iter().map(|p| p.size).sum();
            r.parts = parts;
            r
        };
        let window = |r: &ObjectRecord| crate::first_window(&r.encode(), None).map(|(id, len, _)| (id, len));
        let block = ringstore_erasure::block_size(2) as u64;
        let geometry = |size: u64| with_parts(vec![part(size, "x")]).geometry(&part(size, "x"));
        // a one-stripe object: its whole (only) frame
        let one = with_parts(vec![part(1000, "d1")]);
        assert_eq!(
            window(&one),
            Some(("d1".into(), geometry(1000).frame(0).1 as u64))
        );
        // two stripes: both frames, the second right after the first's full frame
        let (offset, len) = geometry(block + 10).frame(1);
        let two = with_parts(vec![part(block + 10, "d2")]);
        assert_eq!(window(&two), Some(("d2".into(), offset + len as u64)));
        // a big object: the first four frames only; a multipart object: its first part
        let four = geometry(100 * block).frame(3);
        let big = with_parts(vec![part(100 * block, "p1"), part(5, "p2")]);
        assert_eq!(window(&big), Some(("p1".into(), four.0 + four.1 as u64)));
        // nothing to attach for markers, inline objects and empty ones
        let mut marker = one.clone();
        marker.deleted = true;
        let mut inline = one.clone();
        inline.inline = Some(vec![1, 2]);
        for r in [marker, inline, with_parts(vec![]), with_parts(vec![part(0, "z")])] {
            assert_eq!(window(&r), None, "{r:?}");
        }
        assert_eq!(crate::first_window(b"not a record", None), None);
        // a reader of the first bytes only gets the frames that hold them
        let first = |want| crate::first_window(&big.encode(), Some(want)).map(|(id, len, _)| (id, len));
        let one_frame = geometry(100 * block).frame(0).1 as u64;
        assert_eq!(first(1), Some(("p1".into(), one_frame)));
        assert_eq!(first(block), Some(("p1".into(), one_frame)));
        let two = geometry(100 * block).frame(1);
        assert_eq!(first(block + 1), Some(("p1".into(), two.0 + two.1 as u64)));
        assert_eq!(first(u64::MAX), Some(("p1".into(), four.0 + four.1 as u64)));
        assert_eq!(first(0), None);
        // a data shard's bytes come through the page cache, a parity shard's around it
        let caching = |r: &ObjectRecord| crate::first_window(&r.encode(), None).map(|w| w.2);
        let mut data = one.clone();
        data.shard = data.k - 1;
        assert_eq!(caching(&data), Some(ringstore_rpc::Caching::Cached));
        data.shard = data.k;
        assert_eq!(caching(&data), Some(ringstore_rpc::Caching::Uncached));
    }

    #[test]
    fn record_roundtrip_keeps_version_and_inline_bytes() {
        let rec = ObjectRecord {
            version: Version { ts_nanos: 42, id: 9 },
            deleted: false,
            size: 3,
            etag: "abc".into(),
            headers: [("content-type".to_string(), "text/plain".to_string())].into(),
            user_meta: BTreeMap::new(),
            checksum: None,
            k: 2,
            m: 2,
            block_size: 1024,
            codec: ringstore_erasure::CODEC_ID.into(),
            drives: vec!["a".into(), "b".into()],
            parts: vec![],
            shard: 1,
            inline: Some(vec![1, 2, 3, 255]),
            modified: Some(7),
            swap: Some(Version { ts_nanos: 41, id: 3 }),
        };
        let bytes = rec.encode();
        assert_eq!(ObjectRecord::decode(&bytes).unwrap(), rec);
        // inline bytes are stored compactly, not as an integer array
        let big = ObjectRecord {
            inline: Some(vec![255; 1000]),
            ..rec.clone()
        };
        let grown = big.encode().len() - bytes.len();
        assert!(grown < 1000 + 8, "996 more inline bytes took {grown} more bytes");
        // a plain write's record carries neither the conditional fields nor their names
        let plain = ObjectRecord {
            modified: None,
            swap: None,
            ..rec
        };
        let encoded = plain.encode();
        assert!(!encoded.windows(4).any(|w| w == b"swap"), "no swap field");
        assert_eq!(ObjectRecord::decode(&encoded).unwrap(), plain);
    }
}
