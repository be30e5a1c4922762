//! The single-use token cache behind the streaming URLs: Exec/Attach/PortForward store the
//! validated request under a random token, the HTTP handler consumes it once. Like the kubelet's
//! request cache: tokens expire after a minute and at most [`MAX_IN_FLIGHT`] wait at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::error::{Error, Result};

/// How long a URL stays valid after the RPC returned it.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

/// Tokens waiting to be used at once; more means a client is requesting URLs and not using them.
pub const MAX_IN_FLIGHT: usize = 1000;

/// What a token stands for: the request the RPC validated.
#[derive(Debug, Clone, PartialEq)]
pub enum CachedRequest {
    /// `/exec/TOKEN`.
    Exec(k8s_cri::v1::ExecRequest),
    /// `/attach/TOKEN`.
    Attach(k8s_cri::v1::AttachRequest),
    /// `/portforward/TOKEN`.
    PortForward(k8s_cri::v1::PortForwardRequest),
}

/// Token -> request, each consumable once until it expires.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, (Instant, CachedRequest)>>,
}

impl TokenCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `req` under a fresh random token and returns the token (URL-safe).
    pub fn insert(&self, req: CachedRequest) -> Result<String> {
        self.insert_at(req, Instant::now())
    }

    /// Takes the request for `token` out of the cache; `None` when unknown, used or expired.
    pub fn consume(&self, token: &str) -> Option<CachedRequest> {
        self.consume_at(token, Instant::now())
    }

    fn insert_at(&self, req: CachedRequest, now: Instant) -> Result<String> {
        let token = new_token()?;
        let mut entries = self.lock();
        entries.retain(|_, (created, _)| !expired(*created, now));
        if entries.len() >= MAX_IN_FLIGHT {
            return Err(Error::Unavailable(format!(
                "streaming: {MAX_IN_FLIGHT} streaming URLs are already waiting to be used; \
                 retry once some are used or expired"
            )));
        }
        entries.insert(token.clone(), (now, req));
        Ok(token)
    }

    fn consume_at(&self, token: &str, now: Instant) -> Option<CachedRequest> {
        let (created, req) = self.lock().remove(token)?;
        (!expired(created, now)).then_some(req)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, CachedRequest)>> {
        // A panic while holding this lock cannot leave the map half-updated: recover it.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn expired(created: Instant, now: Instant) -> bool {
    now.saturating_duration_since(created) >= TOKEN_TTL
}

/// 128 random bits, base64url without padding (22 characters).
fn new_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        Error::Internal(format!(
            "streaming: reading the kernel's random source for a URL token: {e}"
        ))
    })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(id: &str) -> CachedRequest {
        CachedRequest::Exec(k8s_cri::v1::ExecRequest {
            container_id: id.into(),
            cmd: vec!["sh".into()],
            ..Default::default()
        })
    }

    #[test]
    fn tokens_are_single_use() {
        let cache = TokenCache::new();
        let t = cache.insert(exec("a")).unwrap();
        assert_eq!(t.len(), 22);
        assert!(t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(cache.consume(&t), Some(exec("a")));
        assert_eq!(cache.consume(&t), None);
        assert_eq!(cache.consume("nope"), None);
        let t2 = cache.insert(exec("b")).unwrap();
        assert_ne!(t, t2);
    }

    #[test]
    fn tokens_expire_after_a_minute() {
        let cache = TokenCache::new();
        let start = Instant::now();
        let t = cache.insert_at(exec("a"), start).unwrap();
        let t2 = cache.insert_at(exec("b"), start).unwrap();
        assert_eq!(
            cache.consume_at(&t, start + Duration::from_secs(59)),
            Some(exec("a"))
        );
        assert_eq!(cache.consume_at(&t2, start + TOKEN_TTL), None);
    }

    #[test]
    fn in_flight_is_bounded_and_expired_entries_free_room() {
        let cache = TokenCache::new();
        let start = Instant::now();
        for _ in 0..MAX_IN_FLIGHT {
            cache.insert_at(exec("a"), start).unwrap();
        }
        let err = cache.insert_at(exec("a"), start).unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err}");
        cache.insert_at(exec("a"), start + TOKEN_TTL).unwrap();
    }
}
