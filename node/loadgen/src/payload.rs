//! Object payloads: one shared random buffer per size, each object stamped with its sequence number.
//!
//! Object `seq` is the shared buffer with its first [`HEADER_LEN`] bytes replaced by a header derived
//! from `seq`, so every object is distinguishable while PUT bodies and GET verification only ever
//! reference the shared buffer (no per-request copies).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use rand::{RngCore, SeedableRng};

/// Number of leading bytes of every object that identify it.
pub const HEADER_LEN: usize = 16;

/// Magic stamped in the second half of each object header.
const MAGIC: &[u8; 8] = b"RSLOADGN";

/// The shared content all objects of one size are derived from.
#[derive(Clone)]
pub struct Payload {
    base: Bytes,
}

impl Payload {
    /// Builds the shared buffer for `size` bytes. Content is deterministic per size, so a GET-only run
    /// can verify objects written by an earlier run.
    pub fn new(size: usize) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5249_4e47_5354_4f52 ^ size as u64);
        let mut buf = vec![0u8; size];
        rng.fill_bytes(&mut buf);
        Self {
            base: Bytes::from(buf),
        }
    }

    pub fn size(&self) -> usize {
        self.base.len()
    }

    /// Full header of object `seq` (only the first `min(size, HEADER_LEN)` bytes are used).
    pub fn header(seq: u64) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&seq.to_be_bytes());
        h[8..].copy_from_slice(MAGIC);
        h
    }

    /// Request body for object `seq`: the header chunk followed by the rest of the shared buffer.
    pub fn body(&self, seq: u64) -> ObjectBody {
        let hlen = HEADER_LEN.min(self.size());
        let header = Bytes::copy_from_slice(&Self::header(seq)[..hlen]);
        let rest = self.base.slice(hlen..);
        ObjectBody::new([header, rest])
    }

    /// Starts verifying a streamed copy of object `seq`.
    pub fn verifier(&self, seq: u64) -> Verifier<'_> {
        Verifier {
            payload: self,
            header: Self::header(seq),
            offset: 0,
        }
    }
}

/// Incremental byte-for-byte comparison of a received body against the expected object.
pub struct Verifier<'a> {
    payload: &'a Payload,
    header: [u8; HEADER_LEN],
    offset: usize,
}

impl Verifier<'_> {
    /// Checks the next received chunk. On mismatch returns the offset of the first differing byte
    /// (or of the first byte past the expected end).
    pub fn update(&mut self, mut chunk: &[u8]) -> Result<(), usize> {
        let size = self.payload.size();
        if chunk.len() > size - self.offset {
            return Err(size.max(self.offset));
        }
        let hlen = HEADER_LEN.min(size);
        if self.offset < hlen {
            let n = (hlen - self.offset).min(chunk.len());
            let expected = &self.header[self.offset..self.offset + n];
            if let Some(i) = first_diff(&chunk[..n], expected) {
                return Err(self.offset + i);
            }
            self.offset += n;
            chunk = &chunk[n..];
        }
        let expected = &self.payload.base[self.offset..self.offset + chunk.len()];
        if chunk != expected {
            let i = first_diff(chunk, expected).unwrap_or(0);
            return Err(self.offset + i);
        }
        self.offset += chunk.len();
        Ok(())
    }

    /// Checks that the whole object was received; returns the number of bytes seen otherwise.
    pub fn finish(&self) -> Result<(), usize> {
        if self.offset == self.payload.size() {
            Ok(())
        } else {
            Err(self.offset)
        }
    }
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

/// A request body made of at most two pre-built chunks (no copying of the shared buffer).
pub struct ObjectBody {
    chunks: [Option<Bytes>; 2],
    remaining: u64,
}

impl ObjectBody {
    pub fn new(chunks: [Bytes; 2]) -> Self {
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        let [a, b] = chunks;
        Self {
            chunks: [
                Some(a).filter(|c| !c.is_empty()),
                Some(b).filter(|c| !c.is_empty()),
            ],
            remaining,
        }
    }

    pub fn empty() -> Self {
        Self {
            chunks: [None, None],
            remaining: 0,
        }
    }
}

impl Body for ObjectBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        for slot in &mut this.chunks {
            if let Some(chunk) = slot.take() {
                this.remaining -= chunk.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn collect(body: ObjectBody) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn body_roundtrips_through_verifier() {
        for size in [0usize, 1, 15, 16, 17, 4096] {
            let p = Payload::new(size);
            let data = collect(p.body(7)).await;
            assert_eq!(data.len(), size);
            // whole buffer at once
            let mut v = p.verifier(7);
            v.update(&data).unwrap();
            v.finish().unwrap();
            // odd-sized chunks
            let mut v = p.verifier(7);
            for c in data.chunks(5) {
                v.update(c).unwrap();
            }
            v.finish().unwrap();
        }
    }

    #[tokio::test]
    async fn objects_are_distinguishable() {
        let p = Payload::new(4096);
        let other = collect(p.body(8)).await;
        let mut v = p.verifier(7);
        assert_eq!(v.update(&other), Err(7));
    }

    #[test]
    fn detects_corruption_truncation_and_overrun() {
        let p = Payload::new(100);
        let mut data = [0u8; 100];
        data[..16].copy_from_slice(&Payload::header(3));
        data[16..].copy_from_slice(&p.base[16..]);
        data[50] ^= 1;
        let mut v = p.verifier(3);
        assert_eq!(v.update(&data[..40]), Ok(()));
        assert_eq!(v.update(&data[40..]), Err(50));

        let mut v = p.verifier(3);
        data[50] ^= 1;
        v.update(&data[..99]).unwrap();
        assert_eq!(v.finish(), Err(99));
        v.update(&data[99..]).unwrap();
        assert_eq!(v.update(b"x"), Err(100));
    }

    #[test]
    fn deterministic_per_size() {
        assert_eq!(Payload::new(64).base, Payload::new(64).base);
    }
}
