//! Identifiers for sandboxes and containers: 64 lowercase hex digits, like containerd and CRI-O.

/// A fresh random 256-bit id in hex.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    // getrandom only fails when the kernel has no entropy source at all; there is nothing sane to do then.
    getrandom::fill(&mut bytes).expect("kernel random source unavailable");
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 64);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
