//! The NCCL unique id's trip over the TCP rendezvous (DESIGN §10: rank 0 listens and
//! carries the NCCL unique id on GPUs). Pure over [`Collective`], so the CPU tests
//! run it through the TCP implementation with a fake id.
//!
//! 1. Every rank reports the NCCL version it loaded (0: no libnccl) in its own slot
//!    of a summed buffer, so every rank sees every version; any difference is an
//!    error on every rank, naming the ranks and their versions.
//! 2. Rank 0 creates the id and broadcasts it: `S3ID`, its NCCL version (i32 LE) and
//!    the 128 id bytes. When it cannot, it broadcasts `S3IE` and why instead, so that
//!    the other ranks fail at once with rank 0's reason rather than wait out the
//!    collective timeout (30 minutes) for an id that will never come.

use super::Collective;
use crate::error::{Result, TrainError};

/// Bytes in an NCCL unique id (`NCCL_UNIQUE_ID_BYTES`).
pub const ID_BYTES: usize = 128;

const MAGIC: &[u8; 4] = b"S3ID";
const FAILED: &[u8; 4] = b"S3IE";

/// The message rank 0 broadcasts when it could not create the id.
fn encode_failure(reason: &str) -> Vec<u8> {
    let mut b = FAILED.to_vec();
    b.extend_from_slice(reason.as_bytes());
    b
}

/// An NCCL version code as NCCL prints it (`22105` → `2.21.5`; `0`: no libnccl).
pub fn version_name(code: i32) -> String {
    match code {
        0 => "no libnccl".into(),
        // NCCL_VERSION(X,Y,Z): X*1000+Y*100+Z up to 2.8, X*10000+Y*100+Z after.
        c if c < 10_000 => format!("{}.{}.{}", c / 1000, c / 100 % 10, c % 100),
        c => format!("{}.{}.{}", c / 10_000, c / 100 % 100, c % 100),
    }
}

/// The id message rank 0 broadcasts.
pub fn encode(version: i32, id: &[u8; ID_BYTES]) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + ID_BYTES);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(id);
    b
}

/// Reads the id message, checking it against this rank's NCCL `version`.
pub fn decode(bytes: &[u8], version: i32) -> Result<[u8; ID_BYTES]> {
    if let Some(reason) = bytes.strip_prefix(FAILED) {
        return Err(TrainError::Collective(format!(
            "rank 0 could not create the NCCL unique id: {}",
            String::from_utf8_lossy(reason)
        )));
    }
    if bytes.len() != 8 + ID_BYTES || &bytes[..4] != MAGIC {
        return Err(TrainError::Collective(format!(
            "rendezvous: rank 0 sent {} bytes that are not an NCCL unique id (another s3-train version?)",
            bytes.len()
        )));
    }
    let theirs = i32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if theirs != version {
        return Err(mismatch(&[(0, theirs), (usize::MAX, version)]));
    }
    Ok(bytes[8..].try_into().expect("128 bytes"))
}

fn mismatch(versions: &[(usize, i32)]) -> TrainError {
    let list: Vec<String> = versions
        .iter()
        .map(|&(r, v)| {
            let who = if r == usize::MAX { "this rank".to_string() } else { format!("rank {r}") };
            format!("{who}: {}", version_name(v))
        })
        .collect();
    TrainError::Collective(format!(
        "the ranks load different NCCL libraries ({}); every rank must load the same libnccl (LD_LIBRARY_PATH, \
         the same container image)",
        list.join(", ")
    ))
}

/// Every rank's NCCL `version` (0: none), through the collective.
pub fn all_versions(c: &mut dyn Collective, version: i32) -> Result<Vec<i32>> {
    let (rank, world) = (c.rank(), c.world());
    // 16-bit halves: exact in f32 sums (one rank per slot).
    let mut buf = vec![0f32; world * 2];
    let v = version as u32;
    buf[rank * 2] = (v & 0xffff) as f32;
    buf[rank * 2 + 1] = (v >> 16) as f32;
    c.all_reduce_sum(&mut buf)?;
    Ok((0..world).map(|r| (buf[r * 2] as u32 | ((buf[r * 2 + 1] as u32) << 16)) as i32).collect())
}

