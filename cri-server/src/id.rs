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

/// Resolves a full id or unique prefix among `ids` of `kind` objects ("container", "pod
/// sandbox"): NotFound when none matches, InvalidArgument when empty or ambiguous.
pub fn resolve_prefix<'a>(
    kind: &str,
    ids: impl Iterator<Item = &'a String>,
    prefix: &str,
) -> Result<String> {
    if prefix.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{kind} id must not be empty"
        )));
    }
    let mut found: Option<&String> = None;
    for id in ids {
        if id == prefix {
            return Ok(id.clone());
        }
        if id.starts_with(prefix) {
            if found.is_some() {
                return Err(Error::InvalidArgument(format!(
                    "{kind} id prefix {prefix:?} is ambiguous"
                )));
            }
            found = Some(id);
        }
    }
    found
        .cloned()
        .ok_or_else(|| Error::NotFound(format!("{kind} {prefix:?} not found")))
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

    #[test]
    fn prefixes() {
        let ids = ["abc1".to_string(), "abc2".to_string(), "def".to_string()];
        assert_eq!(resolve_prefix("container", ids.iter(), "d").unwrap(), "def");
        assert_eq!(
            resolve_prefix("container", ids.iter(), "abc1").unwrap(),
            "abc1"
        );
        assert!(matches!(
            resolve_prefix("container", ids.iter(), "abc"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            resolve_prefix("container", ids.iter(), "x"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            resolve_prefix("container", ids.iter(), ""),
            Err(Error::InvalidArgument(_))
        ));
    }
}
