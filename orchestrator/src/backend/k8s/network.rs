//! The pods' network: the host's own (`host_network = true`, for clusters whose fast
//! fabric is only on the nodes' interfaces) and an RDMA device resource
//! (`rdma_resource = "rdma/hca_shared_devices_a=1"`, as the RDMA device plugin names it).

use serde_json::Value;

use crate::error::{OrchError, Result};

/// How the pods reach each other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Network {
    /// `hostNetwork: true`.
    pub host: bool,
    /// An extended resource each rank container asks for, and its count.
    pub rdma: Option<(String, String)>,
}

impl Network {
    /// From the settings `host_network` and `rdma_resource` (`NAME=COUNT`).
    pub fn new(host: bool, rdma: Option<&str>) -> Result<Network> {
        let rdma = match rdma.map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(text) => match text.split_once('=') {
                Some((name, count)) if name.contains('/') && count.trim().parse::<u32>().is_ok_and(|c| c > 0) => {
                    Some((name.trim().to_string(), count.trim().to_string()))
                }
                _ => {
                    return Err(OrchError::Setting {
                        name: "rdma_resource",
                        value: text.to_string(),
                        expected: "DOMAIN/NAME=COUNT, e.g. rdma/hca_shared_devices_a=1".into(),
                    });
                }
            },
        };
        Ok(Network { host, rdma })
    }

    /// The rendezvous port of attempt `name`: on the host's network two attempts
    /// may share a node, so each takes its own (from its name), not the fixed one.
    pub fn port(&self, name: &str, fixed: u16) -> u16 {
        if self.host { 20000 + (xxhash_rust::xxh3::xxh3_64(name.as_bytes()) % 10000) as u16 } else { fixed }
    }

    /// Sets the pod spec's and its rank container's part.
    pub fn apply(&self, spec: &mut Value) {
        if self.host {
            spec["hostNetwork"] = true.into();
            // Cluster names (the rendezvous Service) still resolve from the host's network.
            spec["dnsPolicy"] = "ClusterFirstWithHostNet".into();
        }
        if let Some((name, count)) = &self.rdma {
            let c = &mut spec["containers"][0];
            c["resources"]["limits"][name.as_str()] = count.as_str().into();
            // Verbs register (pin) memory: the container needs to lock it.
            c["securityContext"]["capabilities"]["add"] = serde_json::json!(["IPC_LOCK"]);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn host_network_and_rdma_in_the_pod() {
        let n = Network::new(true, Some("rdma/hca_shared_devices_a=1")).unwrap();
        let mut spec = json!({"containers": [{"name": "rank", "resources": {"limits": {"nvidia.com/gpu": "4"}}}]});
        n.apply(&mut spec);
        assert_eq!(spec["hostNetwork"], true);
        assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
        let c = &spec["containers"][0];
        assert_eq!(c["resources"]["limits"], json!({"nvidia.com/gpu": "4", "rdma/hca_shared_devices_a": "1"}));
        assert_eq!(c["securityContext"]["capabilities"]["add"], json!(["IPC_LOCK"]));
        let p = n.port("run-stage1-a1", 29500);
        assert!((20000..30000).contains(&p) && p != n.port("run-stage1-a2", 29500));
        assert_eq!(Network::default().port("x", 29500), 29500);
    }

    #[test]
    fn a_malformed_rdma_resource_is_refused() {
        for bad in ["rdma", "rdma/hca=0", "hca=1", "rdma/hca=x"] {
            assert!(Network::new(false, Some(bad)).unwrap_err().to_string().contains("rdma_resource"), "{bad}");
        }
    }
}
