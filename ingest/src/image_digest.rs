//! A source image's fingerprint for the leakage check: xxh3-64 of its grid size and
//! voxel values as stored, one per channel. The same scan in another archive (re-
//! gzipped, renamed, moved to another dataset's folder) has the same digest; the
//! file's own bytes would not be.

use xxhash_rust::xxh3::Xxh3Default;

use crate::volume::Volume;
use crate::with_voxels;

/// Elements hashed per update: large enough to amortise, small enough to stay in cache.
const CHUNK: usize = 1 << 14;

/// The digest of one channel's voxels, as 16 hex digits.
pub fn digest(v: &Volume) -> String {
    let mut h = Xxh3Default::new();
    for s in v.shape {
        h.update(&(s as u64).to_le_bytes());
    }
    with_voxels!(&v.voxels, |d| {
        let mut buf = Vec::with_capacity(CHUNK * 8);
        for chunk in d.chunks(CHUNK) {
            buf.clear();
            for x in chunk {
                buf.extend_from_slice(&x.to_le_bytes());
            }
            h.update(&buf);
        }
    });
    format!("{:016x}", h.digest())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Voxels;

    fn volume(voxels: Voxels, shape: [usize; 3]) -> Volume {
        let affine = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        Volume {
            shape,
            affine,
            voxels,
            slope: 1.0,
            inter: 0.0,
            datatype: "INT16".into(),
            header: Box::new(crate::nifti_io::header_for(shape, &affine, nifti::NiftiType::Int16)),
        }
    }

    #[test]
    fn the_same_voxels_on_any_grid_origin_match_and_others_do_not() {
        let a = volume(Voxels::I16((0..24).collect()), [2, 3, 4]);
        let mut moved = a.clone();
        moved.affine[0][3] += 10.0;
        assert_eq!(digest(&a), digest(&moved), "the fingerprint is the voxels, not where they sit");
        let mut one_voxel = a.clone();
        one_voxel.voxels = Voxels::I16((0..24).map(|x| if x == 23 { 0 } else { x }).collect());
        assert_ne!(digest(&a), digest(&one_voxel));
        assert_ne!(digest(&a), digest(&volume(Voxels::I16((0..24).collect()), [4, 3, 2])), "same bytes, other grid");
        assert_eq!(digest(&a).len(), 16);
    }
}
