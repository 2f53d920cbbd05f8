//! Erasure coding of object data into checksummed shard frames.
//!
//! Pure code, no I/O. An object (or one multipart part) is cut into stripes of
//! `block_size` bytes. Each stripe is split into `k` equal data chunks (the last one zero
//! padded) and Reed-Solomon encoded into `m` parity chunks. Every chunk is stored as a
//! *frame*: the chunk bytes followed by their CRC32C, so bit rot is detected on read.
//! Shard `i` of an object is the concatenation of frame `i` of every stripe, so the frame
//! of stripe `s` starts at `s * full_frame_len` in every shard.

use reed_solomon_erasure::galois_8::ReedSolomon;
pub use ringstore_ring::Redundancy;

/// Bytes of checksum after every chunk.
pub const CHECKSUM_LEN: usize = 4;

/// Length of a full frame on disk: a multiple of the page size, so shard files can be
/// written with direct I/O at aligned offsets.
pub const FRAME_LEN: usize = 256 * 1024;

/// Object bytes per stripe for `k` data shards, chosen so a full stripe's frames are
/// exactly [`FRAME_LEN`] long.
pub fn block_size(k: usize) -> usize {
    k * (FRAME_LEN - CHECKSUM_LEN)
}

/// Identifies the code that produced parity, recorded with every object so that a future
/// codec change can still read old data.
pub const CODEC_ID: &str = "rs-gf8-crc32c-v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("only {have} of the {need} shards needed to decode are intact")]
    TooFewShards { have: usize, need: usize },
    #[error("invalid erasure geometry: {0}")]
    Geometry(String),
}

/// Stripe geometry of one stored data file (an object or a part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub redundancy: Redundancy,
    pub block_size: usize,
    pub size: u64,
}

impl Geometry {
    pub fn stripes(&self) -> u64 {
        self.size.div_ceil(self.block_size as u64)
    }

    /// Data bytes in stripe `s`.
    pub fn stripe_len(&self, s: u64) -> usize {
        let start = s * self.block_size as u64;
        (self.size - start).min(self.block_size as u64) as usize
    }

    /// Chunk bytes (without checksum) per shard for a stripe of `len` data bytes.
    pub fn chunk_len(&self, len: usize) -> usize {
        len.div_ceil(self.redundancy.k)
    }

    /// Frame length of a full stripe.
    pub fn full_frame_len(&self) -> usize {
        self.chunk_len(self.block_size) + CHECKSUM_LEN
    }

    /// Offset and length of stripe `s`'s frame inside every shard.
    pub fn frame(&self, s: u64) -> (u64, usize) {
        let offset = s * self.full_frame_len() as u64;
        (offset, self.chunk_len(self.stripe_len(s)) + CHECKSUM_LEN)
    }

    /// Total length of every shard file.
    pub fn shard_len(&self) -> u64 {
        match self.stripes() {
            0 => 0,
            n => {
                let (off, len) = self.frame(n - 1);
                off + len as u64
            }
        }
    }
}

/// Encoder and decoder for one redundancy scheme.
pub struct Codec {
    redundancy: Redundancy,
    rs: Option<ReedSolomon>,
}

impl Codec {
    pub fn new(redundancy: Redundancy) -> Result<Self, Error> {
        let rs = if redundancy.m == 0 {
            None
        } else {
            Some(
                ReedSolomon::new(redundancy.k, redundancy.m)
                    .map_err(|e| Error::Geometry(format!("{redundancy}: {e:?}")))?,
            )
        };
        Ok(Self { redundancy, rs })
    }

    pub fn redundancy(&self) -> Redundancy {
        self.redundancy
    }

    /// Encodes one stripe into `k + m` frames (chunk followed by CRC32C).
    pub fn encode(&self, data: &[u8]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        self.encode_into(data, &mut frames);
        frames
    }

    /// Like [`Codec::encode`], reusing the frame buffers of `frames` (stripe after stripe
    /// of one object, without allocating).
    pub fn encode_into(&self, data: &[u8], frames: &mut Vec<Vec<u8>>) {
        let mut stripe = data.to_vec();
        let mut parity = Vec::new();
        let pieces = self.encode_stripe(&mut stripe, &mut parity);
        frames.resize_with(pieces.len(), Vec::new);
        for (f, (chunk, crc)) in frames.iter_mut().zip(pieces) {
            f.clear();
            f.extend_from_slice(chunk);
            f.extend_from_slice(&crc);
        }
    }

