//! One tile and one row reduced to a `State` (`tile.rs`), at every level, against the oracle;
//! the fixed lane layout (padding and tiling invariance); the float64 row reduction.

use super::{convert, on_level, random_row, Kind, LaneTest, Oracle, Rng, SHAPES};
use crate::core::dtype::Source;
use crate::core::simd::{self, Lanes, Level};
use crate::core::state::State;
use crate::core::tile::{reduce_row, reduce_row_f64, reduce_tile, TileBuf, TILE};

/// `reduce_tile` (or `reduce_row` with `row`) of `src` at temperature `t`.
struct Reduce<'a, E> {
    src: &'a [E],
    t: f32,
    collision: bool,
    row: bool,
}

impl<E: Source> LaneTest for Reduce<'_, E> {
    type Out = (State, bool);

    #[inline(always)]
    unsafe fn run<L: Lanes>(&self) -> (State, bool) {
        let mut buf: Box<TileBuf> = Box::new([f32::NAN; TILE]);
        let r = match (self.row, self.collision) {
            (false, false) => reduce_tile::<L, E, false>(self.src, self.t, &mut buf),
            (false, true) => reduce_tile::<L, E, true>(self.src, self.t, &mut buf),
            (true, false) => reduce_row::<L, E, false>(self.src, self.t, &mut buf),
            (true, true) => reduce_row::<L, E, true>(self.src, self.t, &mut buf),
        };
        (r.state, r.bad)
    }
}

fn tile<E: Source>(level: Level, src: &[E], t: f32, collision: bool) -> (State, bool) {
    on_level(
        level,
        &Reduce {
            src,
            t,
            collision,
            row: false,
        },
    )
}

fn row<E: Source>(level: Level, src: &[E], t: f32, collision: bool) -> (State, bool) {
    on_level(
        level,
        &Reduce {
            src,
            t,
            collision,
            row: true,
        },
    )
}

fn state_bits(s: &State) -> [u64; 4] {
    [s.m.to_bits(), s.s.to_bits(), s.w.to_bits(), s.q.to_bits()]
}

/// `z' = widen(z) / t` exactly as the kernel scales: one f32 division (none when `t == 1`).
fn scaled<E: Kind>(src: &[E], t: f32) -> Vec<f64> {
    src.iter()
        .map(|&z| {
            let x = z.exact() as f32;
            (if t == 1.0 { x } else { x / t }) as f64
        })
        .collect()
}

fn assert_state_close(got: &State, want: &Oracle, collision: bool, what: &str) {
    assert_eq!(got.m, want.m, "{what}: m is the exact maximum");
    let rel = |a: f64, b: f64, scale: f64| (a - b).abs() <= 1e-5 * scale;
    assert!(
        rel(got.s, want.s, want.s),
        "{what}: s {} vs {}",
        got.s,
        want.s
    );
    assert!(
        rel(got.w, want.w, want.w.abs().max(want.s)),
        "{what}: w {} vs {}",
        got.w,
        want.w
    );
    if collision {
        assert!(
            rel(got.q, want.q, want.q),
            "{what}: q {} vs {}",
            got.q,
            want.q
        );
    } else {
        assert_eq!(got.q, 0.0, "{what}: q is not accumulated");
    }
}

const LENGTHS: [usize; 18] = [
    1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1000, 2047, 2048,
];

#[test]
fn tile_state_matches_oracle() {
    let mut rng = Rng::new(11);
    for level in simd::supported() {
        for_each_simd_kind!(E => {
            for &n in &LENGTHS {
                for (k, &shape) in SHAPES.iter().enumerate() {
                    let src: Vec<E> = convert(&random_row(&mut rng, n, shape));
                    for t in [1.0f32, 0.7, 1.5] {
                        let collision = k % 2 == 0;
                        let (st, bad) = tile(level, &src, t, collision);
                        assert!(!bad);
                        let what = format!("{level:?} {} n={n} {shape:?} t={t}", E::NAME);
                        let want = Oracle::new(&scaled(&src, t), 1.0).unwrap();
                        assert_state_close(&st, &want, collision, &what);
                    }
                }
            }
        });
    }
}

