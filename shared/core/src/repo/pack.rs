//! Packs: many sealed blobs in one object, with a sealed header at the end that lists them.
//!
//! ```text
//! pack   = "CAIRNPK1" blob* padding header_sealed header_len:u32le "CAIRNPK1"
//! header = version:u8 kind:u8 wrapped_key_len:u32le wrapped_key count:u32le entry*
//! entry  = id:[32] flags:u8 offset:u32le length:u32le raw_len:u32le
//! ```
//! FORMAT.md is the normative description.

use super::crypto::{SymKey, domain};
use super::ids::{BlobId, PackId};
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"CAIRNPK1";
pub const HEADER_VERSION: u8 = 1;
/// Bytes after the sealed header: its length and the closing magic.
pub const TRAILER_LEN: usize = 4 + 8;
const ENTRY_LEN: usize = 32 + 1 + 4 + 4 + 4;
/// flags bit 0: the plaintext was zstd-compressed before sealing.
pub const FLAG_ZSTD: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// File contents, sealed with the pack's data key.
    Data = 0,
    /// Directory listings, sealed with the metadata key.
    Tree = 1,
}

impl BlobKind {
    fn from_u8(v: u8) -> Result<Self> {
        match v {
            0 => Ok(BlobKind::Data),
            1 => Ok(BlobKind::Tree),
            _ => Err(Error::Integrity(format!("unknown blob kind {v}"))),
        }
    }
    pub fn domain(self) -> &'static [u8] {
        match self {
            BlobKind::Data => domain::DATA,
            BlobKind::Tree => domain::TREE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub id: BlobId,
    pub flags: u8,
    pub offset: u32,
    pub length: u32,
    pub raw_len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackHeader {
    pub kind: BlobKind,
    /// The pack data key wrapped to the repository's data recipient (age). Empty for tree
    /// packs, whose blobs are sealed with the metadata key.
    pub wrapped_key: Vec<u8>,
    pub entries: Vec<PackEntry>,
}

impl PackHeader {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(HEADER_VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&(self.wrapped_key.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.wrapped_key);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.id.0);
            out.push(e.flags);
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.length.to_le_bytes());
            out.extend_from_slice(&e.raw_len.to_le_bytes());
        }
    }

    /// Decode one header from the front of `r`, advancing it.
    pub fn decode(r: &mut Reader<'_>) -> Result<PackHeader> {
        let version = r.u8()?;
        if version != HEADER_VERSION {
            return Err(Error::Integrity(format!(
                "pack header version {version} is not supported"
            )));
        }
        let kind = BlobKind::from_u8(r.u8()?)?;
        let key_len = r.u32()? as usize;
        let wrapped_key = r.bytes(key_len)?.to_vec();
        let count = r.u32()? as usize;
        if count > r.remaining() / ENTRY_LEN {
            return Err(Error::Integrity(format!(
                "pack header claims {count} entries, too many for its size"
            )));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let id = BlobId(r.bytes(32)?.try_into().expect("32 bytes"));
            let flags = r.u8()?;
            let offset = r.u32()?;
            let length = r.u32()?;
            let raw_len = r.u32()?;
            if flags & !FLAG_ZSTD != 0 {
                return Err(Error::Integrity(format!(
                    "blob {}: unknown flags {flags:#x}",
                    id.short()
                )));
            }
            entries.push(PackEntry { id, flags, offset, length, raw_len });
        }
        Ok(PackHeader { kind, wrapped_key, entries })
    }
}

/// A bounds-checked reader for the binary decoders; every short read is an integrity error.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(Error::Integrity(format!(
                "truncated: wanted {n} bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4 bytes")))
    }
}

/// Compress a blob's plaintext with zstd when that shrinks it.
pub fn compress(plaintext: &[u8], level: i32) -> (u8, Vec<u8>) {
    thread_local! {
        // A zstd context costs far more to create than to compress a small file with: keep
        // one per thread.
        static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    if plaintext.len() >= 64 {
        let compressed = COMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(l, _)| *l != level) {
                *slot = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
            }
            slot.as_mut().and_then(|(_, c)| c.compress(plaintext).ok())
        });
        if let Some(c) = compressed
            && c.len() + 16 < plaintext.len()
        {
            return (FLAG_ZSTD, c);
        }
    }
    (0, plaintext.to_vec())
}

