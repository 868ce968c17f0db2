//! `pack::decompress` with `raw_len` folded to at most 1 MiB, so that fuzzing goes on past
//! the large-allocation finding of the `decompress` target. Never panics; a success has the
//! announced length; and `compress` output always decompresses back to its input.
//!
//! Input layout: `flags:u8 raw_len:u32le payload...`.
#![no_main]

use cairn_core::repo::pack;
use libfuzzer_sys::fuzz_target;

const CAP: u32 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let flags = data[0];
    let raw_len = u32::from_le_bytes([data[1], data[2], data[3], data[4]]) % (CAP + 1);
    let payload = &data[5..];
    if let Ok(out) = pack::decompress(flags, payload.to_vec(), raw_len, "fuzz") {
        assert_eq!(out.len(), raw_len as usize);
        if flags & pack::FLAG_ZSTD == 0 {
            assert_eq!(out, payload);
        }
    }
    let level = i32::from(flags % 8) + 1;
    let (f, c) = pack::compress(payload, level);
    let back = pack::decompress(f, c, payload.len() as u32, "fuzz").expect("compress output");
    assert_eq!(back, payload, "decompress(compress(x)) != x");
});
