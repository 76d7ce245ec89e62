//! The OTLP resource of what this node exports: service, process, host, node, Kubernetes pod
//! and `OTEL_RESOURCE_ATTRIBUTES`.

use opentelemetry_proto::tonic::common::v1::KeyValue;

use crate::otlp::attributes::{int_attribute as int, string_attribute as string};

/// Attributes every resource from this node carries.
#[derive(Debug, Clone, Default)]
pub struct ResourceInfo {
    pub host_name: String,
    pub node: String,
    /// From `OTEL_RESOURCE_ATTRIBUTES` (`key=value,key=value`).
    pub extra: Vec<(String, String)>,
    /// Kubernetes attributes by process, read once per process from /proc.
    pub kubernetes: KubernetesCache,
}

type PodAttributes = Vec<(&'static str, String)>;

/// Processes' pod attributes, bounded (cleared when it holds too many processes).
#[derive(Debug, Clone, Default)]
pub struct KubernetesCache(
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u32, PodAttributes>>>,
);

impl KubernetesCache {
    fn of(&self, pid: u32) -> PodAttributes {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 4096 {
            cache.clear();
        }
        cache
            .entry(pid)
            .or_insert_with(|| kubernetes_of(std::path::Path::new("/proc"), pid))
            .clone()
    }
}

impl ResourceInfo {
    /// Parses `OTEL_RESOURCE_ATTRIBUTES`; malformed pairs are reported, not guessed.
    pub fn with_env_attributes(mut self, text: &str) -> Result<Self, String> {
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("OTEL_RESOURCE_ATTRIBUTES: {pair:?} is not key=value"))?;
            self.extra
                .push((key.trim().to_string(), value.trim().to_string()));
        }
        Ok(self)
    }

    /// The resource of a service (and process, when one is known): `service.name`,
    /// `process.pid`, `host.name`, `apiary.node`, the pod's `k8s.*` when the process runs in a
    /// Kubernetes pod, and the `OTEL_RESOURCE_ATTRIBUTES` extras.
    pub fn attributes(&self, service: &str, pid: Option<u32>) -> Vec<KeyValue> {
        let mut attributes = vec![string("service.name", service)];
        if let Some(pid) = pid {
            attributes.push(int("process.pid", pid as i64));
            attributes.extend(
                self.kubernetes
                    .of(pid)
                    .into_iter()
                    .map(|(k, v)| string(k, v)),
            );
        }
        attributes.push(string("host.name", &self.host_name));
        attributes.push(string("apiary.node", &self.node));
        attributes.extend(self.extra.iter().map(|(k, v)| string(k, v)));
        attributes
    }
}

/// `k8s.namespace.name`, `k8s.pod.name` and `k8s.pod.uid` of a process in a Kubernetes pod,
/// read from what every pod has: its service-account namespace file, `HOSTNAME` (the pod's
/// name) and the pod UID in its cgroup path. Empty for a process outside Kubernetes.
pub fn kubernetes_of(proc_root: &std::path::Path, pid: u32) -> Vec<(&'static str, String)> {
    let process = proc_root.join(pid.to_string());
    let Ok(namespace) = std::fs::read_to_string(
        process.join("root/var/run/secrets/kubernetes.io/serviceaccount/namespace"),
    ) else {
        return Vec::new();
    };
    let mut found = vec![("k8s.namespace.name", namespace.trim().to_string())];
    if let Ok(environ) = std::fs::read(process.join("environ")) {
        if let Some(name) = environ
            .split(|b| *b == 0)
            .find_map(|var| var.strip_prefix(b"HOSTNAME="))
        {
            found.push(("k8s.pod.name", String::from_utf8_lossy(name).into_owned()));
        }
    }
    if let Ok(cgroup) = std::fs::read_to_string(process.join("cgroup")) {
        // …/kubepods-burstable-pod1234_5678.slice/… (systemd) or …/kubepods/burstable/pod1234-5678/…
        if let Some(uid) = cgroup.split(['/', '\n']).find_map(|part| {
            let rest = &part[part.rfind("pod")? + 3..];
            let uid: String = rest
                .chars()
                .take_while(|c| c.is_ascii_hexdigit() || *c == '-' || *c == '_')
                .collect();
            (uid.len() == 36).then(|| uid.replace('_', "-"))
        }) {
            found.push(("k8s.pod.uid", uid));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_pod_of_a_process() {
        let proc_root = tempfile::tempdir().unwrap();
        let process = proc_root.path().join("42");
        let secrets = process.join("root/var/run/secrets/kubernetes.io/serviceaccount");
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::write(secrets.join("namespace"), "shop\n").unwrap();
        std::fs::write(process.join("environ"), b"PATH=/bin\0HOSTNAME=cart-7d9f\0").unwrap();
        std::fs::write(
            process.join("cgroup"),
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0c5f2a3e_1b2c_4d5e_8f90_a1b2c3d4e5f6.slice/cri-containerd-ab.scope\n",
        )
        .unwrap();
        let found = kubernetes_of(proc_root.path(), 42);
        assert_eq!(
            found,
            vec![
                ("k8s.namespace.name", "shop".to_string()),
                ("k8s.pod.name", "cart-7d9f".to_string()),
                (
                    "k8s.pod.uid",
                    "0c5f2a3e-1b2c-4d5e-8f90-a1b2c3d4e5f6".to_string()
                ),
            ]
        );
        assert!(kubernetes_of(proc_root.path(), 43).is_empty());
    }
}
