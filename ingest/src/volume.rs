//! A volume in memory, whatever format it was read from: voxels in their stored type
//! (an int16 CT of 512×512×1000 is 512 MiB, not 2 GiB of f64), its grid and scaling.
//! The bottom of the crate: the readers and the geometry build on it.

use std::io::{self, Read};

use nifti::{Endianness, NiftiHeader, NiftiType};

/// Row-major 4×4 voxel-index → world (mm) matrix.
pub type Affine = [[f64; 4]; 4];

/// Voxel data in its stored type, Fortran order (x fastest), native endianness.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Voxels {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// A stored voxel type.
pub trait Voxel: Copy + Send + Sync + 'static {
    /// The stored value as f64.
    fn to_f64(self) -> f64;
}

macro_rules! voxel {
    ($($t:ty),*) => { $(impl Voxel for $t { #[inline] fn to_f64(self) -> f64 { self as f64 } })* };
}
voxel!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);

/// Runs `$body` with `$data` bound to the typed slice of a [`Voxels`].
#[macro_export]
macro_rules! with_voxels {
    ($voxels:expr, |$data:ident| $body:expr) => {
        match $voxels {
            $crate::volume::Voxels::U8($data) => $body,
            $crate::volume::Voxels::I8($data) => $body,
            $crate::volume::Voxels::U16($data) => $body,
            $crate::volume::Voxels::I16($data) => $body,
            $crate::volume::Voxels::U32($data) => $body,
            $crate::volume::Voxels::I32($data) => $body,
            $crate::volume::Voxels::U64($data) => $body,
            $crate::volume::Voxels::I64($data) => $body,
            $crate::volume::Voxels::F32($data) => $body,
            $crate::volume::Voxels::F64($data) => $body,
        }
    };
}

impl Voxels {
    /// Number of voxels.
    pub fn len(&self) -> usize {
        with_voxels!(self, |d| d.len())
    }
    /// True when there are no voxels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether the stored type is an integer type.
    pub fn is_integer(&self) -> bool {
        !matches!(self, Voxels::F32(_) | Voxels::F64(_))
    }
    /// Bytes per voxel of a NIfTI datatype this reader supports.
    pub(crate) fn element_size(t: NiftiType) -> Option<usize> {
        use NiftiType::*;
        Some(match t {
            Uint8 | Int8 => 1,
            Int16 | Uint16 => 2,
            Int32 | Uint32 | Float32 => 4,
            Int64 | Uint64 | Float64 => 8,
            _ => return None,
        })
    }
    /// Reads `n` voxels of type `t` straight into a typed buffer (no intermediate byte
    /// copy: a 512 MiB int16 CT costs 512 MiB). Returns the bytes actually read.
    pub(crate) fn read(t: NiftiType, n: usize, e: Endianness, r: &mut dyn Read) -> io::Result<(Voxels, u64)> {
        fn typed<T: bytemuck::Pod>(
            n: usize,
            r: &mut dyn Read,
            swap: bool,
            sw: fn(T) -> T,
        ) -> io::Result<(Vec<T>, u64)> {
            // The buffer grows with the data actually present, not with the header's
            // claim: a 300-byte file whose dims promise 2 GiB must not cost 2 GiB (with
            // --jobs such files at once that is an OOM kill of the whole run). The last
            // step grows to exactly `n`, and large reallocations are remaps, not copies.
            let first = n.min((1 << 20) / std::mem::size_of::<T>());
            let mut v: Vec<T> = Vec::new();
            let mut got = 0;
            loop {
                let len = if v.is_empty() { first } else { v.len().saturating_mul(2).min(n) };
                v.try_reserve_exact(len - v.len())
                    .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e.to_string()))?;
                v.resize(len, T::zeroed());
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
                while got < bytes.len() {
                    match r.read(&mut bytes[got..]) {
                        Ok(0) => break,
                        Ok(k) => got += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
                if got < bytes.len() || len == n {
                    break;
                }
            }
            if swap {
                v.iter_mut().for_each(|x| *x = sw(*x));
            }
            Ok((v, got as u64))
        }
        let swap = e != Endianness::native();
        use NiftiType::*;
        macro_rules! go {
            ($variant:ident, $t:ty, $sw:expr) => {{
                let (v, got) = typed::<$t>(n, r, swap, $sw)?;
                (Voxels::$variant(v), got)
            }};
        }
        Ok(match t {
            Uint8 => go!(U8, u8, |x| x),
            Int8 => go!(I8, i8, |x| x),
            Uint16 => go!(U16, u16, u16::swap_bytes),
            Int16 => go!(I16, i16, i16::swap_bytes),
            Uint32 => go!(U32, u32, u32::swap_bytes),
            Int32 => go!(I32, i32, i32::swap_bytes),
            Uint64 => go!(U64, u64, u64::swap_bytes),
            Int64 => go!(I64, i64, i64::swap_bytes),
            Float32 => go!(F32, f32, |x: f32| f32::from_bits(x.to_bits().swap_bytes())),
            Float64 => go!(F64, f64, |x: f64| f64::from_bits(x.to_bits().swap_bytes())),
            _ => unreachable!("checked by element_size"),
        })
    }
}

/// A 3-D volume as read from disk.
#[derive(Clone, Debug)]
pub struct Volume {
    /// Voxels along the three array axes.
    pub shape: [usize; 3],
    /// Voxel index → world (mm), nibabel's choice of sform/qform/base.
    pub affine: Affine,
    /// The data, x fastest.
    pub voxels: Voxels,
    /// `scl_slope` (1 when the header asks for no scaling).
    pub slope: f64,
    /// `scl_inter` (0 when unscaled).
    pub inter: f64,
    /// Stored datatype name (`INT16`, ...).
    pub datatype: String,
    /// The header as read: what an output on this grid (a predicted mask) copies.
    pub header: Box<NiftiHeader>,
}

impl Volume {
    /// Whether values are the stored integers themselves (no scaling, integer type):
    /// interpolated intensities are then truncated back to integers, as SimpleITK does.
    pub fn integer_unscaled(&self) -> bool {
        self.voxels.is_integer() && self.slope == 1.0 && self.inter == 0.0
    }
    /// The scaled value of voxel `n` (Fortran order).
    pub fn value(&self, n: usize) -> f64 {
        with_voxels!(&self.voxels, |d| d[n].to_f64() * self.slope + self.inter)
    }
    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// The same geometry and scaling without the voxels.
    pub fn clone_header(&self) -> Volume {
        Volume {
            shape: self.shape,
            affine: self.affine,
            voxels: Voxels::U8(Vec::new()),
            slope: self.slope,
            inter: self.inter,
            datatype: self.datatype.clone(),
            header: self.header.clone(),
        }
    }
    /// True for a volume without voxels (never produced by the reader).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
