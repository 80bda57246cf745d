//! Bit packing of binary masks: voxel `n` is bit `n % 8` (LSB first) of byte `n / 8`,
//! which is what `numpy.unpackbits(..., bitorder="little")` reads.

/// Packs one bool per voxel into bytes, LSB first; a partial last byte is zero-filled.
pub fn pack(mask: &[bool]) -> Vec<u8> {
    mask.chunks(8).map(|c| c.iter().enumerate().fold(0u8, |b, (i, &m)| b | (u8::from(m) << i))).collect()
}

/// Unpacks the first `n` voxels.
pub fn unpack(bytes: &[u8], n: usize) -> Vec<bool> {
    (0..n).map(|i| bytes.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1)).collect()
}

/// Number of set bits.
pub fn count(bytes: &[u8]) -> u64 {
    bytes.iter().map(|b| u64::from(b.count_ones())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsb_first() {
        let mut m = vec![false; 16];
        m[0] = true;
        m[9] = true;
        assert_eq!(pack(&m), vec![0b0000_0001, 0b0000_0010]);
    }

    #[test]
    fn round_trip_and_count() {
        let m: Vec<bool> = (0..1003).map(|i| (i * 7919) % 13 < 5).collect();
        let p = pack(&m);
        assert_eq!(p.len(), 126);
        assert_eq!(unpack(&p, m.len()), m);
        assert_eq!(count(&p), m.iter().filter(|&&b| b).count() as u64);
    }
}