#[test]
fn row_state_matches_oracle_across_tiles() {
    let mut rng = Rng::new(12);
    for level in simd::supported() {
        for_each_simd_kind!(E => {
            for n in [2049, 4096, 4097, 10_000] {
                for &shape in &SHAPES {
                    let src: Vec<E> = convert(&random_row(&mut rng, n, shape));
                    for t in [1.0f32, 0.7] {
                        let (st, bad) = row(level, &src, t, true);
                        assert!(!bad);
                        let what = format!("{level:?} {} n={n} {shape:?} t={t}", E::NAME);
                        let want = Oracle::new(&scaled(&src, t), 1.0).unwrap();
                        assert_state_close(&st, &want, true, &what);
                    }
                }
            }
        });
    }
}

#[test]
fn neg_inf_padding_is_bitwise_neutral() {
    // Entry i always lands in the same lane and accumulator, and −∞ adds exactly 0 there, so
    // appending −∞ entries changes no bit of the state.
    let mut rng = Rng::new(13);
    for level in simd::supported() {
        for_each_simd_kind!(E => {
            for &n in &LENGTHS {
                let src: Vec<E> = convert(&random_row(&mut rng, n, SHAPES[n % 4]));
                for t in [1.0f32, 0.7] {
                    let base = tile(level, &src, t, true).0;
                    for extra in [1, 5, 32, TILE - n] {
                        let mut padded = src.clone();
                        padded.resize((n + extra).min(TILE), E::NEG_INFINITY);
                        let got = tile(level, &padded, t, true).0;
                        assert_eq!(
                            state_bits(&got),
                            state_bits(&base),
                            "{level:?} {} n={n} +{extra} t={t}",
                            E::NAME
                        );
                    }
                }
            }
        });
    }
}

#[test]
fn row_is_left_to_right_merge_of_tiles() {
    let mut rng = Rng::new(14);
    for level in simd::supported() {
        for_each_simd_kind!(E => {
            for n in [1, 2048, 2049, 4097, 6500] {
                let src: Vec<E> = convert(&random_row(&mut rng, n, SHAPES[n % 4]));
                for t in [1.0f32, 0.7] {
                    for collision in [false, true] {
                        let whole = row(level, &src, t, collision).0;
                        let merged = src.chunks(TILE).fold(State::EMPTY, |acc, c| {
                            acc.merge(tile(level, c, t, collision).0)
                        });
                        assert_eq!(
                            state_bits(&whole),
                            state_bits(&merged),
                            "{level:?} {} n={n}",
                            E::NAME
                        );
                    }
                }
            }
        });
    }
}

#[test]
fn masked_entries_add_exactly_nothing() {
    for level in simd::supported() {
        for_each_simd_kind!(E => {
            for &n in &LENGTHS {
                let mut src = vec![E::NEG_INFINITY; n];
                // All masked: the empty state, not a bad tile.
                let (st, bad) = tile(level, &src, 1.0, true);
                assert!(!bad && st.is_empty(), "{level:?} {} n={n}", E::NAME);
                assert_eq!(state_bits(&st), state_bits(&State::EMPTY));
                // One finite entry anywhere: exactly the one-element state (z', 1, 0, 1).
                for pos in [0, n / 2, n - 1] {
                    src.fill(E::NEG_INFINITY);
                    src[pos] = E::from_f64(-3.25);
                    for t in [1.0f32, 0.5] {
                        let (st, bad) = tile(level, &src, t, true);
                        assert!(!bad);
                        let z = (-3.25f32 / t) as f64;
                        assert_eq!(
                            (st.m, st.s, st.w, st.q),
                            (z, 1.0, 0.0, 1.0),
                            "{level:?} {} n={n} pos={pos}",
                            E::NAME
                        );
                        assert_eq!(st.entropy(), 0.0);
                    }
                }
            }
            // A whole row of masked tiles around one finite entry.
            let mut src = vec![E::NEG_INFINITY; 3 * TILE + 5];
            src[2 * TILE + 1] = E::from_f64(7.0);
            let (st, bad) = row(level, &src, 1.0, false);
            assert!(!bad);
            assert_eq!((st.m, st.s, st.w, st.q), (7.0, 1.0, 0.0, 0.0));
            let (st, bad) = row(level, &vec![E::NEG_INFINITY; 2 * TILE + 1], 1.0, true);
            assert!(!bad && st.is_empty());
        });
    }
}