    /// Encodes a stripe without copying its data: pads `stripe` with zeros to whole chunks,
    /// computes the parity chunks into `parity` (buffers reused between calls), and returns
    /// every frame as its chunk (borrowed) and CRC32C bytes. Writing each chunk followed by
    /// its CRC gives exactly the frames of [`Codec::encode`].
    pub fn encode_stripe<'a>(
        &self,
        stripe: &'a mut Vec<u8>,
        parity: &'a mut Vec<Vec<u8>>,
    ) -> Vec<(&'a [u8], [u8; CHECKSUM_LEN])> {
        let Redundancy { k, m } = self.redundancy;
        let chunk = stripe.len().div_ceil(k);
        stripe.resize(chunk * k, 0);
        parity.resize_with(m, Vec::new);
        for p in parity.iter_mut() {
            p.clear();
            p.resize(chunk, 0);
        }
        if let Some(rs) = &self.rs {
            let data: Vec<&[u8]> = stripe.chunks(chunk.max(1)).collect();
            if chunk > 0 {
                rs.encode_sep(&data, parity)
                    .expect("shards sized consistently above");
            }
        }
        let data: &'a [u8] = stripe;
        let parity: &'a [Vec<u8>] = parity;
        (0..k)
            .map(|i| &data[i * chunk..(i + 1) * chunk])
            .chain(parity.iter().map(|p| p.as_slice()))
            .map(|c| (c, crc_fast::crc32_iscsi(c).to_le_bytes()))
            .collect()
    }

    /// Decodes a stripe of `len` data bytes for reading: like [`Codec::decode`], but rebuilds
    /// only missing data chunks (never parity) and returns no repaired frames, so a reader
    /// can pass exactly `k` frames. Also says how many of the given frames failed their
    /// checksum.
    pub fn decode_data(&self, len: usize, frames: Vec<Option<Vec<u8>>>) -> Result<DecodedData, Error> {
        let Redundancy { k, m } = self.redundancy;
        if frames.len() != k + m {
            return Err(Error::Geometry(format!(
                "{} frames for {}",
                frames.len(),
                self.redundancy
            )));
        }
        let chunk = len.div_ceil(k);
        let given = frames.iter().filter(|f| f.is_some()).count();
        let chunks: Vec<Option<Vec<u8>>> = frames
            .into_iter()
            .map(|f| f.and_then(|f| open(f, chunk)))
            .collect();
        let intact = chunks.iter().filter(|c| c.is_some()).count();
        let data = self.data_chunks(len, chunks)?.concat();
        Ok(DecodedData {
            data,
            corrupt: given - intact,
        })
    }

    /// The `k` data chunks of a stripe of `len` bytes, rebuilding missing ones from
    /// `chunks`: shard `i`'s chunk, already verified and stripped of its checksum (see
    /// [`verified_chunk`]), or `None`. Together the chunks returned hold exactly `len`
    /// bytes (the padding at the end is cut). The chunks given are moved, not copied.
    pub fn data_chunks(&self, len: usize, mut chunks: Vec<Option<Vec<u8>>>) -> Result<Vec<Vec<u8>>, Error> {
        let Redundancy { k, m } = self.redundancy;
        if chunks.len() != k + m {
            return Err(Error::Geometry(format!(
                "{} frames for {}",
                chunks.len(),
                self.redundancy
            )));
        }
        let intact = chunks.iter().filter(|c| c.is_some()).count();
        if intact < k {
            return Err(Error::TooFewShards {
                have: intact,
                need: k,
            });
        }
        if chunks.iter().take(k).any(Option::is_none) {
            let rs = self.rs.as_ref().expect("m == 0 has no damage it can survive");
            rs.reconstruct_data(&mut chunks)
                .map_err(|e| Error::Geometry(format!("{e:?}")))?;
        }
        let chunk = len.div_ceil(k);
        let mut left = len;
        Ok(chunks
            .into_iter()
            .take(k)
            .map(|c| {
                let mut c = c.expect("data chunks rebuilt");
                c.truncate(left.min(chunk));
                left -= c.len();
                c
            })
            .collect())
    }

    /// Decodes a stripe of `len` data bytes from whatever frames are available.
    ///
    /// `frames[i]` is shard `i`'s frame or `None` when it could not be read. Frames that
    /// fail their checksum are treated as missing. Returns the data and, for every shard
    /// that was missing or corrupt, its rebuilt frame so the caller can repair it.
    pub fn decode(&self, len: usize, frames: Vec<Option<Vec<u8>>>) -> Result<Decoded, Error> {
        let Redundancy { k, m } = self.redundancy;
        if frames.len() != k + m {
            return Err(Error::Geometry(format!(
                "{} frames for {}",
                frames.len(),
                self.redundancy
            )));
        }
        let chunk = len.div_ceil(k);
        let mut chunks: Vec<Option<Vec<u8>>> = frames
            .into_iter()
            .map(|f| f.and_then(|f| open(f, chunk)))
            .collect();
        let damaged: Vec<usize> = (0..k + m).filter(|i| chunks[*i].is_none()).collect();
        let intact = k + m - damaged.len();
        if intact < k {
            return Err(Error::TooFewShards {
                have: intact,
                need: k,
            });
        }
        let mut repaired = Vec::new();
        if !damaged.is_empty() {
            let rs = self.rs.as_ref().expect("m == 0 has no damage it can survive");
            rs.reconstruct(&mut chunks)
                .map_err(|e| Error::Geometry(format!("{e:?}")))?;
            for &i in &damaged {
                let mut f = chunks[i].clone().expect("reconstructed");
                seal(&mut f);
                repaired.push((i, f));
            }
        }
        let mut data = Vec::with_capacity(chunk * k);
        for c in chunks.iter().take(k) {
            data.extend_from_slice(c.as_deref().expect("data shards present"));
        }
        data.truncate(len);
        Ok(Decoded { data, repaired })
    }
}

