//! The TCP star: rank 0 listens on the rendezvous address (`--master`, or the
//! `MASTER_ADDR`/`MASTER_PORT` variables launchers set — a port of its own: under
//! torchrun that port already holds torchrun's store), every other rank connects,
//! sends its buffer, and receives the sum. Simple and exact (the sum is taken in rank
//! order, so every rank gets bit-identical values); the root moves world × size bytes
//! per step, which is fine for CPU training and the demo. GPU ranks use NCCL for the
//! gradients and keep this star as their rendezvous and control plane (the NCCL
//! unique id, host reductions, barriers, the roll call after a failure).

use std::io::{BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Collective, CollectiveOptions};
use crate::error::{Result, TrainError};

const MAGIC: u32 = 0x5333_4152; // "S3AR"
const HELLO: usize = 20;

/// What goes on the wire for the token: a keyed hash, so the token itself is never
/// sent (0 when there is none).
fn token_tag(token: Option<&str>) -> u64 {
    token.map_or(0, |t| xxhash_rust::xxh3::xxh3_64_with_seed(t.as_bytes(), u64::from(MAGIC)) | 1)
}

fn err(m: impl Into<String>) -> TrainError {
    TrainError::Collective(m.into())
}

/// Where rank 0 listens for a rendezvous at `addr` (`host:port`): `bind` (an IP, or
/// IP:PORT) when given, else every interface at the rendezvous port.
pub fn listen_addr(addr: &str, bind: Option<&str>) -> Result<String> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| err(format!("rendezvous {addr:?} is not HOST:PORT")))?;
    Ok(match bind.map(str::trim).filter(|b| !b.is_empty()) {
        Some(b) if b.parse::<std::net::SocketAddr>().is_ok() => b.to_string(),
        Some(b) if b.contains(':') => format!("[{}]:{port}", b.trim_matches(|c| c == '[' || c == ']')),
        Some(b) => format!("{b}:{port}"),
        // An IPv6 rendezvous (`[::1]:29500`) listens on every IPv6 interface.
        None if host.starts_with('[') => format!("[::]:{port}"),
        None => format!("0.0.0.0:{port}"),
    })
}

/// `host:port (ip:port)`, or the name alone when it does not resolve (said so).
fn resolved(addr: &str) -> String {
    match addr.to_socket_addrs() {
        Ok(mut a) => match a.next() {
            Some(ip) if ip.to_string() != addr => format!("{addr} ({ip})"),
            _ => addr.to_string(),
        },
        Err(e) => format!("{addr} (which does not resolve: {e})"),
    }
}

/// One rank's end of the group.
pub struct TcpCollective {
    rank: usize,
    world: usize,
    /// Rank 0: a stream to each rank 1..world, in rank order. Others: the stream to rank 0.
    links: Vec<TcpStream>,
    io_timeout: Duration,
}

impl std::fmt::Debug for TcpCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TcpCollective(rank {} of {})", self.rank, self.world)
    }
}

fn hello(rank: usize, world: usize, tag: u64) -> [u8; HELLO] {
    let mut b = [0u8; HELLO];
    b[..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&(rank as u32).to_le_bytes());
    b[8..12].copy_from_slice(&(world as u32).to_le_bytes());
    b[12..].copy_from_slice(&tag.to_le_bytes());
    b
}

fn read_hello(s: &mut TcpStream) -> Result<(usize, usize, u64)> {
    let mut b = [0u8; HELLO];
    s.read_exact(&mut b).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => err("no handshake within 30 s"),
        _ => err(format!("rendezvous handshake: {e}")),
    })?;
    let word = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    if word(0) != MAGIC {
        return Err(err("rendezvous: a peer that is not an s3-train rank connected"));
    }
    let tag = u64::from_le_bytes(b[12..].try_into().expect("8 bytes"));
    Ok((word(4) as usize, word(8) as usize, tag))
}