#[test]
fn uniform_tiles_are_exact() {
    for level in simd::supported() {
        for_each_simd_kind!(E => {
            for &n in &LENGTHS {
                let src = vec![E::from_f64(1.5); n];
                for t in [1.0f32, 0.7] {
                    let (st, _) = tile(level, &src, t, true);
                    assert_eq!(
                        (st.m, st.s, st.w, st.q),
                        ((1.5f32 / t) as f64, n as f64, 0.0, n as f64),
                        "{level:?} {} n={n}",
                        E::NAME
                    );
                }
            }
        });
    }
}

#[test]
fn bad_values_are_flagged_anywhere() {
    for level in simd::supported() {
        for_each_simd_kind!(E => {
            for n in [1, 7, 8, 37, 2048, 2049, 5000] {
                let positions = [0, 7.min(n - 1), n / 2, n - 1];
                for pos in positions {
                    for bad in [f64::NAN, f64::INFINITY] {
                        let mut src: Vec<E> = vec![E::from_f64(0.5); n];
                        src[pos] = E::from_f64(bad);
                        for t in [1.0f32, 0.7] {
                            let (_, flagged) = row(level, &src, t, false);
                            assert!(flagged, "{level:?} {} n={n} {bad} at {pos}", E::NAME);
                        }
                        if n <= TILE {
                            assert!(tile(level, &src, 1.0, true).1);
                        }
                    }
                    // −∞ is never bad.
                    let mut src: Vec<E> = vec![E::from_f64(0.5); n];
                    src[pos] = E::NEG_INFINITY;
                    assert!(!row(level, &src, 0.7, true).1);
                }
            }
            // NaN among masked entries only: still flagged, not an empty tile.
            let mut src = vec![E::NEG_INFINITY; 40];
            src[33] = E::from_f64(f64::NAN);
            assert!(row(level, &src, 1.0, true).1);
        });
        // A finite float32 logit that overflows when divided by the temperature.
        let mut src = vec![1.0f32; 100];
        src[97] = 3e38;
        assert!(!row(level, &src, 1.0, true).1);
        assert!(row(level, &src, 0.5, true).1, "{level:?}: 6e38 overflows");
    }
}

#[test]
fn reduce_row_f64_matches_oracle() {
    let mut rng = Rng::new(15);
    for n in [1, 2, 7, 2047, 2048, 2049, 4097, 9000] {
        for &shape in &SHAPES {
            let src = random_row(&mut rng, n, shape);
            for t in [1.0, 0.7, 1.3] {
                let r = reduce_row_f64(&src, t, true);
                assert!(!r.bad);
                let want = Oracle::new(&src, t).unwrap();
                let what = format!("f64 n={n} {shape:?} t={t}");
                assert_eq!(r.state.m, want.m, "{what}");
                for (a, b) in [(r.state.s, want.s), (r.state.q, want.q)] {
                    assert!((a - b).abs() <= 1e-12 * b, "{what}: {a} vs {b}");
                }
                let scale = want.w.abs().max(want.s);
                assert!((r.state.w - want.w).abs() <= 1e-12 * scale, "{what}");
                assert_eq!(reduce_row_f64(&src, t, false).state.q, 0.0);
            }
        }
    }
    // Masked, bad and overflowing rows.
    let masked = vec![f64::NEG_INFINITY; 3000];
    let r = reduce_row_f64(&masked, 1.0, true);
    assert!(!r.bad && r.state.is_empty());
    let mut one = masked.clone();
    one[2500] = -1.0;
    let r = reduce_row_f64(&one, 0.25, true);
    assert_eq!(
        (r.state.m, r.state.s, r.state.w, r.state.q),
        (-4.0, 1.0, 0.0, 1.0)
    );
    for bad in [f64::NAN, f64::INFINITY] {
        let mut src = vec![0.0; 3000];
        src[2999] = bad;
        assert!(reduce_row_f64(&src, 1.0, false).bad);
    }
    assert!(reduce_row_f64(&[1e308, 0.0], 0.1, false).bad);
}

