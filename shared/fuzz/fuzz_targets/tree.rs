//! `TreeBlob::decode` on arbitrary bytes: never panics; decode(encode(x)) == x.
#![no_main]

use cairn_core::repo::TreeBlob;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tree) = TreeBlob::decode(data) else { return };
    let enc = TreeBlob::encode(&tree.nodes);
    let back = TreeBlob::decode(&enc).expect("re-encoded tree must decode");
    assert_eq!(back, tree, "decode(encode(x)) != x");
    // The encoding is a fixpoint after one round.
    assert_eq!(TreeBlob::encode(&back.nodes), enc, "encode is not stable");
});
