//! entcore's pool: `map_indexed` order and scratch use on both branches (inline below
//! `PARALLEL_MIN_WORK`, pooled above), and the thread-count setting.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{restore_threads, serial};
use crate::core::pool::{self, map_indexed, PARALLEL_MIN_WORK};

/// Uneven work so that pooled tasks finish out of order.
fn spin(i: usize) -> u64 {
    let mut x = i as u64;
    for _ in 0..(i % 7) * 200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
    }
    x
}

#[test]
fn inline_branch_keeps_order_on_the_calling_thread() {
    let inits = AtomicUsize::new(0);
    let caller = std::thread::current().id();
    for n in [0usize, 1, 2, 17, 1000] {
        inits.store(0, Ordering::SeqCst);
        let out = map_indexed(
            n,
            3,
            PARALLEL_MIN_WORK - 1,
            || {
                inits.fetch_add(1, Ordering::SeqCst);
                0usize
            },
            |used, i| {
                *used += 1;
                let _ = spin(i);
                (i, *used, std::thread::current().id())
            },
        );
        assert_eq!(out.len(), n);
        for (k, &(i, used, thread)) in out.iter().enumerate() {
            assert_eq!(i, k, "order");
            // One scratch for the whole call, used in index order.
            assert_eq!(used, k + 1, "scratch reuse");
            assert_eq!(thread, caller, "inline on the caller");
        }
        assert_eq!(inits.load(Ordering::SeqCst), 1, "n = {n}: one scratch");
    }
}

#[test]
fn pooled_branch_keeps_order() {
    for chunk in [1usize, 7, 64, 100_000] {
        for n in [2usize, 3, 1000, 20_000] {
            let inits = AtomicUsize::new(0);
            let out = map_indexed(
                n,
                chunk,
                PARALLEL_MIN_WORK,
                || {
                    inits.fetch_add(1, Ordering::SeqCst);
                    0usize
                },
                |used, i| {
                    *used += 1;
                    let name = std::thread::current().name().map(str::to_owned);
                    (i, spin(i), *used, name)
                },
            );
            assert_eq!(out.len(), n);
            for (k, (i, s, used, name)) in out.iter().enumerate() {
                assert_eq!((*i, *s), (k, spin(k)), "chunk {chunk} n {n}: order");
                assert!(*used <= chunk, "a scratch serves at most `chunk` items");
                let name = name.as_deref().unwrap_or("");
                assert!(name.starts_with("entcore-"), "ran on {name:?}");
            }
            let tasks = inits.load(Ordering::SeqCst);
            assert!(
                tasks >= n.div_ceil(chunk),
                "chunk {chunk} n {n}: {tasks} tasks"
            );
        }
    }
}

#[test]
fn single_item_and_empty_calls_stay_inline() {
    let caller = std::thread::current().id();
    let out = map_indexed(
        1,
        1,
        usize::MAX,
        || (),
        |_, i| (i, std::thread::current().id()),
    );
    assert_eq!(out, [(0, caller)]);
    let out: Vec<usize> = map_indexed(0, 1, usize::MAX, || (), |_, i| i);
    assert!(out.is_empty());
}

#[test]
fn nested_calls_inside_the_pool() {
    let out = map_indexed(
        8,
        1,
        PARALLEL_MIN_WORK,
        || (),
        |_, i| {
            let inner = map_indexed(50, 4, PARALLEL_MIN_WORK, || (), move |_, j| i * 100 + j);
            inner.iter().sum::<usize>()
        },
    );
    let want: Vec<usize> = (0..8).map(|i| (0..50).map(|j| i * 100 + j).sum()).collect();
    assert_eq!(out, want);
}

#[test]
fn thread_count_setting() {
    let _guard = serial();
    for threads in [1usize, 2, 3, 8] {
        pool::set_num_threads(threads);
        assert_eq!(pool::num_threads(), threads);
        assert_eq!(pool::install(rayon::current_num_threads), threads);
        let out = map_indexed(4 * threads, 1, PARALLEL_MIN_WORK, || (), |_, i| i * i);
        assert_eq!(out, (0..4 * threads).map(|i| i * i).collect::<Vec<_>>());
    }
    // Zero is raised to one worker.
    pool::set_num_threads(0);
    assert_eq!(pool::num_threads(), 1);
    restore_threads();
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(pool::num_threads(), n);
}
