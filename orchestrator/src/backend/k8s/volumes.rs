//! Volumes the pods mount, from one setting (a flag or `S3_ORCH_K8S_VOLUMES` sets it
//! as easily as the profile): `k8s_volumes = "pvc:CLAIM:/mnt/x[:ro],
//! hostPath:/data:/mnt/data[:ro],emptyDir:/cache[:SIZE]"`, e.g. a node-local shard
//! cache on an emptyDir or a host path.

use serde_json::{Value, json};

use crate::error::{OrchError, Result};

/// One volume and where the rank container mounts it.
#[derive(Clone, Debug, PartialEq)]
pub struct Volume {
    /// The pod's `volumes` entry.
    pub volume: Value,
    /// The container's `volumeMounts` entry.
    pub mount: Value,
}

fn bad(item: &str) -> OrchError {
    OrchError::Setting {
        name: "k8s_volumes",
        value: item.to_string(),
        expected: "pvc:CLAIM:/mount[:ro], hostPath:/host/path:/mount[:ro] or emptyDir:/mount[:SIZE], comma-separated"
            .into(),
    }
}

/// The volumes of `text`, named `vol-0`, `vol-1`, ... in order.
pub fn parse(text: &str) -> Result<Vec<Volume>> {
    let items = text.split(',').map(str::trim).filter(|s| !s.is_empty());
    items
        .enumerate()
        .map(|(i, item)| {
            let name = format!("vol-{i}");
            let parts: Vec<&str> = item.split(':').collect();
            let absolute = |p: &str| p.starts_with('/');
            let read_only = |rest: &[&str]| match rest {
                [] => Ok(false),
                ["ro"] => Ok(true),
                _ => Err(bad(item)),
            };
            let (source, mount_path, read_only) = match parts.as_slice() {
                ["pvc", claim, mount, rest @ ..] if !claim.is_empty() && absolute(mount) => {
                    (json!({"persistentVolumeClaim": {"claimName": claim}}), *mount, read_only(rest)?)
                }
                ["hostPath", host, mount, rest @ ..] if absolute(host) && absolute(mount) => {
                    (json!({"hostPath": {"path": host, "type": "Directory"}}), *mount, read_only(rest)?)
                }
                ["emptyDir", mount] if absolute(mount) => (json!({"emptyDir": {}}), *mount, false),
                ["emptyDir", mount, size] if absolute(mount) && !size.is_empty() => {
                    (json!({"emptyDir": {"sizeLimit": size}}), *mount, false)
                }
                _ => return Err(bad(item)),
            };
            let mut volume = source;
            volume["name"] = name.as_str().into();
            let mut mount = json!({"name": name, "mountPath": mount_path});
            if read_only {
                mount["readOnly"] = true.into();
            }
            Ok(Volume { volume, mount })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_volume_with_its_mount() {
        let v = parse("pvc:datasets:/mnt/data:ro, hostPath:/nvme/cache:/cache,emptyDir:/scratch:50Gi").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].volume, json!({"name": "vol-0", "persistentVolumeClaim": {"claimName": "datasets"}}));
        assert_eq!(v[0].mount, json!({"name": "vol-0", "mountPath": "/mnt/data", "readOnly": true}));
        assert_eq!(v[1].volume["hostPath"]["path"], "/nvme/cache");
        assert_eq!(v[1].mount, json!({"name": "vol-1", "mountPath": "/cache"}));
        assert_eq!(v[2].volume["emptyDir"]["sizeLimit"], "50Gi");
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn a_malformed_volume_is_refused_with_the_forms() {
        for item in ["pvc::/x", "pvc:c:relative", "hostPath:/a", "nfs:server:/x", "emptyDir:/x:", "pvc:c:/x:rw"] {
            let e = parse(item).unwrap_err().to_string();
            assert!(e.contains("k8s_volumes") && e.contains("emptyDir:/mount[:SIZE]"), "{item}: {e}");
        }
    }
}
