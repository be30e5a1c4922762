//! GetContainerEvents: a broadcaster of container and sandbox lifecycle events to any number of
//! subscribers (the kubelet's evented PLEG).
//!
//! Every subscriber has its own bounded buffer. Publishing never waits: an event that does not fit in a
//! subscriber's buffer is dropped for that subscriber and counted (in `berth_events_dropped_total`), so a slow or
//! stuck subscriber costs berthd nothing but its buffer. A subscriber whose stream was dropped (the client
//! went away) is removed at the next publish. Events are delivered to every subscriber in the order they
//! were published.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_cri::v1::{ContainerEventResponse, ContainerEventType, ContainerStatus, PodSandboxStatus};
use tokio::sync::mpsc;

/// Events a subscriber may have waiting before newer ones are dropped for it.
pub const SUBSCRIBER_BUFFER: usize = 1024;

/// At most one "events dropped" warning per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Builds one event stamped with the current time.
pub fn event(
    id: &str,
    kind: ContainerEventType,
    pod_sandbox_status: Option<PodSandboxStatus>,
    containers_statuses: Vec<ContainerStatus>,
) -> ContainerEventResponse {
    ContainerEventResponse {
        container_id: id.to_owned(),
        container_event_type: kind as i32,
        created_at: now_nanos(),
        pod_sandbox_status,
        containers_statuses,
    }
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Rate limiting of the "events dropped" warning.
struct WarnState {
    last: Option<Instant>,
    /// Drops not yet reported in a warning.
    unreported: u64,
}

/// Fans events out to subscribers, each with a bounded buffer.
pub struct EventBus {
    subscribers: Mutex<Vec<mpsc::Sender<ContainerEventResponse>>>,
    capacity: usize,
    dropped: AtomicU64,
    warn: Mutex<WarnState>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(SUBSCRIBER_BUFFER)
    }
}

impl EventBus {
    /// A bus whose subscribers each buffer at most `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            subscribers: Mutex::new(Vec::new()),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            warn: Mutex::new(WarnState {
                last: None,
                unreported: 0,
            }),
        }
    }

    /// A new subscriber: receives every event published from now on (minus those dropped for it).
    pub fn subscribe(&self) -> mpsc::Receiver<ContainerEventResponse> {
        let (tx, rx) = mpsc::channel(self.capacity);
        let mut subscribers = lock(&self.subscribers);
        subscribers.retain(|s| !s.is_closed());
        subscribers.push(tx);
        rx
    }

    /// Delivers `event` to every subscriber without waiting; drops it for those whose buffer is full.
    pub fn publish(&self, event: ContainerEventResponse) {
        let mut dropped = 0u64;
        {
            // Held while sending so that every subscriber sees events in the same order.
            let mut subscribers = lock(&self.subscribers);
            subscribers.retain(|tx| match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
        if dropped > 0 {
            self.count_dropped(dropped, &event);
        }
    }

    fn count_dropped(&self, n: u64, event: &ContainerEventResponse) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        crate::metrics::global().events_dropped.inc_by(n);
        let mut warn = lock(&self.warn);
        warn.unreported += n;
        let due = warn.last.is_none_or(|t| t.elapsed() >= WARN_INTERVAL);
        if due {
            tracing::warn!(
                dropped = warn.unreported,
                container = %event.container_id,
                "container event subscribers are not keeping up; events dropped"
            );
            warn.last = Some(Instant::now());
            warn.unreported = 0;
        }
    }

    /// Events this bus dropped for slow subscribers.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether anyone is subscribed (events need not be assembled otherwise).
    pub fn has_subscribers(&self) -> bool {
        lock(&self.subscribers).iter().any(|s| !s.is_closed())
    }

    /// Subscribers still connected (as of the last publish or subscribe).
    pub fn subscribers(&self) -> usize {
        let mut subscribers = lock(&self.subscribers);
        subscribers.retain(|s| !s.is_closed());
        subscribers.len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str) -> ContainerEventResponse {
        event(
            id,
            ContainerEventType::ContainerCreatedEvent,
            None,
            Vec::new(),
        )
    }

    #[test]
    fn every_subscriber_gets_events_in_order() {
        let bus = EventBus::new(16);
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        for i in 0..10 {
            bus.publish(ev(&i.to_string()));
        }
        for rx in [&mut a, &mut b] {
            let got: Vec<String> = (0..10)
                .map(|_| rx.try_recv().unwrap().container_id)
                .collect();
            let want: Vec<String> = (0..10).map(|i| i.to_string()).collect();
            assert_eq!(got, want);
            assert!(rx.try_recv().is_err());
        }
        assert_eq!(bus.dropped(), 0);
    }

    #[test]
    fn a_full_subscriber_loses_events_and_they_are_counted() {
        let bus = EventBus::new(4);
        let mut slow = bus.subscribe();
        let mut fast = bus.subscribe();
        let before = crate::metrics::global().events_dropped.get();
        for i in 0..10 {
            bus.publish(ev(&i.to_string()));
            assert_eq!(fast.try_recv().unwrap().container_id, i.to_string());
        }
        assert_eq!(bus.dropped(), 6);
        assert!(crate::metrics::global().events_dropped.get() >= before + 6);
        // The slow one kept the oldest four, in order.
        let kept: Vec<String> = std::iter::from_fn(|| slow.try_recv().ok())
            .map(|e| e.container_id)
            .collect();
        assert_eq!(kept, ["0", "1", "2", "3"]);
        // Once drained it receives again.
        bus.publish(ev("next"));
        assert_eq!(slow.try_recv().unwrap().container_id, "next");
    }

    #[test]
    fn a_dropped_subscriber_is_removed() {
        let bus = EventBus::new(2);
        let a = bus.subscribe();
        let mut b = bus.subscribe();
        assert_eq!(bus.subscribers(), 2);
        drop(a);
        bus.publish(ev("x"));
        assert_eq!(bus.subscribers(), 1);
        assert_eq!(b.try_recv().unwrap().container_id, "x");
        assert_eq!(bus.dropped(), 0);
    }

    #[test]
    fn events_carry_type_and_time() {
        let e = event(
            "abc",
            ContainerEventType::ContainerStoppedEvent,
            None,
            Vec::new(),
        );
        assert_eq!(
            e.container_event_type,
            ContainerEventType::ContainerStoppedEvent as i32
        );
        assert!(e.created_at > 0);
    }
}
