//! entcore's own rayon pool: sized by `ENTCORE_NUM_THREADS` or `set_num_threads`, rebuilt after
//! `fork` (a forked child has none of its parent's threads, so the old pool is abandoned).

use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

struct Held {
    pid: u32,
    threads: usize,
    pool: Arc<ThreadPool>,
}

static POOL: Mutex<Option<Held>> = Mutex::new(None);

fn default_threads() -> usize {
    std::env::var("ENTCORE_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn build(threads: usize) -> Arc<ThreadPool> {
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("entcore-{i}"))
        .build()
        .expect("building a rayon pool with a positive thread count");
    Arc::new(pool)
}

fn current() -> Arc<ThreadPool> {
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    match guard.as_ref() {
        Some(held) if held.pid == pid => held.pool.clone(),
        stale => {
            let threads = stale.map_or_else(default_threads, |h| h.threads);
            if let Some(old) = guard.take() {
                if old.pid != pid {
                    // Inherited from the parent through fork: its threads do not exist here,
                    // and dropping it would wait for them forever.
                    std::mem::forget(old.pool);
                }
            }
            let pool = build(threads);
            *guard = Some(Held {
                pid,
                threads,
                pool: pool.clone(),
            });
            pool
        }
    }
}

/// Use `threads >= 1` workers for every later kernel.
pub fn set_num_threads(threads: usize) {
    let threads = threads.max(1);
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if let Some(old) = guard.take() {
        if old.pid != pid {
            std::mem::forget(old.pool);
        }
    }
    *guard = Some(Held {
        pid,
        threads,
        pool: build(threads),
    });
}

/// The number of workers kernels use now.
pub fn num_threads() -> usize {
    current().current_num_threads()
}

/// Run `f` inside entcore's pool (rayon calls within it use these workers).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    current().install(f)
}

/// Below this many elements of work a kernel runs on the calling thread: waking the pool costs
/// more than the work. Rows are independent, so the results are the same either way.
pub const PARALLEL_MIN_WORK: usize = 1 << 18;

/// `f(scratch, i)` for `i in 0..n`, in order, using `init()` scratch space per task of at most
/// `chunk` items; in entcore's pool when `work` (elements touched) is large enough.
pub fn map_indexed<T, S, I, F>(n: usize, chunk: usize, work: usize, init: I, f: F) -> Vec<T>
where
    T: Send,
    I: Fn() -> S + Sync + Send,
    F: Fn(&mut S, usize) -> T + Sync + Send,
{
    use rayon::prelude::*;
    if work < PARALLEL_MIN_WORK || n <= 1 {
        let mut scratch = init();
        return (0..n).map(|i| f(&mut scratch, i)).collect();
    }
    let mut out = Vec::with_capacity(n);
    install(|| {
        (0..n)
            .into_par_iter()
            .with_max_len(chunk.max(1))
            .map_init(&init, &f)
            .collect_into_vec(&mut out);
    });
    out
}
