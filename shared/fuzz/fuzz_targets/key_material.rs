//! `KeyMaterial::decode` (the plaintext of a `keys/` object) on arbitrary bytes: never
//! panics; whatever decodes re-encodes (`KeyMaterial::encode`) and decodes to the same keys.
#![no_main]

use cairn_core::repo::KeyMaterial;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = KeyMaterial::decode(data) else { return };
    let back = KeyMaterial::decode(&m.encode()).expect("re-encoded key material must decode");
    assert_eq!(back.write.repo, m.write.repo);
    assert_eq!(back.write.secret_bytes(), m.write.secret_bytes());
    assert_eq!(back.write.meta.0, m.write.meta.0);
    assert_eq!(back.data.to_text(), m.data.to_text());
    assert_eq!(back.data.recipient().to_string(), m.data.recipient().to_string());
});
