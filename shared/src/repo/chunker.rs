//! Content-defined chunking: FastCDC 2020 (`fastcdc` pinned, its cut points changed between
//! versions) over a gear table derived from the write secret.

use std::io::Read;

use fastcdc::v2020::{Normalization, cut_gear, select_masks};
use serde::{Deserialize, Serialize};

/// Chunk size bounds, stored in the repository config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkerParams {
    /// File data: 512 KiB / 2 MiB / 8 MiB.
    pub const DATA: ChunkerParams = ChunkerParams { min: 512 << 10, avg: 2 << 20, max: 8 << 20 };

    pub fn validate(&self) -> crate::Result<()> {
        let ok = self.min >= 64
            && self.min <= self.avg
            && self.avg <= self.max
            && self.max <= 64 << 20
            && self.min.is_multiple_of(2)
            && self.avg.is_power_of_two();
        if ok {
            Ok(())
        } else {
            Err(crate::Error::Invalid(format!("chunker parameters out of range: {self:?}")))
        }
    }
}

/// A chunker with its secret tables; cheap to clone.
#[derive(Clone)]
pub struct Chunker {
    params: ChunkerParams,
    gear: Vec<u64>,
    gear_ls: Vec<u64>,
    mask_s: u64,
    mask_l: u64,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunker({:?})", self.params)
    }
}

impl Chunker {
    pub fn new(params: ChunkerParams, gear: Vec<u64>) -> Self {
        assert_eq!(gear.len(), 256, "gear table has 256 entries");
        let gear_ls = gear.iter().map(|g| g << 1).collect();
        let (mask_s, mask_l) = select_masks(params.avg as usize, Normalization::Level1);
        Chunker { params, gear, gear_ls, mask_s, mask_l }
    }

    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the next chunk at the start of `buf` (`buf` holds at least `max` bytes or
    /// the rest of the stream).
    pub fn cut(&self, buf: &[u8]) -> usize {
        let (_, end) = cut_gear(
            buf,
            self.params.min as usize,
            self.params.avg as usize,
            self.params.max as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        end.max(1).min(buf.len())
    }

    /// Iterate over the chunks of a reader. Memory: one buffer of `max` bytes plus the chunk.
    pub fn stream<R: Read>(&self, reader: R) -> ChunkStream<'_, R> {
        ChunkStream {
            chunker: self,
            reader,
            buf: Vec::with_capacity(self.params.max as usize),
            eof: false,
        }
    }
}

pub struct ChunkStream<'a, R> {
    chunker: &'a Chunker,
    reader: R,
    buf: Vec<u8>,
    eof: bool,
}

impl<R: Read> Iterator for ChunkStream<'_, R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let max = self.chunker.params.max as usize;
        while !self.eof && self.buf.len() < max {
            let old = self.buf.len();
            self.buf.resize(max, 0);
            match self.reader.read(&mut self.buf[old..]) {
                Ok(0) => {
                    self.buf.truncate(old);
                    self.eof = true;
                }
                Ok(n) => self.buf.truncate(old + n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => self.buf.truncate(old),
                Err(e) => {
                    self.buf.truncate(old);
                    return Some(Err(e));
                }
            }
        }
        if self.buf.is_empty() {
            return None;
        }
        let n = self.chunker.cut(&self.buf);
        let rest = self.buf.split_off(n);
        let chunk = std::mem::replace(&mut self.buf, rest);
        self.buf.reserve(max.saturating_sub(self.buf.len()));
        Some(Ok(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunker(seed: u8) -> Chunker {
        let gear = (0..256u64)
            .map(|i| (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(seed) << 32)
            .collect();
        Chunker::new(ChunkerParams { min: 4096, avg: 16384, max: 65536 }, gear)
    }

    fn data(n: usize) -> Vec<u8> {
        let mut x = 0x1234_5678_u32;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn chunks_reassemble_and_respect_bounds() {
        let d = data(1 << 20);
        let chunks: Vec<Vec<u8>> = chunker(1).stream(&d[..]).map(|c| c.unwrap()).collect();
        assert_eq!(chunks.concat(), d);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= 4096 && c.len() <= 65536, "chunk of {} bytes", c.len());
        }
        assert!(chunks.len() > 20);
    }

    #[test]
    fn an_insertion_shifts_few_chunks() {
        let d = data(1 << 20);
        let mut e = d.clone();
        e.splice(500_000..500_000, b"inserted bytes".iter().copied());
        let a: std::collections::HashSet<Vec<u8>> =
            chunker(1).stream(&d[..]).map(|c| c.unwrap()).collect();
        let b: Vec<Vec<u8>> = chunker(1).stream(&e[..]).map(|c| c.unwrap()).collect();
        let shared = b.iter().filter(|c| a.contains(*c)).count();
        assert!(shared + 3 >= b.len(), "only {shared} of {} chunks survive an insertion", b.len());
    }

    #[test]
    fn the_secret_table_moves_boundaries() {
        let d = data(1 << 20);
        let a: Vec<usize> = chunker(1).stream(&d[..]).map(|c| c.unwrap().len()).collect();
        let b: Vec<usize> = chunker(2).stream(&d[..]).map(|c| c.unwrap().len()).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert_eq!(chunker(1).stream(&[][..]).count(), 0);
    }
}