impl TcpCollective {
    /// Joins the group of `world` ranks at `addr` (`host:port`) with default
    /// timeouts, no token, and `timeout` for the rendezvous.
    pub fn connect(addr: &str, rank: usize, world: usize, timeout: Duration) -> Result<TcpCollective> {
        Self::connect_with(addr, rank, world, &CollectiveOptions { rendezvous_timeout: timeout, ..Default::default() })
    }

    /// Joins the group of `world` ranks at `addr` (`host:port`). Rank 0 binds it; the
    /// others retry connecting until the rendezvous timeout (ranks start in any order).
    pub fn connect_with(addr: &str, rank: usize, world: usize, options: &CollectiveOptions) -> Result<TcpCollective> {
        let timeout = options.rendezvous_timeout;
        let tag = token_tag(options.token.as_deref());
        if rank >= world {
            return Err(err(format!("rank {rank} is not below the world size {world}")));
        }
        let deadline = Instant::now() + timeout;
        let cancelled = || options.cancel.as_ref().is_some_and(|c| c.load(Ordering::SeqCst));
        let links = if rank == 0 {
            let listen = listen_addr(addr, options.bind.as_deref())?;
            let listener =
                TcpListener::bind(&listen).map_err(|e| err(format!("rank 0 cannot listen on {listen}: {e}")))?;
            listener.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
            tracing::info!("rendezvous: listening on {listen}, the other ranks dial {addr}");
            let mut slots: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
            while slots.iter().any(Option::is_none) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        // A stray connection (a port probe, a health check) is dropped
                        // with a warning; only a real rank's handshake counts.
                        let joined = s
                            .set_nonblocking(false)
                            .and_then(|()| s.set_read_timeout(Some(Duration::from_secs(30))))
                            .map_err(|e| err(e.to_string()))
                            .and_then(|()| read_hello(&mut s));
                        let (r, w) = match joined {
                            Ok((r, w, t)) if t == tag => (r, w),
                            Ok((r, _, _)) => {
                                // Not this job's process (another job on a reused port, a
                                // stale rank of an old attempt): turned away, the wait goes on.
                                tracing::warn!("rendezvous: {peer} claimed rank {r} without this job's token; refused");
                                continue;
                            }
                            Err(e) => {
                                tracing::warn!("rendezvous: ignoring a connection from {peer}: {e}");
                                continue;
                            }
                        };
                        if w != world {
                            return Err(err(format!("rank {r} joined with world size {w}; this group has {world}")));
                        }
                        if r == 0 {
                            return Err(err(format!("a second process at {peer} claims rank 0")));
                        }
                        if r >= world {
                            return Err(err(format!("rank {r} joined a group of {world} ranks")));
                        }
                        if slots[r - 1].is_some() {
                            return Err(err(format!("two processes claim rank {r}")));
                        }
                        s.write_all(&hello(0, world, tag)).map_err(|e| err(e.to_string()))?;
                        s.set_read_timeout(None).map_err(|e| err(e.to_string()))?;
                        slots[r - 1] = Some(s);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if cancelled() {
                            return Err(TrainError::Stopped("waiting for the other ranks at the rendezvous"));
                        }
                        if Instant::now() > deadline {
                            let missing: Vec<String> = slots
                                .iter()
                                .enumerate()
                                .filter(|(_, s)| s.is_none())
                                .map(|(i, _)| (i + 1).to_string())
                                .collect();
                            return Err(err(format!(
                                "rendezvous at {addr}: ranks {} did not join within {timeout:?}",
                                missing.join(", ")
                            )));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(err(format!("rendezvous at {addr}: {e}"))),
                }
            }
            slots.into_iter().map(|s| s.expect("all joined")).collect()
        } else {
            let mut s = loop {
                if cancelled() {
                    return Err(TrainError::Stopped("waiting for rank 0 at the rendezvous"));
                }
                match TcpStream::connect(addr) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > deadline => {
                        return Err(err(format!(
                            "rank {rank}: rank 0 not reachable at {} within {timeout:?}: {e}",
                            resolved(addr)
                        )));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| err(e.to_string()))?;
            s.write_all(&hello(rank, world, tag)).map_err(|e| err(e.to_string()))?;
            let (r, w, _) = read_hello(&mut s).map_err(|e| {
                err(format!("rank {rank}: rank 0 at {addr} did not accept this rank ({e}): is the job token the same?"))
            })?;
            if r != 0 || w != world {
                return Err(err(format!("rank 0 answered with world size {w}, expected {world}")));
            }
            vec![s]
        };
        for l in &links {
            l.set_nodelay(true).map_err(|e| err(e.to_string()))?;
            // From here on no read or write may block forever: a peer that died
            // without closing its socket (a lost node) or stalled ends the run.
            l.set_read_timeout(Some(options.io_timeout)).map_err(|e| err(e.to_string()))?;
            l.set_write_timeout(Some(options.io_timeout)).map_err(|e| err(e.to_string()))?;
        }
        tracing::info!(rank, world, addr, "joined the gradient all-reduce group");
        Ok(TcpCollective { rank, world, links, io_timeout: options.io_timeout })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Replaces `buf` on every rank with the element-wise sum over all ranks.
    pub fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        let t = self.io_timeout;
        let fail = |what: &str, peer: usize, e: std::io::Error| io_fail(what, peer, e, t);
        if self.rank == 0 {
            let mut incoming = vec![0f32; buf.len()];
            for (i, link) in self.links.iter_mut().enumerate() {
                recv(link, &mut incoming).map_err(|e| fail("receiving from", i + 1, e))?;
                buf.iter_mut().zip(&incoming).for_each(|(a, b)| *a += b);
            }
            for (i, link) in self.links.iter_mut().enumerate() {
                send(link, buf).map_err(|e| fail("sending to", i + 1, e))?;
            }
        } else {
            let link = &mut self.links[0];
            send(link, buf).map_err(|e| fail("sending to", 0, e))?;
            recv(link, buf).map_err(|e| fail("receiving from", 0, e))?;
        }
        Ok(())
    }
}