/// Up to this announced size, blobs are decompressed into one buffer allocated up front.
const BULK_LIMIT: u32 = 16 << 20;

/// Undo [`compress`], checking the announced length.
pub fn decompress(flags: u8, payload: Vec<u8>, raw_len: u32, what: &str) -> Result<Vec<u8>> {
    let out = if flags & FLAG_ZSTD != 0 {
        if raw_len <= BULK_LIMIT {
            // Chunks are at most 8 MiB: decompress into one buffer with a reused context.
            thread_local! {
                static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    const { std::cell::RefCell::new(None) };
            }
            DECOMPRESSOR
                .with(|cell| {
                    let mut slot = cell.borrow_mut();
                    if slot.is_none() {
                        *slot = zstd::bulk::Decompressor::new().ok();
                    }
                    match slot.as_mut() {
                        Some(d) => d.decompress(&payload, raw_len as usize),
                        None => zstd::bulk::decompress(&payload, raw_len as usize),
                    }
                })
                .map_err(|e| Error::Integrity(format!("{what}: zstd: {e}")))?
        } else {
            // Larger claims are streamed, so memory follows the real output: `raw_len` comes
            // from the index, and a forged index must not make a reader allocate gigabytes.
            use std::io::Read;
            let mut out = Vec::new();
            zstd::stream::read::Decoder::with_buffer(&payload[..])
                .and_then(|d| d.take(u64::from(raw_len) + 1).read_to_end(&mut out))
                .map_err(|e| Error::Integrity(format!("{what}: zstd: {e}")))?;
            out
        }
    } else {
        payload
    };
    if out.len() != raw_len as usize {
        return Err(Error::Integrity(format!("{what}: {} bytes, index says {raw_len}", out.len())));
    }
    Ok(out)
}

