//! Chunking. File trees: content-defined, FastCDC 2020 (`fastcdc` pinned, its cut points
//! changed between versions) over a gear table derived from the write secret. Files that
//! change in place (databases, volume images): fixed pages (FORMAT.md §8.6), so that a
//! changed page is one new chunk and the pages around it dedup.

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
        // fastcdc's mask table covers averages up to 16 MiB; its cut routine wants even sizes.
        let ok = self.min >= 64
            && self.min <= self.avg
            && self.avg <= self.max
            && self.avg <= 16 << 20
            && self.max <= 64 << 20
            && self.min.is_multiple_of(2)
            && self.max.is_multiple_of(2)
            && self.avg.is_power_of_two();
        if ok {
            Ok(())
        } else {
            Err(crate::Error::Invalid(format!("chunker parameters out of range: {self:?}")))
        }
    }
}

/// How one file's content is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Chunking {
    /// Content-defined chunks with the repository's parameters.
    #[default]
    Cdc,
    /// Pages of this many bytes, cut at file offsets that are multiples of it.
    Pages(u32),
}

impl Chunking {
    /// Page sizes a writer uses: powers of two from 4 KiB (smaller pages would multiply
    /// the blobs for little gain) to 64 KiB.
    pub fn valid_page_size(page: u32) -> bool {
        page.is_power_of_two() && (4096..=65536).contains(&page)
    }

    /// The page size recorded on a file node (`None` for content-defined chunks).
    pub fn pages(self) -> Option<u32> {
        match self {
            Chunking::Cdc => None,
            Chunking::Pages(p) => Some(p),
        }
    }
}

/// The chunks of a stream cut into pages: each ends at the next multiple of `page` counted
/// from the start of the file (the stream starts at file offset `offset`), or at the end of
/// the stream. Reads go through a 1 MiB buffer: a page is not a system call.
pub struct PageStream<R> {
    reader: std::io::BufReader<R>,
    page: u64,
    offset: u64,
}

impl<R: Read> PageStream<R> {
    pub fn new(reader: R, page: u32, offset: u64) -> Self {
        assert!(page > 0, "page size");
        PageStream {
            reader: std::io::BufReader::with_capacity(1 << 20, reader),
            page: u64::from(page),
            offset,
        }
    }
}

impl<R: Read> Iterator for PageStream<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let want = (self.page - self.offset % self.page) as usize;
        let mut chunk = vec![0u8; want];
        let mut got = 0;
        while got < want {
            match self.reader.read(&mut chunk[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(e)),
            }
        }
        if got == 0 {
            return None;
        }
        chunk.truncate(got);
        self.offset += got as u64;
        Some(Ok(chunk))
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

    /// Iterate over the chunks of a reader. Memory: one buffer of `max` bytes, allocated
    /// once and never cleared, plus the chunk handed out.
    pub fn stream<R: Read>(&self, reader: R) -> ChunkStream<'_, R> {
        ChunkStream { chunker: self, reader, buf: Vec::new(), start: 0, end: 0, eof: false }
    }
}

pub struct ChunkStream<'a, R> {
    chunker: &'a Chunker,
    reader: R,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> ChunkStream<'_, R> {
    fn fill(&mut self) -> std::io::Result<()> {
        let max = self.chunker.params.max as usize;
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while !self.eof && self.end < max {
            if self.buf.len() < max {
                // Grow geometrically: a 1 KiB file must not cost an 8 MiB memset.
                let want = (self.end + 64 * 1024).max(self.buf.len() * 2).min(max);
                self.buf.resize(want, 0);
            }
            let cap = self.buf.len();
            match self.reader.read(&mut self.buf[self.end..cap]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for ChunkStream<'_, R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let max = self.chunker.params.max as usize;
        if self.end - self.start < max
            && !self.eof
            && let Err(e) = self.fill()
        {
            return Some(Err(e));
        }
        if self.start == self.end {
            return None;
        }
        let n = self.chunker.cut(&self.buf[self.start..self.end]);
        let chunk = self.buf[self.start..self.start + n].to_vec();
        self.start += n;
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
    fn out_of_range_parameters_are_refused() {
        assert!(ChunkerParams::DATA.validate().is_ok());
        assert!(ChunkerParams { min: 512, avg: 32 << 20, max: 64 << 20 }.validate().is_err());
        assert!(ChunkerParams { min: 512, avg: 4096, max: 8191 }.validate().is_err());
    }

    #[test]
    fn small_reads_give_the_same_chunks() {
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(1000).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let d = data(300_000);
        let a: Vec<Vec<u8>> = chunker(1).stream(&d[..]).map(|c| c.unwrap()).collect();
        let b: Vec<Vec<u8>> = chunker(1).stream(Trickle(&d)).map(|c| c.unwrap()).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn pages_are_cut_at_file_offsets_that_are_multiples_of_the_page() {
        let d = data(20_000 - 6144);
        // A data region from 6144 to 20000 (after a hole): FORMAT.md's example.
        let lens: Vec<usize> =
            PageStream::new(&d[..], 4096, 6144).map(|c| c.unwrap().len()).collect();
        assert_eq!(lens, vec![2048, 4096, 4096, 3616]);
        let again: Vec<u8> = PageStream::new(&d[..], 4096, 6144).flat_map(|c| c.unwrap()).collect();
        assert_eq!(again, d);
        assert_eq!(PageStream::new(&[][..], 4096, 0).count(), 0);
        assert!(Chunking::valid_page_size(8192) && !Chunking::valid_page_size(512));
        assert!(!Chunking::valid_page_size(6000) && !Chunking::valid_page_size(1 << 17));
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert_eq!(chunker(1).stream(&[][..]).count(), 0);
    }
}
