//! Downloads stream: a blocking producer (the file reader or the tar writer, which decrypt
//! and decompress on a blocking thread) feeds a bounded channel that becomes the response
//! body. Memory per download: the channel's few buffers. A client that goes away closes the
//! channel and the producer stops with a broken pipe.

use std::io::Write;

use axum::body::Body;
use bytes::Bytes;
use tokio::sync::mpsc;

const BUFFER: usize = 256 << 10;
const DEPTH: usize = 4;

type Item = Result<Bytes, std::io::Error>;

pub struct ChannelWriter {
    tx: mpsc::Sender<Item>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(BUFFER)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }

    /// A handle that can break the body after the writer has been handed on.
    pub fn failer(&self) -> Failer {
        Failer(self.tx.clone())
    }

    /// End the body with an error: the client sees a broken transfer, not a short file that
    /// looks complete.
    pub fn fail(self, message: String) {
        let _ = self.tx.blocking_send(Err(std::io::Error::other(message)));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BUFFER {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

pub struct Failer(mpsc::Sender<Item>);

impl Failer {
    pub async fn fail(self, message: String) {
        let _ = self.0.send(Err(std::io::Error::other(message))).await;
    }
}

/// A writer for a blocking producer and the body that carries what it writes.
pub fn channel() -> (ChannelWriter, Body) {
    let (tx, rx) = mpsc::channel::<Item>(DEPTH);
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    (ChannelWriter { tx, buf: Vec::with_capacity(BUFFER) }, Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_arrive_in_order_and_failures_break_the_body() {
        let (mut w, body) = channel();
        let producer = tokio::task::spawn_blocking(move || {
            for i in 0..1000u32 {
                w.write_all(&i.to_le_bytes().repeat(100)).unwrap();
            }
            w.flush().unwrap();
            w.fail("disk on fire".into());
        });
        let got = axum::body::to_bytes(body, usize::MAX).await;
        producer.await.unwrap();
        assert!(got.is_err(), "a failed producer must not look like a complete body");

        let (mut w, body) = channel();
        let producer = tokio::task::spawn_blocking(move || {
            for i in 0..1000u32 {
                w.write_all(&i.to_le_bytes().repeat(100)).unwrap();
            }
            w.flush().unwrap();
        });
        let got = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        producer.await.unwrap();
        assert_eq!(got.len(), 1000 * 400);
        assert_eq!(&got[400..404], &1u32.to_le_bytes());
    }
}