#[test]
fn lane_layouts_fit_the_padding_buffer() {
    // `tile_sums` pads the ragged end into a 32-entry buffer.
    use crate::core::simd::Scalar;
    let mut steps = vec![Scalar::WIDTH * Scalar::UNROLL];
    #[cfg(target_arch = "x86_64")]
    {
        use crate::core::simd::{Avx2, Avx512};
        steps.push(Avx2::WIDTH * Avx2::UNROLL);
        steps.push(Avx512::WIDTH * Avx512::UNROLL);
    }
    assert!(steps.iter().all(|&s| (1..=32).contains(&s)), "{steps:?}");
    assert_eq!(TILE, 2048);
}

// ---------------------------------------------------------------------------------------------
// State::merge
// ---------------------------------------------------------------------------------------------

/// The direct float64 state of `values` (the empty state for no finite entry).
fn direct(values: &[f64]) -> State {
    match Oracle::new(values, 1.0) {
        Some(o) => State {
            m: o.m,
            s: o.s,
            w: o.w,
            q: o.q,
        },
        None => State::EMPTY,
    }
}

fn assert_state_eq(a: &State, b: &State, tol: f64, what: &str) {
    assert_eq!(a.m, b.m, "{what}: m");
    let close = |x: f64, y: f64, scale: f64| (x - y).abs() <= tol * scale;
    assert!(close(a.s, b.s, b.s), "{what}: s {} vs {}", a.s, b.s);
    assert!(
        close(a.w, b.w, b.w.abs().max(b.s)),
        "{what}: w {} vs {}",
        a.w,
        b.w
    );
    assert!(close(a.q, b.q, b.q), "{what}: q {} vs {}", a.q, b.q);
}

/// Random states: direct states of random pieces, one-element states, the empty state.
fn random_states(rng: &mut Rng, n: usize) -> Vec<State> {
    (0..n)
        .map(|i| match i % 5 {
            0 => State::EMPTY,
            1 => {
                let z = rng.uniform(-50.0, 50.0);
                State {
                    m: z,
                    s: 1.0,
                    w: 0.0,
                    q: 1.0,
                }
            }
            _ => {
                let len = 1 + rng.below(40);
                let mut values = random_row(rng, len, SHAPES[i % 4]);
                let shift = rng.uniform(-60.0, 60.0);
                values.iter_mut().for_each(|x| *x += shift);
                direct(&values)
            }
        })
        .collect()
}

#[test]
fn merge_identity_is_exact() {
    let mut rng = Rng::new(16);
    for a in random_states(&mut rng, 200) {
        assert_eq!(state_bits(&a.merge(State::EMPTY)), state_bits(&a));
        assert_eq!(state_bits(&State::EMPTY.merge(a)), state_bits(&a));
    }
    let e = State::EMPTY.merge(State::EMPTY);
    assert!(e.is_empty());
    assert_eq!(state_bits(&e), state_bits(&State::EMPTY));
    assert_eq!(State::EMPTY.m, f64::NEG_INFINITY);
}

