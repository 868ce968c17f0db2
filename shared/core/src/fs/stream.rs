//! Streams into backups: a blocking `Read` fed by an async producer, and the check of a
//! trailing SHA-256 (etcd's snapshot format: the database, then the SHA-256 of it).

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// The blocking end of a bounded channel of byte chunks. An `Err` item ends the stream
/// with that error (the producer found the stream truncated or its checksum wrong).
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

/// A channel holding at most `capacity` chunks: memory stays bounded whatever the size of
/// the stream, and a slow repository slows the producer down.
pub fn channel(
    capacity: usize,
) -> (tokio::sync::mpsc::Sender<std::io::Result<Bytes>>, ChannelReader) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    (tx, ChannelReader { rx, current: Bytes::new() })
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Verifies, while streaming, that the last 32 bytes are the SHA-256 of all bytes before.
#[derive(Default)]
pub struct Sha256Trailer {
    hasher: Sha256,
    /// The last (up to) 32 bytes seen, not hashed yet: they may be the trailer.
    tail: Vec<u8>,
    total: u64,
}

impl Sha256Trailer {
    pub fn update(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        self.tail.extend_from_slice(data);
        if self.tail.len() > 32 {
            let cut = self.tail.len() - 32;
            self.hasher.update(&self.tail[..cut]);
            self.tail.drain(..cut);
        }
    }

    /// Bytes seen so far, trailer included.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The verified digest, or why the stream does not end with its own SHA-256.
    pub fn finish(self) -> Result<[u8; 32], String> {
        if self.tail.len() < 32 {
            return Err(format!(
                "stream of {} bytes is too short to hold a SHA-256 trailer",
                self.total
            ));
        }
        let digest: [u8; 32] = self.hasher.finalize().into();
        if digest[..] != self.tail[..] {
            return Err(format!(
                "SHA-256 trailer mismatch after {} bytes: the stream is truncated or corrupt",
                self.total
            ));
        }
        Ok(digest)
    }
}

/// Check a whole file the same way (used after a restore writes it).
pub fn verify_sha256_trailer(path: &std::path::Path) -> std::io::Result<Result<[u8; 32], String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut v = Sha256Trailer::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(v.finish());
        }
        v.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_is_checked_across_any_split() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let mut stream = body.clone();
        stream.extend_from_slice(&Sha256::digest(&body));
        for split in [1, 7, 31, 32, 33, 4096, 100_000] {
            let mut v = Sha256Trailer::default();
            for part in stream.chunks(split) {
                v.update(part);
            }
            assert!(v.finish().is_ok(), "split {split}");
        }
        let mut v = Sha256Trailer::default();
        v.update(&stream[..stream.len() - 1000]);
        assert!(v.finish().unwrap_err().contains("mismatch"));
        let mut v = Sha256Trailer::default();
        v.update(&stream[..10]);
        assert!(v.finish().unwrap_err().contains("too short"));
    }

    #[test]
    fn channel_reader_yields_the_bytes_then_the_error() {
        use std::io::Read;
        let (tx, mut rx) = channel(2);
        std::thread::spawn(move || {
            tx.blocking_send(Ok(Bytes::from_static(b"hello "))).unwrap();
            tx.blocking_send(Ok(Bytes::from_static(b"world"))).unwrap();
            tx.blocking_send(Err(std::io::Error::other("cut"))).unwrap();
        });
        let mut out = Vec::new();
        let err = rx.read_to_end(&mut out).unwrap_err();
        assert_eq!(out, b"hello world");
        assert_eq!(err.to_string(), "cut");
    }
}
