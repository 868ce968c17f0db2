//! `pack::decompress(flags, payload, raw_len, ..)` on arbitrary input, `raw_len` unrestricted
//! (it comes from an index entry). Must not panic, and must not allocate in proportion to
//! `raw_len` before looking at the payload: libFuzzer's malloc limit (`-malloc_limit_mb`,
//! default = `-rss_limit_mb` = 2048) reports an allocation larger than that as a crash.
//!
//! Input layout: `flags:u8 raw_len:u32le payload...`.
#![no_main]

use cairn_core::repo::pack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let flags = data[0];
    let raw_len = u32::from_le_bytes([data[1], data[2], data[3], data[4]]);
    let payload = data[5..].to_vec();
    if let Ok(out) = pack::decompress(flags, payload, raw_len, "fuzz") {
        assert_eq!(out.len(), raw_len as usize);
    }
});