/// The result of decoding one stripe.
#[derive(Debug)]
pub struct Decoded {
    pub data: Vec<u8>,
    /// `(shard index, rebuilt frame)` for every shard that was missing or corrupt.
    pub repaired: Vec<(usize, Vec<u8>)>,
}

/// What [`Codec::decode_data`] returns.
#[derive(Debug)]
pub struct DecodedData {
    pub data: Vec<u8>,
    /// How many of the frames given failed their checksum.
    pub corrupt: usize,
}

fn seal(chunk: &mut Vec<u8>) {
    let crc = crc_fast::crc32_iscsi(chunk);
    chunk.extend_from_slice(&crc.to_le_bytes());
}

/// Verifies a frame and strips its checksum; `None` when damaged.
fn open(mut frame: Vec<u8>, chunk: usize) -> Option<Vec<u8>> {
    if frame.len() != chunk + CHECKSUM_LEN {
        return None;
    }
    let crc = u32::from_le_bytes(frame[chunk..].try_into().ok()?);
    frame.truncate(chunk);
    (crc_fast::crc32_iscsi(&frame) == crc).then_some(frame)
}

/// A frame of a stripe whose chunks are `chunk` bytes, verified and stripped of its
/// checksum (no copy); `None` when it is damaged.
pub fn verified_chunk(frame: Vec<u8>, chunk: usize) -> Option<Vec<u8>> {
    open(frame, chunk)
}

