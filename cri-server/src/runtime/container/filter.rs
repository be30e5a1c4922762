//! Container id/name bookkeeping that needs no I/O: ListContainers filters, id prefixes, reserved names.

use std::collections::HashMap;

use k8s_cri::v1::ContainerFilter;

use super::record::ContainerRecord;
use crate::error::{Error, Result};

/// True when the record passes the filter. `sandbox_id` and `id` were already expanded from prefixes
/// by the caller where possible; a prefix still matches here.
pub fn matches(record: &ContainerRecord, filter: &ContainerFilter) -> bool {
    if !filter.id.is_empty() && !record.id.starts_with(&filter.id) {
        return false;
    }
    if !filter.pod_sandbox_id.is_empty() && !record.sandbox_id.starts_with(&filter.pod_sandbox_id) {
        return false;
    }
    if let Some(state) = &filter.state {
        if record.state.to_cri() as i32 != state.state {
            return false;
        }
    }
    filter
        .label_selector
        .iter()
        .all(|(k, v)| record.labels.get(k) == Some(v))
}

/// `<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>`.
pub fn full_name(
    name: &str,
    pod_name: &str,
    pod_namespace: &str,
    pod_uid: &str,
    attempt: u32,
) -> String {
    format!("{name}_{pod_name}_{pod_namespace}_{pod_uid}_{attempt}")
}

/// Reserved container names → ids.
#[derive(Debug, Default)]
pub struct NameIndex {
    names: HashMap<String, String>,
}

impl NameIndex {
    /// Reserves `name` for `id`; AlreadyExists when another id holds it.
    pub fn reserve(&mut self, name: &str, id: &str) -> Result<()> {
        match self.names.get(name) {
            Some(holder) if holder != id => Err(Error::AlreadyExists(format!(
                "container name {name:?} is reserved for {holder}"
            ))),
            _ => {
                self.names.insert(name.to_string(), id.to_string());
                Ok(())
            }
        }
    }

    /// Releases `name` if `id` holds it.
    pub fn release(&mut self, name: &str, id: &str) {
        if self.names.get(name).is_some_and(|holder| holder == id) {
            self.names.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{ResourcesRecord, State};
    use super::*;
    use k8s_cri::v1::{ContainerState, ContainerStateValue};

    fn rec(id: &str, sandbox: &str, state: State, labels: &[(&str, &str)]) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            sandbox_id: sandbox.into(),
            name: "c".into(),
            attempt: 0,
            full_name: String::new(),
            image_ref: "busybox".into(),
            image_id: "sha256:x".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: HashMap::new(),
            log_path: String::new(),
            created_at: 1,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            state,
            mounts: vec![],
            bundle: "/b".into(),
            pid: 0,
            stop_signal: 15,
            cgroup_path: String::new(),
            resources: ResourcesRecord::default(),
            tty: false,
            stdin: false,
            stdin_once: false,
            user: None,
        }
    }

    #[test]
    fn filters() {
        let r = rec(
            "abcdef",
            "sb1234",
            State::Running,
            &[("app", "web"), ("tier", "1")],
        );
        assert!(matches(&r, &ContainerFilter::default()));
        assert!(matches(
            &r,
            &ContainerFilter {
                id: "abc".into(),
                ..Default::default()
            }
        ));
        assert!(!matches(
            &r,
            &ContainerFilter {
                id: "abd".into(),
                ..Default::default()
            }
        ));
        assert!(matches(
            &r,
            &ContainerFilter {
                pod_sandbox_id: "sb12".into(),
                ..Default::default()
            }
        ));
        assert!(!matches(
            &r,
            &ContainerFilter {
                pod_sandbox_id: "sb2".into(),
                ..Default::default()
            }
        ));
        let running = Some(ContainerStateValue {
            state: ContainerState::ContainerRunning as i32,
        });
        let exited = Some(ContainerStateValue {
            state: ContainerState::ContainerExited as i32,
        });
        assert!(matches(
            &r,
            &ContainerFilter {
                state: running,
                ..Default::default()
            }
        ));
        assert!(!matches(
            &r,
            &ContainerFilter {
                state: exited,
                ..Default::default()
            }
        ));
        let sel = |pairs: &[(&str, &str)]| ContainerFilter {
            label_selector: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        assert!(matches(&r, &sel(&[("app", "web")])));
        assert!(!matches(&r, &sel(&[("app", "db")])));
        assert!(!matches(&r, &sel(&[("app", "web"), ("missing", "x")])));
    }

    #[test]
    fn name_reservation() {
        let mut idx = NameIndex::default();
        let name = full_name("c", "pod", "ns", "uid", 0);
        assert_eq!(name, "c_pod_ns_uid_0");
        idx.reserve(&name, "id1").unwrap();
        idx.reserve(&name, "id1").unwrap();
        let err = idx.reserve(&name, "id2").unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(m) if m.contains("reserved for id1")));
        idx.release(&name, "id2");
        assert!(idx.reserve(&name, "id2").is_err());
        idx.release(&name, "id1");
        idx.reserve(&name, "id2").unwrap();
    }
}
