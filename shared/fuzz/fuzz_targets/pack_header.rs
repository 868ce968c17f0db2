//! `PackHeader::decode` on arbitrary bytes: never panics; a decoded header re-encodes to
//! exactly the bytes it consumed (the format is canonical) and decodes back to itself.
#![no_main]

use cairn_core::repo::pack::{PackHeader, Reader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let Ok(header) = PackHeader::decode(&mut r) else { return };
    let consumed = data.len() - r.remaining();

    let mut enc = Vec::new();
    header.encode(&mut enc);
    assert_eq!(enc, &data[..consumed], "encode(decode(b)) != consumed bytes");

    let mut r2 = Reader::new(&enc);
    let back = PackHeader::decode(&mut r2).expect("re-encoded header must decode");
    assert_eq!(r2.remaining(), 0, "re-encoded header has trailing bytes");
    assert_eq!(back, header, "decode(encode(x)) != x");
});