/// Checks one frame's checksum without decoding (used by the scrubber).
pub fn frame_is_intact(frame: &[u8]) -> bool {
    if frame.len() < CHECKSUM_LEN {
        return false;
    }
    let (chunk, crc) = frame.split_at(frame.len() - CHECKSUM_LEN);
    crc_fast::crc32_iscsi(chunk) == u32::from_le_bytes(crc.try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn codec(k: usize, m: usize) -> Codec {
        Codec::new(Redundancy::new(k, m).unwrap()).unwrap()
    }

    #[test]
    fn roundtrip_without_damage() {
        for (k, m) in [(1, 0), (1, 1), (2, 1), (2, 2), (4, 2), (12, 4)] {
            let c = codec(k, m);
            for len in [1, 7, 1000, 4096, 65_537] {
                let d = data(len);
                let frames = c.encode(&d);
                assert_eq!(frames.len(), k + m);
                assert!(frames.iter().all(|f| frame_is_intact(f)));
                let out = c.decode(len, frames.into_iter().map(Some).collect()).unwrap();
                assert_eq!(out.data, d);
                assert!(out.repaired.is_empty());
            }
        }
    }

    #[test]
    fn data_chunks_rebuild_from_verified_chunks_and_hold_exactly_the_stripe() {
        for (k, m) in [(1, 1), (2, 2), (4, 2)] {
            let c = codec(k, m);
            // a stripe whose length is not a multiple of k: the last chunk carries padding
            for len in [1, 4097, 70_001] {
                let d = data(len);
                let chunk = len.div_ceil(k);
                let chunks: Vec<Vec<u8>> = c
                    .encode(&d)
                    .into_iter()
                    .map(|f| verified_chunk(f, chunk).expect("intact"))
                    .collect();
                // parity first: every data chunk but the last given is rebuilt
                for skip in 0..=m.min(k) {
                    let given: Vec<Option<Vec<u8>>> = (0..k + m)
                        .map(|i| (i >= skip && i < skip + k).then(|| chunks[i].clone()))
                        .collect();
                    let out = c.data_chunks(len, given).unwrap();
                    assert_eq!(out.len(), k);
                    assert_eq!(
                        out.concat(),
                        d,
                        "{k}+{m}, {len} B, first {skip} data chunks rebuilt"
                    );
                }
                let too_few: Vec<Option<Vec<u8>>> = (0..k + m)
                    .map(|i| (i + 1 < k).then(|| chunks[i].clone()))
                    .collect();
                assert!(c.data_chunks(len, too_few).is_err());
            }
        }
        // a damaged frame is not a verified chunk
        let c = codec(2, 2);
        let mut f = c.encode(&data(100)).remove(0);
        f[0] ^= 1;
        assert!(verified_chunk(f, 50).is_none());
    }

    #[test]
    fn decode_data_reads_any_k_frames_and_counts_corrupt_ones() {
        for (k, m) in [(1, 1), (2, 1), (2, 2), (4, 2)] {
            let c = codec(k, m);
            let len = 70_001;
            let d = data(len);
            let frames = c.encode(&d);
            // every choice of exactly k frames decodes
            for start in 0..=m {
                let given: Vec<Option<Vec<u8>>> = (0..k + m)
                    .map(|i| (start..start + k).contains(&i).then(|| frames[i].clone()))
                    .collect();
                let out = c.decode_data(len, given).unwrap();
                assert_eq!(out.data, d, "{k}+{m} from shards {start}..{}", start + k);
                assert_eq!(out.corrupt, 0);
            }
            // a corrupt data frame is counted and rebuilt from the others
            let mut all: Vec<Option<Vec<u8>>> = frames.iter().cloned().map(Some).collect();
            all[0].as_mut().unwrap()[3] ^= 1;
            let out = c.decode_data(len, all.clone()).unwrap();
            assert_eq!((out.data == d, out.corrupt), (true, 1));
            // k frames of which one is corrupt are not enough
            let short: Vec<Option<Vec<u8>>> = all
                .into_iter()
                .enumerate()
                .map(|(i, f)| f.filter(|_| i < k))
                .collect();
            assert_eq!(
                c.decode_data(len, short).unwrap_err(),
                Error::TooFewShards { have: k - 1, need: k }
            );
        }
    }

    #[test]
    fn reconstructs_up_to_m_lost_or_corrupt_shards() {
        let c = codec(2, 2);
        let d = data(10_001);
        let mut frames: Vec<Option<Vec<u8>>> = c.encode(&d).into_iter().map(Some).collect();
        let original = frames.clone();
        frames[0] = None;
        frames[3].as_mut().unwrap()[5] ^= 0x40; // bit rot
        let out = c.decode(d.len(), frames).unwrap();
        assert_eq!(out.data, d);
        let fixed: Vec<usize> = out.repaired.iter().map(|(i, _)| *i).collect();
        assert_eq!(fixed, vec![0, 3]);
        for (i, f) in out.repaired {
            assert_eq!(Some(f), original[i]);
        }
    }

    #[test]
    fn too_much_damage_is_reported() {
        let c = codec(2, 1);
        let mut frames: Vec<Option<Vec<u8>>> = c.encode(&data(100)).into_iter().map(Some).collect();
        frames[0] = None;
        frames[1] = None;
        assert_eq!(
            c.decode(100, frames).unwrap_err(),
            Error::TooFewShards { have: 1, need: 2 }
        );
        let c = codec(1, 0);
        let mut frames: Vec<Option<Vec<u8>>> = c.encode(&data(100)).into_iter().map(Some).collect();
        frames[0].as_mut().unwrap()[0] ^= 1;
        assert!(c.decode(100, frames).is_err());
    }

    #[test]
    fn full_frames_are_page_aligned() {
        for k in 1..=12 {
            let g = Geometry {
                redundancy: Redundancy::new(k, 2).unwrap(),
                block_size: block_size(k),
                size: 1 << 30,
            };
            assert_eq!(g.full_frame_len(), FRAME_LEN);
            assert_eq!(g.frame(3).0 % 4096, 0);
        }
    }

    #[test]
    fn geometry_offsets() {
        let g = Geometry {
            redundancy: Redundancy::new(2, 2).unwrap(),
            block_size: 1024,
            size: 2500,
        };
        assert_eq!(g.stripes(), 3);
        assert_eq!(g.stripe_len(2), 452);
        assert_eq!(g.full_frame_len(), 516);
        assert_eq!(g.frame(1), (516, 516));
        assert_eq!(g.frame(2), (1032, 226 + 4));
        assert_eq!(g.shard_len(), 1032 + 230);
        let empty = Geometry { size: 0, ..g };
        assert_eq!((empty.stripes(), empty.shard_len()), (0, 0));
    }
}