#[test]
fn merge_is_commutative_bitwise_and_associative() {
    let mut rng = Rng::new(17);
    let states = random_states(&mut rng, 60);
    for a in &states {
        for b in &states {
            let (ab, ba) = (a.merge(*b), b.merge(*a));
            assert_eq!(state_bits(&ab), state_bits(&ba), "{a:?} {b:?}");
        }
    }
    for (i, a) in states.iter().enumerate() {
        for b in states.iter().skip(i % 7).step_by(7) {
            for c in states.iter().skip(i % 5).step_by(5) {
                let left = a.merge(*b).merge(*c);
                let right = a.merge(b.merge(*c));
                if left.is_empty() || right.is_empty() {
                    assert!(left.is_empty() && right.is_empty());
                    continue;
                }
                assert_state_eq(&left, &right, 1e-13, &format!("{a:?} {b:?} {c:?}"));
            }
        }
    }
}

#[test]
fn merge_of_pieces_equals_direct_state() {
    let mut rng = Rng::new(18);
    for &shape in &SHAPES {
        let values = random_row(&mut rng, 300, shape);
        let whole = direct(&values);
        // Any split into pieces, merged left to right or as a balanced tree.
        for piece in [1, 2, 7, 64, 299, 300] {
            let parts: Vec<State> = values.chunks(piece).map(direct).collect();
            let linear = parts.iter().fold(State::EMPTY, |acc, s| acc.merge(*s));
            assert_state_eq(
                &linear,
                &whole,
                1e-13,
                &format!("{shape:?} pieces of {piece}"),
            );
            let mut level = parts;
            while level.len() > 1 {
                level = level
                    .chunks(2)
                    .map(|p| if p.len() == 2 { p[0].merge(p[1]) } else { p[0] })
                    .collect();
            }
            assert_state_eq(
                &level[0],
                &whole,
                1e-13,
                &format!("{shape:?} tree of {piece}"),
            );
        }
        // One element at a time: (z, 1, 0, 1) merged in.
        let singles =
            values
                .iter()
                .filter(|z| **z > f64::NEG_INFINITY)
                .fold(State::EMPTY, |acc, &z| {
                    acc.merge(State {
                        m: z,
                        s: 1.0,
                        w: 0.0,
                        q: 1.0,
                    })
                });
        assert_state_eq(&singles, &whole, 1e-12, &format!("{shape:?} singles"));
    }
}

#[test]
fn merge_far_below_adds_exactly_nothing() {
    let a = direct(&[3.0, 1.0, -2.0]);
    let b = direct(&[-2000.0, -2001.0]);
    assert_eq!(state_bits(&a.merge(b)), state_bits(&a));
    assert_eq!(state_bits(&b.merge(a)), state_bits(&a));
}

#[test]
fn state_outputs_by_hand() {
    // Logits (0, ln 3): p = (1/4, 3/4).
    let ln3 = 3f64.ln();
    let st = direct(&[0.0, ln3]);
    let (p0, p1) = (0.25f64, 0.75f64);
    let h = -(p0 * p0.ln() + p1 * p1.ln());
    assert!((st.entropy() - h).abs() < 1e-15);
    assert!((st.collision() - (p0 * p0 + p1 * p1)).abs() < 1e-15);
    assert!((st.lse() - 4f64.ln()).abs() < 1e-15);
    assert!((st.logprob(0.0) - p0.ln()).abs() < 1e-15);
    assert!((st.logprob(ln3) - p1.ln()).abs() < 1e-15);
    assert_eq!(st.logprob(f64::NEG_INFINITY), f64::NEG_INFINITY);
    // The one-element state: H = 0, Σp² = 1, ℓ = 0, LSE = z, all exactly.
    let one = State {
        m: -7.5,
        s: 1.0,
        w: 0.0,
        q: 1.0,
    };
    assert_eq!(
        (one.entropy(), one.collision(), one.logprob(-7.5), one.lse()),
        (0.0, 1.0, 0.0, -7.5)
    );
}
