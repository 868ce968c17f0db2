//! The `config` object: `serde_json::from_slice::<Config>` on arbitrary bytes never panics.
//! A decoded config re-serializes to a fixpoint. Then what `Repository::open` does with a
//! config read from storage (`read_config` + `from_parts`): version check, data recipient
//! parse, `ChunkerParams::validate`, and for valid parameters `Chunker::new` and a cut;
//! none of it may panic.
#![no_main]

use std::str::FromStr;

use cairn_core::repo::{Chunker, Config, FORMAT_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = serde_json::from_slice::<Config>(data) else { return };
    let enc = serde_json::to_vec(&config).expect("a decoded config must serialize");
    let back: Config = serde_json::from_slice(&enc).expect("re-encoded config must decode");
    assert_eq!(serde_json::to_vec(&back).expect("serialize"), enc, "config round trip");

    if config.version != FORMAT_VERSION {
        return;
    }
    let _ = age::x25519::Recipient::from_str(&config.data_recipient);
    if config.chunker.validate().is_err() {
        return;
    }
    let gear: Vec<u64> = (0..256u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
    let chunker = Chunker::new(config.chunker, gear);
    let buf = vec![0x5au8; 4096];
    let n = chunker.cut(&buf);
    assert!(n >= 1 && n <= buf.len());
});
