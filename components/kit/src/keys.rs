//! Store keys that sort the way clients expect.
//!
//! The store orders keys bytewise, so a collection paged in id order must
//! use fixed-width ids ("10" sorts before "9", "00000000000000000010" after
//! "00000000000000000009"). Index collections named after a free-text value
//! (a customer name of up to 200 characters) use a hash of it, because
//! collection names are bounded; readers re-check the value on the document,
//! so a collision only costs a skipped entry, never a wrong answer.

/// Width of [`id`]: every `u64` fits.
pub const ID_WIDTH: usize = 20;

/// `id` zero-padded to [`ID_WIDTH`] digits: the key of id-ordered collections.
pub fn id(id: u64) -> String {
    format!("{id:0ID_WIDTH$}")
}

/// The id a key made by [`id`] stands for (`None` for any other key).
pub fn parse_id(key: &str) -> Option<u64> {
    if key.len() == ID_WIDTH && key.bytes().all(|b| b.is_ascii_digit()) {
        key.parse().ok()
    } else {
        None
    }
}

/// A short stable name for a free-text value (FNV-1a, 64 bits, hex), to put
/// in an index collection's name.
pub fn text_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_ids_sort_numerically_and_round_trip() {
        let mut keys: Vec<String> = [10, 9, 100, 1, u64::MAX].into_iter().map(id).collect();
        keys.sort();
        let ids: Vec<u64> = keys.iter().filter_map(|k| parse_id(k)).collect();
        assert_eq!(ids, vec![1, 9, 10, 100, u64::MAX]);
        assert_eq!(parse_id("12"), None);
        assert_eq!(parse_id("0000000000000000000x"), None);
    }

    #[test]
    fn text_hashes_are_stable_and_short() {
        assert_eq!(text_hash("Hwang"), text_hash("Hwang"));
        assert_ne!(text_hash("Hwang"), text_hash("hwang"));
        assert_eq!(text_hash(&"🙂".repeat(200)).len(), 16);
    }
}
