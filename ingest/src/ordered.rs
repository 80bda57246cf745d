//! Parallel work whose results are consumed in input order, with bounded memory.
//!
//! Shards must not depend on `--jobs` or on which case happened to finish first, so
//! the writer takes cases in listing order. Workers claim items in order and may run
//! at most `window` items ahead of the consumer: the item the consumer waits for is
//! always claimed by a worker that is running, never by one that is waiting, so the
//! pipeline cannot stall, and at most `window` results are held at once.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, MutexGuard};

struct Gate {
    state: Mutex<GateState>,
    moved: Condvar,
}

struct GateState {
    next_claim: usize,
    consumed: usize,
    stopped: bool,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        // The state is plain counters, valid even if a holder panicked.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next item to work on, waiting while the window is full; None when done or stopped.
    fn claim(&self, items: usize, window: usize) -> Option<usize> {
        let mut g = self.lock();
        loop {
            if g.stopped || g.next_claim >= items {
                return None;
            }
            if g.next_claim < g.consumed + window {
                g.next_claim += 1;
                return Some(g.next_claim - 1);
            }
            g = self.moved.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn update(&self, f: impl FnOnce(&mut GateState)) {
        f(&mut self.lock());
        self.moved.notify_all();
    }
}

/// Stops the gate when dropped (`always`) or when dropped by a panic: a consumer or
/// worker that unwinds must not leave the others waiting for it forever.
struct StopOnDrop<'a> {
    gate: &'a Gate,
    always: bool,
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        if self.always || std::thread::panicking() {
            self.gate.update(|g| g.stopped = true);
        }
    }
}

/// Runs `work` over `items` on `threads` threads and hands each result to `sink` in
/// item order, on the calling thread. When `sink` fails, no further item is started
/// (those already running finish and are dropped) and its error is returned.
///
/// `work` should not panic: a panicking worker takes the whole call down with it.
pub fn map_in_order<T, R, E>(
    items: &[T],
    threads: usize,
    window: usize,
    work: impl Fn(&T) -> R + Sync,
    mut sink: impl FnMut(&T, R) -> Result<(), E>,
) -> Result<(), E>
where
    T: Sync,
    R: Send,
{
    let window = window.max(1);
    let gate =
        Gate { state: Mutex::new(GateState { next_claim: 0, consumed: 0, stopped: false }), moved: Condvar::new() };
    std::thread::scope(|scope| {
        // Unbounded in type, bounded in fact: at most `window` results exist at once.
        let (tx, rx) = mpsc::channel::<(usize, R)>();
        let mut spawned = 0;
        for n in 0..threads.max(1) {
            let (tx, gate, work) = (tx.clone(), &gate, &work);
            let started = std::thread::Builder::new().name(format!("ingest-case-{n}")).spawn_scoped(scope, move || {
                let _stop = StopOnDrop { gate, always: false };
                while let Some(i) = gate.claim(items.len(), window) {
                    if tx.send((i, work(&items[i]))).is_err() {
                        return;
                    }
                }
            });
            match started {
                Ok(_) => spawned += 1,
                Err(e) => tracing::warn!("could not start case worker {n} ({e}); going on with {spawned}"),
            }
        }
        drop(tx);
        if spawned == 0 {
            // No thread to be had: do the work here, still in order.
            return items.iter().try_for_each(|item| sink(item, work(item)));
        }
        // However the consumer ends (done, failed, panicked), workers stop claiming.
        let _stop = StopOnDrop { gate: &gate, always: true };
        let mut early: BTreeMap<usize, R> = BTreeMap::new();
        let mut next = 0;
        let mut outcome = Ok(());
        'recv: for (i, r) in rx.iter() {
            early.insert(i, r);
            while let Some(r) = early.remove(&next) {
                if let Err(e) = sink(&items[next], r) {
                    outcome = Err(e);
                    break 'recv;
                }
                next += 1;
                gate.update(|g| g.consumed = next);
            }
        }
        outcome
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn results_arrive_in_order_whatever_finishes_first() {
        let items: Vec<u64> = (0..40).collect();
        let mut seen = Vec::new();
        let r: Result<(), ()> = map_in_order(
            &items,
            4,
            8,
            |&i| {
                // Early items are the slowest, so completion order is roughly reversed.
                std::thread::sleep(Duration::from_millis(40u64.saturating_sub(i)));
                i * 10
            },
            |&i, r| {
                assert_eq!(r, i * 10);
                seen.push(i);
                Ok(())
            },
        );
        r.unwrap();
        assert_eq!(seen, items);
    }

    #[test]
    fn never_more_than_the_window_outstanding() {
        let items: Vec<usize> = (0..50).collect();
        let started = AtomicUsize::new(0);
        let mut consumed = 0;
        let r: Result<(), ()> = map_in_order(
            &items,
            6,
            3,
            |_| started.fetch_add(1, Ordering::SeqCst),
            |_, _| {
                assert!(started.load(Ordering::SeqCst) <= consumed + 3, "ran past the window");
                consumed += 1;
                Ok(())
            },
        );
        r.unwrap();
        assert_eq!(consumed, 50);
    }

    #[test]
    fn a_failing_sink_stops_new_work() {
        let items: Vec<usize> = (0..1000).collect();
        let started = AtomicUsize::new(0);
        let r = map_in_order(
            &items,
            3,
            4,
            |_| started.fetch_add(1, Ordering::SeqCst),
            |&i, _| if i == 5 { Err("store full") } else { Ok(()) },
        );
        assert_eq!(r, Err("store full"));
        // Items 0..=5 consumed, at most a window's worth claimed beyond them.
        assert!(started.load(Ordering::SeqCst) <= 6 + 4, "{} started", started.load(Ordering::SeqCst));
    }

    #[test]
    fn a_panic_in_the_sink_or_a_worker_propagates_instead_of_hanging() {
        let items: Vec<usize> = (0..100).collect();
        let r = std::panic::catch_unwind(|| {
            map_in_order(
                &items,
                3,
                2,
                |&i| i,
                |&i, _| -> Result<(), ()> { if i == 4 { panic!("sink") } else { Ok(()) } },
            )
        });
        assert!(r.is_err());
        let r = std::panic::catch_unwind(|| {
            map_in_order(
                &items,
                3,
                2,
                |&i| if i == 4 { panic!("worker") } else { i },
                |_, _| -> Result<(), ()> { Ok(()) },
            )
        });
        assert!(r.is_err());
    }
}
