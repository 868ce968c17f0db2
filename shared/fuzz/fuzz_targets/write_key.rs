//! `WriteKey::from_text` (the Kubernetes Secret form) on arbitrary text: never panics;
//! whatever parses prints (`to_text`) and parses back to the same key.
#![no_main]

use cairn_core::repo::WriteKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(k) = WriteKey::from_text(text) else { return };
    let printed = k.to_text();
    let back = WriteKey::from_text(&printed).expect("printed write key must parse");
    assert_eq!(back.repo, k.repo);
    assert_eq!(back.secret_bytes(), k.secret_bytes());
    assert_eq!(back.to_text(), printed);
});