impl TcpCollective {
    /// Replaces `bytes` on every rank with rank 0's.
    pub fn broadcast(&mut self, bytes: &mut Vec<u8>) -> Result<()> {
        let t = self.io_timeout;
        if self.rank == 0 {
            for (i, link) in self.links.iter_mut().enumerate() {
                send_bytes(link, bytes).map_err(|e| io_fail("sending to", i + 1, e, t))?;
            }
        } else {
            *bytes = recv_bytes(&mut self.links[0]).map_err(|e| io_fail("receiving from", 0, e, t))?;
        }
        Ok(())
    }

    /// After a failure elsewhere (a device collective that errored or timed out): which
    /// ranks still answer on this control plane within `wait`. Every surviving rank
    /// calls it; each gets the same list of the ranks that did not answer (stalled, or
    /// gone). Rank 0 not answering is reported as `[0]`.
    pub fn roll_call(&mut self, wait: Duration) -> Result<Vec<usize>> {
        const HERE: [u8; 4] = *b"HERE";
        if self.rank == 0 {
            let mut missing = Vec::new();
            let deadline = Instant::now() + wait;
            for (i, link) in self.links.iter_mut().enumerate() {
                let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
                let answered = link.set_read_timeout(Some(left)).is_ok() && recv_bytes(link).is_ok_and(|b| b == HERE);
                if !answered {
                    missing.push(i + 1);
                }
                // Back to the normal timeout (best effort: the link is going away anyway).
                let _ = link.set_read_timeout(Some(self.io_timeout));
            }
            let list: Vec<u8> = missing.iter().flat_map(|&r| (r as u32).to_le_bytes()).collect();
            for (i, link) in self.links.iter_mut().enumerate() {
                if !missing.contains(&(i + 1)) {
                    let _ = send_bytes(link, &list);
                }
            }
            Ok(missing)
        } else {
            let link = &mut self.links[0];
            let answer = send_bytes(link, &HERE).and_then(|()| {
                link.set_read_timeout(Some(wait + Duration::from_secs(5)))?;
                recv_bytes(link)
            });
            let _ = link.set_read_timeout(Some(self.io_timeout));
            match answer {
                Ok(list) => {
                    Ok(list.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4")) as usize).collect())
                }
                Err(_) => Ok(vec![0]),
            }
        }
    }
}

impl Collective for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn kind(&self) -> &'static str {
        "tcp"
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        TcpCollective::all_reduce_sum(self, buf)
    }
    fn broadcast(&mut self, bytes: &mut Vec<u8>) -> Result<()> {
        TcpCollective::broadcast(self, bytes)
    }
}

