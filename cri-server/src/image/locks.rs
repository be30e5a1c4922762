//! Coordination between concurrent pulls and removals.
//!
//! - [`KeyedLocks`]: one async mutex per key (a reference, a blob digest, a chain id), so two pulls of
//!   the same image, or of images sharing a layer, never write the same blob or unpack the same
//!   chain at once, while unrelated pulls run in parallel.
//! - [`Leases`]: what in-flight pulls are using (blobs and chain ids, like containerd's leases).
//!   Garbage collection keeps leased objects. The [`GcGate`] orders "take a lease, then check what is
//!   present" against "collect garbage", so a pull never relies on something GC is deleting.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::{OwnedMutexGuard, RwLock};

/// Async mutexes by key, created on demand and dropped when nobody holds or waits for them.
#[derive(Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// Waits for and takes the lock for `key`.
    pub async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let mutex = {
            let mut map = lock_ignoring_poison(&self.map);
            map.retain(|_, weak| weak.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(mutex) => mutex,
                None => {
                    let mutex = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_owned(), Arc::downgrade(&mutex));
                    mutex
                }
            }
        };
        mutex.lock_owned().await
    }
}

/// Held shared while a pull takes a lease, exclusively while garbage is collected.
pub type GcGate = RwLock<()>;

#[derive(Default)]
struct Counts {
    blobs: HashMap<String, usize>,
    chains: HashMap<String, usize>,
}

/// The blobs and chain ids in-flight pulls use.
#[derive(Default)]
pub struct Leases {
    counts: Mutex<Counts>,
}

/// One pull's lease; released when dropped.
pub struct Lease {
    leases: Arc<Leases>,
    blobs: Vec<String>,
    chains: Vec<String>,
}

impl Leases {
    /// Starts an empty lease.
    pub fn lease(self: &Arc<Self>) -> Lease {
        Lease {
            leases: self.clone(),
            blobs: Vec::new(),
            chains: Vec::new(),
        }
    }

    /// Leased blob digests and chain ids right now.
    pub fn snapshot(&self) -> (HashSet<String>, HashSet<String>) {
        let counts = lock_ignoring_poison(&self.counts);
        (
            counts.blobs.keys().cloned().collect(),
            counts.chains.keys().cloned().collect(),
        )
    }
}

impl Lease {
    /// Adds blobs and chain ids to the lease. Call before checking whether they are present.
    pub async fn add(&mut self, gate: &GcGate, blobs: &[String], chains: &[String]) {
        let _shared = gate.read().await;
        let mut counts = lock_ignoring_poison(&self.leases.counts);
        for blob in blobs {
            *counts.blobs.entry(blob.clone()).or_default() += 1;
            self.blobs.push(blob.clone());
        }
        for chain in chains {
            *counts.chains.entry(chain.clone()).or_default() += 1;
            self.chains.push(chain.clone());
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut counts = lock_ignoring_poison(&self.leases.counts);
        release(&mut counts.blobs, &self.blobs);
        release(&mut counts.chains, &self.chains);
    }
}

fn release(map: &mut HashMap<String, usize>, keys: &[String]) {
    for key in keys {
        if let Some(n) = map.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                map.remove(key);
            }
        }
    }
}

/// Locks a std mutex; a panic elsewhere while holding it leaves plain counters, still usable.
pub fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keyed_locks_serialize_same_key_only() {
        let locks = KeyedLocks::default();
        let a = locks.lock("a").await;
        let b = locks.lock("b").await;
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("a")).await;
        assert!(pending.is_err(), "second lock of the same key must wait");
        drop(a);
        drop(b);
        let _again = locks.lock("a").await;
        assert_eq!(lock_ignoring_poison(&locks.map).len(), 1);
    }

    #[tokio::test]
    async fn leases_count_and_release() {
        let gate = GcGate::default();
        let leases = Arc::new(Leases::default());
        let mut one = leases.lease();
        let mut two = leases.lease();
        one.add(&gate, &["sha256:a".into()], &["c1".into()]).await;
        two.add(&gate, &["sha256:a".into(), "sha256:b".into()], &[])
            .await;
        drop(one);
        let (blobs, chains) = leases.snapshot();
        assert_eq!(blobs.len(), 2);
        assert!(chains.is_empty());
        drop(two);
        assert!(leases.snapshot().0.is_empty());
    }
}
