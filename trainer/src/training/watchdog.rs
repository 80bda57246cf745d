//! A step watchdog: a rank whose optimiser step makes no progress for too long (a
//! hung kernel, a store read that never returns, a peer that stopped mid-step on a
//! transport without timeouts) is ended with an error instead of holding its
//! allocation forever. The launcher then restarts the job from its last checkpoint.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// What the watchdog does when it fires (the default ends the process with exit 2:
/// a thread stuck in a kernel or a blocking read cannot be unwound from outside).
pub type OnStall = Box<dyn Fn(Duration) + Send + 'static>;

/// Watches a heartbeat; dropping it stops the watch.
pub struct Watchdog {
    beat: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
}

fn millis_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

impl Watchdog {
    /// Fires `on_stall` if [`Watchdog::pet`] is not called for `limit`.
    pub fn start(limit: Duration, on_stall: OnStall) -> Watchdog {
        let epoch = Instant::now();
        let beat = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (beat.clone(), stop.clone());
        let tick = (limit / 20).clamp(Duration::from_millis(10), Duration::from_secs(5));
        std::thread::Builder::new()
            .name("step-watchdog".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    let idle = Duration::from_millis(millis_since(epoch).saturating_sub(b.load(Ordering::Relaxed)));
                    if idle >= limit && !s.load(Ordering::Relaxed) {
                        on_stall(idle);
                        return;
                    }
                }
            })
            .ok();
        Watchdog { beat, stop, epoch }
    }

    /// The default action: log, print and exit with code 2.
    pub fn exit_process() -> OnStall {
        static FIRED: OnceLock<()> = OnceLock::new();
        Box::new(|idle| {
            if FIRED.set(()).is_ok() {
                tracing::error!("step watchdog: no progress for {idle:?}; exiting (exit 2) so the launcher can resume");
                eprintln!(
                    "error: step watchdog: no training progress for {idle:?} (hung device, store or peer); exiting"
                );
                std::process::exit(2);
            }
        })
    }

    /// Records progress.
    pub fn pet(&self) {
        self.beat.store(millis_since(self.epoch), Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn fires_only_when_the_heartbeat_stops() {
        let (tx, rx) = mpsc::channel();
        let w = Watchdog::start(Duration::from_secs(2), Box::new(move |idle| tx.send(idle).unwrap()));
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(20));
            w.pet();
        }
        assert!(rx.try_recv().is_err(), "a regular heartbeat keeps it quiet");
        let idle = rx.recv_timeout(Duration::from_secs(10)).expect("fires once the heartbeat stops");
        assert!(idle >= Duration::from_secs(2));
        drop(w);
    }
}