/// The error of a send or receive to `peer`, naming it.
fn io_fail(what: &str, peer: usize, e: std::io::Error, t: Duration) -> TrainError {
    let why = match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no answer within {t:?} (the rank is stalled, or its node is gone)")
        }
        _ => e.to_string(),
    };
    err(format!("{what} rank {peer}: {why}"))
}

fn send_bytes(link: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 16, link);
    w.write_all(&(bytes.len() as u64).to_le_bytes())?;
    w.write_all(bytes)?;
    w.flush()
}

/// Messages on the control plane are small; anything larger is not a peer's.
const MAX_BYTES: u64 = 1 << 30;

fn recv_bytes(link: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut n = [0u8; 8];
    link.read_exact(&mut n).map_err(closed)?;
    let n = u64::from_le_bytes(n);
    if n > MAX_BYTES {
        return Err(std::io::Error::other(format!("peer announced {n} bytes (out of step with this rank?)")));
    }
    let mut bytes = vec![0u8; n as usize];
    link.read_exact(&mut bytes).map_err(closed)?;
    Ok(bytes)
}

fn closed(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        std::io::Error::new(e.kind(), "the peer closed the connection (did it fail or stop?)")
    } else {
        e
    }
}

fn send(link: &mut TcpStream, buf: &[f32]) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, link);
    w.write_all(&(buf.len() as u64).to_le_bytes())?;
    for chunk in buf.chunks(1 << 16) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_all(&bytes)?;
    }
    w.flush()
}

