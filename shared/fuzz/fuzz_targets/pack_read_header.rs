//! `read_header` (whole-pack parse) with a fixed metadata key and pack id. Never panics.
//!
//! Input layout: `mode:u8` then
//! * mode even: the rest is the whole pack, as read from storage (exercises the magic and
//!   trailer checks; the AEAD will reject almost everything);
//! * mode odd: `body_len:u16le` then the header *plaintext*. The target builds a well-formed
//!   pack around it (`MAGIC`, `body_len` zero bytes, the header sealed with the fixed key,
//!   length, `MAGIC`), so the structure parsing behind the AEAD is reached.
#![no_main]

use cairn_core::repo::crypto::domain;
use cairn_core::repo::pack::{self, MAGIC, PackHeader, Reader};
use cairn_core::repo::{PackId, SymKey};
use libfuzzer_sys::fuzz_target;

const KEY: SymKey = SymKey([0x42; 32]);
const ID: PackId = PackId([0x17; 32]);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        if let Ok(header) = pack::read_header(&ID, rest, &KEY) {
            check_entries(&header, rest.len());
        }
        return;
    }
    if rest.len() < 2 {
        return;
    }
    let body_len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
    let plain = &rest[2..];
    let mut p = Vec::with_capacity(MAGIC.len() + body_len + plain.len() + 64);
    p.extend_from_slice(MAGIC);
    p.resize(MAGIC.len() + body_len, 0);
    let sealed = KEY.seal(domain::PACK_HEADER, &ID.0, plain);
    p.extend_from_slice(&sealed);
    p.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    p.extend_from_slice(MAGIC);

    // What read_header must accept: a header that decodes with nothing after it.
    let mut r = Reader::new(plain);
    let direct = PackHeader::decode(&mut r).and_then(|h| {
        if r.remaining() == 0 {
            Ok(h)
        } else {
            Err(cairn_core::Error::Integrity("trailing".into()))
        }
    });
    match pack::read_header(&ID, &p, &KEY) {
        Ok(header) => {
            assert_eq!(Some(&header), direct.as_ref().ok(), "read_header != PackHeader::decode");
            check_entries(&header, p.len());
        }
        Err(_) => {
            // Either the header does not decode (or has trailing bytes), or an entry points
            // outside the body.
            if let Ok(h) = direct {
                let body_end = (MAGIC.len() + body_len) as u64;
                assert!(
                    h.entries.iter().any(|e| (e.offset as usize) < MAGIC.len()
                        || u64::from(e.offset) + u64::from(e.length) > body_end),
                    "read_header rejected a decodable header whose entries are all in the body"
                );
            }
        }
    }
});

fn check_entries(header: &PackHeader, pack_len: usize) {
    for e in &header.entries {
        let end = e.offset as usize + e.length as usize;
        assert!(e.offset as usize >= MAGIC.len() && end <= pack_len, "entry outside the pack");
    }
}
