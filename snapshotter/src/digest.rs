//! Digest validation and hashing helpers. Digests become file names, so validation is a security boundary.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The only algorithm the store accepts.
const PREFIX: &str = "sha256:";

/// Validates `digest` (`sha256:` + 64 lowercase hex) and returns its hex part.
pub fn hex_of(digest: &str) -> Result<&str> {
    let hex = digest.strip_prefix(PREFIX).ok_or_else(|| {
        Error::InvalidInput(format!("digest {digest:?}: only sha256 is supported"))
    })?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Error::InvalidInput(format!(
            "digest {digest:?}: expected sha256: followed by 64 lowercase hex digits"
        )));
    }
    Ok(hex)
}

/// True when `name` is a 64-character lowercase hex string (a blob or chain file name).
pub fn is_hex_name(name: &str) -> bool {
    hex_of(&format!("{PREFIX}{name}")).is_ok()
}

/// Formats a finished hasher as a `sha256:<hex>` digest.
pub fn finish(hasher: Sha256) -> String {
    format!("{PREFIX}{}", hex::encode(hasher.finalize()))
}

/// `sha256:<hex>` of `data`.
pub fn of_bytes(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    finish(h)
}

/// The OCI chain id: `diff_id` for a base layer, else `sha256(parent + " " + diff_id)`.
pub fn chain_id(parent: Option<&str>, diff_id: &str) -> String {
    match parent {
        None => diff_id.to_string(),
        Some(p) => of_bytes(format!("{p} {diff_id}").as_bytes()),
    }
}

/// A reader that hashes (sha256) and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: std::io::Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    /// Returns the `sha256:<hex>` digest and byte count of what was read.
    pub fn finish(self) -> (String, u64) {
        (finish(self.hasher), self.count)
    }
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_digests() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(hex_of(&good).ok(), Some("a".repeat(64).as_str()));
        for bad in [
            "".to_string(),
            "sha256:".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}/", "a".repeat(63)),
            format!("sha256:../{}", "a".repeat(61)),
            format!("sha512:{}", "a".repeat(64)),
            "a".repeat(64),
        ] {
            assert!(hex_of(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn chain_id_matches_oci_definition() {
        let a = of_bytes(b"a");
        let b = of_bytes(b"b");
        assert_eq!(chain_id(None, &a), a);
        assert_eq!(
            chain_id(Some(&a), &b),
            of_bytes(format!("{a} {b}").as_bytes())
        );
        // Well-known value: sha256 of the empty string.
        assert_eq!(
            of_bytes(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