/// The group's NCCL unique id: rank 0 makes it with `make_id` (called on rank 0 only,
/// after every rank has shown the same `version`) and hands it to every rank.
pub fn exchange(
    c: &mut dyn Collective,
    version: i32,
    make_id: impl FnOnce() -> Result<[u8; ID_BYTES]>,
) -> Result<[u8; ID_BYTES]> {
    let versions = all_versions(c, version)?;
    if versions.iter().any(|&v| v != versions[0]) {
        return Err(mismatch(&versions.iter().copied().enumerate().collect::<Vec<_>>()));
    }
    if version == 0 {
        return Err(TrainError::Collective("no rank could load libnccl".into()));
    }
    if c.rank() != 0 {
        let mut bytes = Vec::new();
        c.broadcast(&mut bytes)?;
        return decode(&bytes, version);
    }
    let (mut bytes, made) = match make_id() {
        Ok(id) => (encode(version, &id), Ok(id)),
        Err(e) => (encode_failure(&e.to_string()), Err(e)),
    };
    c.broadcast(&mut bytes)?;
    made
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::collective::TcpCollective;

    fn free_addr() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    fn run(versions: &'static [i32]) -> Vec<Result<[u8; ID_BYTES]>> {
        let addr = free_addr();
        let hs: Vec<_> = (0..versions.len())
            .map(|rank| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let mut c = TcpCollective::connect(&addr, rank, versions.len(), Duration::from_secs(10)).unwrap();
                    exchange(&mut c, versions[rank], || {
                        assert_eq!(rank, 0, "only rank 0 makes the id");
                        Ok(std::array::from_fn(|i| (i * 7 + 3) as u8))
                    })
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn a_fake_id_reaches_every_rank_through_the_rendezvous() {
        let want: [u8; ID_BYTES] = std::array::from_fn(|i| (i * 7 + 3) as u8);
        for got in run(&[22_105, 22_105, 22_105]) {
            assert_eq!(got.unwrap(), want);
        }
    }

    #[test]
    fn differing_nccl_versions_are_a_clear_error_on_every_rank() {
        for got in run(&[22_105, 22_304, 22_105]) {
            let e = got.unwrap_err().to_string();
            assert!(e.contains("rank 1: 2.23.4") && e.contains("rank 0: 2.21.5"), "{e}");
            assert!(e.contains("different NCCL"), "{e}");
        }
        for got in run(&[22_105, 0]) {
            let e = got.unwrap_err().to_string();
            assert!(e.contains("rank 1: no libnccl"), "{e}");
        }
    }

    #[test]
    fn the_id_message_round_trips_and_a_foreign_one_is_refused() {
        let id = [9u8; ID_BYTES];
        assert_eq!(decode(&encode(2_708, &id), 2_708).unwrap(), id);
        let e = decode(&encode(2_708, &id), 22_105).unwrap_err().to_string();
        assert!(e.contains("rank 0: 2.7.8") && e.contains("this rank: 2.21.5"), "{e}");
        assert!(decode(b"nope", 1).unwrap_err().to_string().contains("not an NCCL unique id"));
        assert_eq!(version_name(23_004), "2.30.4");
    }

    #[test]
    fn rank_0_failing_to_make_the_id_fails_every_rank_at_once_with_its_reason() {
        let addr = free_addr();
        let hs: Vec<_> = (0..3)
            .map(|rank| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    // A short I/O timeout: ranks that wait for an id that never comes
                    // fail with a timeout, not with rank 0's reason.
                    let opts = crate::collective::CollectiveOptions {
                        rendezvous_timeout: Duration::from_secs(10),
                        io_timeout: Duration::from_secs(20),
                        ..Default::default()
                    };
                    let mut c = TcpCollective::connect_with(&addr, rank, 3, &opts).unwrap();
                    exchange(&mut c, 22_105, || {
                        Err(TrainError::Collective("ncclGetUniqueId: unhandled system error".into()))
                    })
                })
            })
            .collect();
        for (rank, h) in hs.into_iter().enumerate() {
            let e = h.join().unwrap().unwrap_err().to_string();
            assert!(e.contains("unhandled system error"), "rank {rank}: {e}");
            if rank > 0 {
                assert!(e.contains("rank 0 could not create the NCCL unique id"), "rank {rank}: {e}");
            }
        }
    }
}
