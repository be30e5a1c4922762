//! Identifiers for sandboxes and containers: 64 lowercase hex digits, like containerd and CRI-O.

use crate::error::{Error, Result};

/// A fresh random 256-bit id in hex. Fails only when the kernel's random source does.
pub fn new_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| {
        Error::Internal(format!(
            "reading the kernel's random source for a new id: {e}"
        ))
    })?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_distinct() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