/// Accumulates sealed blobs into one pack.
#[derive(Debug)]
pub struct PackBuilder {
    pub id: PackId,
    pub kind: BlobKind,
    /// Seals this pack's blobs: a random data key (data packs) or the metadata key (trees).
    pub key: SymKey,
    wrapped_key: Vec<u8>,
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl PackBuilder {
    pub fn new(kind: BlobKind, key: SymKey, wrapped_key: Vec<u8>, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(MAGIC);
        PackBuilder { id: PackId::random(), kind, key, wrapped_key, buf, entries: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Seal a (possibly compressed) payload and append it.
    pub fn add(&mut self, id: BlobId, flags: u8, raw_len: u32, payload: &[u8]) {
        let offset = self.buf.len() as u32;
        self.key.seal_into(self.kind.domain(), &id.0, payload, &mut self.buf);
        let length = self.buf.len() as u32 - offset;
        self.entries.push(PackEntry { id, flags, offset, length, raw_len });
    }

    /// Close the pack: random padding (so pack sizes reveal less), the sealed header, the
    /// trailer. Returns the bytes and the header for the index.
    pub fn finish(mut self, meta: &SymKey) -> (PackId, Vec<u8>, PackHeader) {
        let pad = (rand::random::<u16>() % 4096) as usize;
        let start = self.buf.len();
        self.buf.resize(start + pad, 0);
        rand::fill(&mut self.buf[start..]);
        let header =
            PackHeader { kind: self.kind, wrapped_key: self.wrapped_key, entries: self.entries };
        let mut plain = Vec::new();
        header.encode(&mut plain);
        let sealed = meta.seal(domain::PACK_HEADER, &self.id.0, &plain);
        self.buf.extend_from_slice(&sealed);
        self.buf.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(MAGIC);
        (self.id, self.buf, header)
    }
}

/// Read the header of a whole pack (as `check` and index rebuilds do).
pub fn read_header(id: &PackId, pack: &[u8], meta: &SymKey) -> Result<PackHeader> {
    if pack.len() < MAGIC.len() || &pack[..8] != MAGIC {
        return Err(Error::Integrity(format!("pack {}: opening magic missing", id.short())));
    }
    let tail_start = pack.len().saturating_sub(TRAILER_LEN);
    let sealed_len = header_len_from_trailer(id, &pack[tail_start..], pack.len() as u64)?;
    let start = tail_start - sealed_len as usize;
    open_header(id, &pack[start..tail_start], start as u64, meta)
}

/// Parse the 12-byte trailer of a pack of `size` bytes: the sealed header's length.
pub fn header_len_from_trailer(id: &PackId, trailer: &[u8], size: u64) -> Result<u32> {
    let what = format!("pack {}", id.short());
    if size < (MAGIC.len() + TRAILER_LEN) as u64
        || trailer.len() != TRAILER_LEN
        || &trailer[4..] != MAGIC
    {
        return Err(Error::Integrity(format!(
            "{what}: closing magic missing (truncated or overwritten)"
        )));
    }
    let sealed_len = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
    if u64::from(sealed_len) + (MAGIC.len() + TRAILER_LEN) as u64 > size {
        return Err(Error::Integrity(format!(
            "{what}: header length {sealed_len} exceeds the pack"
        )));
    }
    Ok(sealed_len)
}

/// Open a pack's sealed header, which starts at `body_end`, and check every entry lies in
/// the body. Lets `check` verify a pack from its tail alone.
pub fn open_header(id: &PackId, sealed: &[u8], body_end: u64, meta: &SymKey) -> Result<PackHeader> {
    let what = format!("pack {}", id.short());
    let plain = meta.open(domain::PACK_HEADER, &id.0, sealed, &what)?;
    let mut r = Reader::new(&plain);
    let header = PackHeader::decode(&mut r)?;
    if r.remaining() != 0 {
        return Err(Error::Integrity(format!("{what}: trailing bytes after the header")));
    }
    for e in &header.entries {
        if u64::from(e.offset) + u64::from(e.length) > body_end || (e.offset as usize) < MAGIC.len()
        {
            return Err(Error::Integrity(format!(
                "{what}: blob {} lies outside the pack body",
                e.id.short()
            )));
        }
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_announced_length_does_not_allocate_it() {
        let bogus = hex::decode("b50028c8430600").unwrap();
        assert!(decompress(FLAG_ZSTD, bogus, 0xB500_00C8, "t").is_err());
        let (flags, c) = compress(&[5u8; 10_000], 3);
        assert_eq!(decompress(flags, c.clone(), 10_000, "t").unwrap(), vec![5u8; 10_000]);
        assert!(decompress(flags, c, 9_999, "t").is_err());
    }

    #[test]
    fn pack_round_trip_and_damage() {
        let meta = SymKey::random();
        let key = SymKey::random();
        let mut b = PackBuilder::new(BlobKind::Data, key.clone(), b"wrapped".to_vec(), 1024);
        let blobs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 * (i as usize + 1)]).collect();
        for (i, plain) in blobs.iter().enumerate() {
            let (flags, payload) = compress(plain, 3);
            b.add(BlobId([i as u8; 32]), flags, plain.len() as u32, &payload);
        }
        let (id, bytes, header) = b.finish(&meta);
        let read = read_header(&id, &bytes, &meta).unwrap();
        assert_eq!(read, header);
        assert_eq!(read.wrapped_key, b"wrapped");
        for (e, plain) in read.entries.iter().zip(&blobs) {
            let sealed = &bytes[e.offset as usize..(e.offset + e.length) as usize];
            let payload = key.open(domain::DATA, &e.id.0, sealed, "t").unwrap();
            assert_eq!(&decompress(e.flags, payload, e.raw_len, "t").unwrap(), plain);
        }
        assert!(read_header(&id, &bytes[..bytes.len() - 1], &meta).is_err());
        assert!(read_header(&PackId::random(), &bytes, &meta).is_err());
        let mut flipped = bytes.clone();
        let n = flipped.len();
        flipped[n - 20] ^= 0x40;
        assert!(read_header(&id, &flipped, &meta).is_err());
    }
}