/// Reads exactly one message (no read-ahead buffer: the next message, e.g. a broadcast
/// right after a sum, stays in the socket for its own reader).
fn recv(link: &mut TcpStream, buf: &mut [f32]) -> std::io::Result<()> {
    let r = link;
    let mut n = [0u8; 8];
    r.read_exact(&mut n).map_err(closed)?;
    let n = u64::from_le_bytes(n) as usize;
    if n != buf.len() {
        return Err(std::io::Error::other(format!(
            "peer sent {n} values, this rank has {} (different model or stage config?)",
            buf.len()
        )));
    }
    let mut bytes = vec![0u8; 4 << 16];
    for chunk in buf.chunks_mut(1 << 16) {
        let b = &mut bytes[..chunk.len() * 4];
        r.read_exact(b)?;
        for (v, c) in chunk.iter_mut().zip(b.chunks_exact(4)) {
            *v = f32::from_le_bytes(c.try_into().expect("4 bytes"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_addr() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    #[test]
    fn three_ranks_sum_identically() {
        let addr = free_addr();
        let handles: Vec<_> = (0..3)
            .map(|rank| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let mut c = TcpCollective::connect(&addr, rank, 3, Duration::from_secs(10)).unwrap();
                    let mut out = Vec::new();
                    for round in 0..3 {
                        // 200k values: several frames per message.
                        let mut buf: Vec<f32> = (0..200_000).map(|i| (i % 7) as f32 * (rank + round) as f32).collect();
                        c.all_reduce_sum(&mut buf).unwrap();
                        out.push(buf);
                    }
                    out
                })
            })
            .collect();
        let results: Vec<Vec<Vec<f32>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for round in 0..3 {
            let want: Vec<f32> = (0..200_000).map(|i| (i % 7) as f32 * (3 * round + 3) as f32).collect();
            for r in &results {
                assert_eq!(r[round], want);
            }
        }
    }

    #[test]
    fn broadcast_hands_rank_0s_bytes_to_every_rank() {
        let addr = free_addr();
        let got: Vec<Vec<u8>> = (0..3)
            .map(|rank| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let mut c = TcpCollective::connect(&addr, rank, 3, Duration::from_secs(10)).unwrap();
                    let mut b = if rank == 0 { (0..=255u8).collect() } else { vec![rank as u8; 3] };
                    c.broadcast(&mut b).unwrap();
                    c.barrier().unwrap();
                    b
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        for b in got {
            assert_eq!(b, (0..=255u8).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_message_is_read_without_eating_the_next_one() {
        // A sum and a broadcast back to back in the socket (rank 0 sends the id right
        // after the version sum): each reader takes exactly its own message.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut b, _) = l.accept().unwrap();
        send(&mut a, &[1.0, 2.0, 3.0]).unwrap();
        send_bytes(&mut a, b"next").unwrap();
        let mut buf = [0f32; 3];
        recv(&mut b, &mut buf).unwrap();
        assert_eq!(buf, [1.0, 2.0, 3.0]);
        assert_eq!(recv_bytes(&mut b).unwrap(), b"next");
    }

    #[test]
    fn the_roll_call_after_a_failure_names_the_rank_that_is_gone() {
        let addr = free_addr();
        let hs: Vec<_> = (0..3)
            .map(|rank| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let mut c = TcpCollective::connect(&addr, rank, 3, Duration::from_secs(10)).unwrap();
                    if rank == 2 {
                        drop(c); // the dead peer
                        return None;
                    }
                    Some(c.roll_call(Duration::from_secs(5)).unwrap())
                })
            })
            .collect();
        let lists: Vec<_> = hs.into_iter().filter_map(|h| h.join().unwrap()).collect();
        assert_eq!(lists, vec![vec![2], vec![2]]);
    }

    #[test]
    fn a_stranger_without_the_token_is_turned_away_and_a_stalled_peer_times_out() {
        let addr = free_addr();
        let opts = |token: &str| CollectiveOptions {
            rendezvous_timeout: Duration::from_secs(20),
            io_timeout: Duration::from_millis(500),
            token: Some(token.into()),
            ..Default::default()
        };
        let a0 = addr.clone();
        let root = std::thread::spawn(move || {
            let mut root = TcpCollective::connect_with(&a0, 0, 2, &opts("job-7")).unwrap();
            root.all_reduce_sum(&mut [1.0]).unwrap_err().to_string()
        });
        // A process of another job on the same address is refused; rank 0 waits on.
        let e = TcpCollective::connect_with(&addr, 1, 2, &opts("other-job")).unwrap_err();
        assert!(e.to_string().contains("token"), "{e}");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let peer = std::thread::spawn(move || {
            let c = TcpCollective::connect_with(&addr, 1, 2, &opts("job-7")).unwrap();
            // Joins, then never takes part in a reduction (a hung rank), until told.
            rx.recv().ok();
            drop(c);
        });
        let e = root.join().unwrap();
        assert!(e.contains("rank 1") && e.contains("no answer within"), "{e}");
        tx.send(()).unwrap();
        peer.join().unwrap();
    }

    #[test]
    fn a_missing_rank_or_a_dead_peer_is_a_clear_error() {
        let addr = free_addr();
        let e = TcpCollective::connect(&addr, 0, 2, Duration::from_millis(200)).unwrap_err();
        assert!(e.to_string().contains("ranks 1 did not join"), "{e}");

        let addr = free_addr();
        let a2 = addr.clone();
        let peer = std::thread::spawn(move || {
            let c = TcpCollective::connect(&a2, 1, 2, Duration::from_secs(10)).unwrap();
            drop(c); // leaves without reducing
        });
        let mut root = TcpCollective::connect(&addr, 0, 2, Duration::from_secs(10)).unwrap();
        peer.join().unwrap();
        let e = root.all_reduce_sum(&mut [1.0, 2.0]).unwrap_err();
        assert!(e.to_string().contains("rank 1"), "{e}");
    }

    #[test]
    fn rank_0_listens_on_every_interface_not_only_at_its_own_name() {
        // Rank 0 knows its host by a name that resolves to 127.0.1.1 (Debian's entry
        // for the hostname); rank 1 dials another address of the same host, as a rank
        // on another host dials a real interface. Binding the name would refuse it.
        let port = free_addr().rsplit_once(':').unwrap().1.to_string();
        let (own, other) = (format!("127.0.1.1:{port}"), format!("127.0.0.1:{port}"));
        let root = std::thread::spawn(move || {
            let mut c = TcpCollective::connect(&own, 0, 2, Duration::from_secs(20)).unwrap();
            let mut v = [1.0];
            c.all_reduce_sum(&mut v).unwrap();
            v
        });
        let mut c = TcpCollective::connect(&other, 1, 2, Duration::from_secs(20)).unwrap();
        let mut v = [2.0];
        c.all_reduce_sum(&mut v).unwrap();
        assert_eq!((v, root.join().unwrap()), ([3.0], [3.0]));
    }

    #[test]
    fn the_listen_address_is_every_interface_unless_one_is_named() {
        assert_eq!(listen_addr("node-a:29500", None).unwrap(), "0.0.0.0:29500");
        assert_eq!(listen_addr("[fd00::1]:29500", None).unwrap(), "[::]:29500");
        assert_eq!(listen_addr("node-a:29500", Some("10.0.0.5")).unwrap(), "10.0.0.5:29500");
        assert_eq!(listen_addr("node-a:29500", Some("10.0.0.5:4000")).unwrap(), "10.0.0.5:4000");
        assert_eq!(listen_addr("node-a:29500", Some("fd00::5")).unwrap(), "[fd00::5]:29500");
        assert!(listen_addr("node-a", None).is_err());
    }

    #[test]
    fn a_stop_request_ends_the_wait_at_the_rendezvous() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let cancel = Arc::new(AtomicBool::new(false));
        let opts = CollectiveOptions {
            rendezvous_timeout: Duration::from_secs(600),
            cancel: Some(cancel.clone()),
            ..Default::default()
        };
        let stop = cancel.clone();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::SeqCst);
        });
        // Rank 1 dialling a rendezvous nobody serves; then rank 0 waiting for a rank
        // that never comes. Either would wait 600 s for its timeout.
        let e = TcpCollective::connect_with(&free_addr(), 1, 2, &opts).unwrap_err();
        assert!(matches!(e, TrainError::Stopped(_)), "{e}");
        stopper.join().unwrap();
        let e = TcpCollective::connect_with(&free_addr(), 0, 2, &opts).unwrap_err();
        assert!(matches!(e, TrainError::Stopped(_)), "{e}");
    }

    #[test]
    fn an_unreachable_rank_0_is_named_with_its_address_and_port() {
        let addr = free_addr(); // nobody listens there
        let opts = CollectiveOptions { rendezvous_timeout: Duration::from_millis(300), ..Default::default() };
        let e = TcpCollective::connect_with(&addr, 1, 2, &opts).unwrap_err().to_string();
        assert!(e.contains("rank 0 not reachable at") && e.contains(&addr), "{e}");
        let port = addr.rsplit_once(':').unwrap().1;
        let e = TcpCollective::connect_with(&format!("localhost:{port}"), 1, 2, &opts).unwrap_err().to_string();
        assert!(
            e.contains(&format!("localhost:{port} (")) && e.contains(&format!(":{port})")),
            "the address it resolved to: {e}"
        );
    }
}
