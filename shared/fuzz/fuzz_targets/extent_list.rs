//! `ExtentList::decode` on arbitrary bytes: never panics, never holds more than the limit;
//! decode(encode(x)) == x.
#![no_main]

use cairn_core::repo::ExtentList;
use cairn_core::repo::tree::MAX_EXTENTS_PER_LIST;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(extents) = ExtentList::decode(data) else { return };
    assert!(extents.len() <= MAX_EXTENTS_PER_LIST, "decoder let through an oversized list");
    let enc = ExtentList::encode(&extents);
    let back = ExtentList::decode(&enc).expect("re-encoded list must decode");
    assert_eq!(back, extents, "decode(encode(x)) != x");
    assert_eq!(ExtentList::encode(&back), enc, "encode is not stable");
});
