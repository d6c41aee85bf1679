//! One vocabulary tile of one row reduced to a [`State`] (`token.md` §2–3): the fixed reduction
//! tree is tiles of [`TILE`] entries, each reduced with a fixed lane layout, merged left to right.

use crate::core::dtype::Source;
use crate::core::simd::{Lanes, EXP_FLOOR};
use crate::core::state::State;

/// Vocabulary entries per tile.
pub const TILE: usize = 2048;
/// Independent accumulators per lane (instruction-level parallelism).
const UNROLL: usize = 2;

/// Scratch space for one tile of scaled logits.
pub type TileBuf = [f32; TILE];

/// A tile's state and whether it held NaN or +inf (then the state is meaningless).
pub struct TileResult {
    pub state: State,
    pub bad: bool,
}

/// Reduce `src` (at most [`TILE`] entries) of one row: `z' = widen(z) / t` (no division when
/// `t == 1`), then the sums of `State` relative to the tile maximum, `exp` flushed to 0 below
/// `EXP_FLOOR` so that `−∞` entries contribute exactly nothing.
///
/// # Safety
/// The CPU must support `L`.
#[inline(always)]
pub unsafe fn reduce_tile<L: Lanes, E: Source, const Q: bool>(
    src: &[E],
    t: f32,
    buf: &mut TileBuf,
) -> TileResult {
    debug_assert!(src.len() <= TILE);
    let n = src.len();
    let width = L::WIDTH;
    let scale = t != 1.0;
    let tv = L::splat(t);
    let mut vmax = L::splat(f32::NEG_INFINITY);
    let mut flag = L::flag_none();
    let full = n / width * width;
    let mut i = 0;
    while i < full {
        let mut x = E::load::<L>(src.as_ptr().add(i));
        if scale {
            x = L::div(x, tv);
        }
        flag = L::flag_bad(flag, x);
        vmax = L::max(vmax, x);
        L::store(buf.as_mut_ptr().add(i), x);
        i += width;
    }
    let mut bad = L::flag_any(flag);
    let mut m = L::hmax(vmax);
    for j in full..n {
        let mut x = src[j].to_f32();
        if scale {
            x /= t;
        }
        bad |= x.is_nan() || x == f32::INFINITY;
        if x > m {
            m = x;
        }
        buf[j] = x;
    }
    if bad || m == f32::NEG_INFINITY {
        return TileResult {
            state: State::EMPTY,
            bad,
        };
    }
    let step = width * UNROLL;
    let padded = n.div_ceil(step) * step;
    buf[n..padded].fill(f32::NEG_INFINITY);

    let mv = L::splat(m);
    let floor = L::splat(EXP_FLOOR);
    let zero = L::splat(0.0);
    let mut s = [zero; UNROLL];
    let mut w = [zero; UNROLL];
    let mut q = [zero; UNROLL];
    let mut i = 0;
    while i < padded {
        for u in 0..UNROLL {
            let x = L::sub(L::load_f32(buf.as_ptr().add(i + u * width)), mv);
            let xc = L::max(x, floor);
            let e = L::keep_at_least(x, floor, L::exp_nonpositive(xc));
            s[u] = L::add(s[u], e);
            w[u] = L::fmadd(xc, e, w[u]);
            if Q {
                q[u] = L::fmadd(e, e, q[u]);
            }
        }
        i += step;
    }
    let mut state = State {
        m: m as f64,
        s: 0.0,
        w: 0.0,
        q: 0.0,
    };
    for u in 0..UNROLL {
        state.s += L::hsum(s[u]);
        state.w += L::hsum(w[u]);
        if Q {
            state.q += L::hsum(q[u]);
        }
    }
    TileResult { state, bad: false }
}

/// A whole row, tile by tile. Returns the state and whether NaN or +inf was seen.
///
/// # Safety
/// The CPU must support `L`.
#[inline(always)]
pub unsafe fn reduce_row<L: Lanes, E: Source, const Q: bool>(
    row: &[E],
    t: f32,
    buf: &mut TileBuf,
) -> TileResult {
    let mut state = State::EMPTY;
    for tile in row.chunks(TILE) {
        let r = reduce_tile::<L, E, Q>(tile, t, buf);
        if r.bad {
            return r;
        }
        state = state.merge(r.state);
    }
    TileResult { state, bad: false }
}

/// The float64 row reduction (float64 logits accumulate in float64; `token.md` §3).
pub fn reduce_row_f64(row: &[f64], t: f64, collision: bool) -> TileResult {
    let mut state = State::EMPTY;
    for tile in row.chunks(TILE) {
        let mut m = f64::NEG_INFINITY;
        for &z in tile {
            let x = z / t;
            if x.is_nan() || x == f64::INFINITY {
                return TileResult {
                    state: State::EMPTY,
                    bad: true,
                };
            }
            m = m.max(x);
        }
        if m == f64::NEG_INFINITY {
            continue;
        }
        let mut part = State {
            m,
            s: 0.0,
            w: 0.0,
            q: 0.0,
        };
        for &z in tile {
            let x = z / t - m;
            if x > f64::NEG_INFINITY {
                let e = x.exp();
                part.s += e;
                part.w += x * e;
                if collision {
                    part.q += e * e;
                }
            }
        }
        state = state.merge(part);
    }
    TileResult { state, bad: false }
}
