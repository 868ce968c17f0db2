//! `IndexFile::decode` on arbitrary bytes: never panics; whatever decodes re-encodes to the
//! same bytes (the format is canonical) and round-trips.
#![no_main]

use cairn_core::repo::IndexFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = IndexFile::decode(data) else { return };
    let enc = file.encode();
    assert_eq!(enc, data, "encode(decode(b)) != b");
    let back = IndexFile::decode(&enc).expect("re-encoded index must decode");
    assert_eq!(back, file, "decode(encode(x)) != x");
});
