//! One vocabulary tile of one row reduced to a [`State`] (`token.md` §2–3): the fixed reduction
//! tree is tiles of [`TILE`] entries, each reduced with a fixed lane layout, merged left to right.

use crate::core::dtype::Source;
use crate::core::simd::{Lanes, EXP_FLOOR};
use crate::core::state::State;

/// Vocabulary entries per tile.
pub const TILE: usize = 2048;
/// The widest step of `Lanes::UNROLL` vectors (16 lanes × 2).
const MAX_STEP: usize = 32;
/// Most accumulators per lane of any [`Lanes`].
const MAX_UNROLL: usize = 2;
/// Steps between flushes of the f32 lane sums into the f64 lane sums: a lane adds at most this
/// many terms in f32, so terms below half an ulp of the lane's largest one (e.g. `e^−16.6`
/// beside the maximum's `exp(0) = 1`) lose at most `FLUSH · 2⁻²⁴ ≈ 2e-6` relative in total.
const FLUSH: usize = 32;

/// Scratch space for one tile of scaled logits.
pub type TileBuf = [f32; TILE];

/// A tile's state and whether it held NaN or +inf (then the state is meaningless).
pub struct TileResult {
    pub state: State,
    pub bad: bool,
}

/// Reduce `src` (at most [`TILE`] entries) of one row: `z' = widen(z) / t`, then the sums of
/// [`State`] relative to the tile maximum. With `t == 1` the second pass re-reads `src` (still in
/// L1); otherwise the first pass stores `z'` in `buf` once, so each entry is divided only once.
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
    let scale = t != 1.0;
    let (m, bad) = if scale {
        tile_max::<L, E, true>(src, t, buf)
    } else {
        tile_max::<L, E, false>(src, t, buf)
    };
    if bad || m == f32::NEG_INFINITY {
        return TileResult {
            state: State::EMPTY,
            bad,
        };
    }
    // While the second pass computes on cached data, fetch what follows this tile in memory
    // (the next tile, or the next row): the stream would otherwise stall on DRAM.
    let next = src.as_ptr().wrapping_add(src.len()) as *const u8;
    let next_step = std::mem::size_of::<E>();
    let state = if scale {
        tile_sums::<L, f32, Q>(&buf[..src.len()], m, next, next_step)
    } else {
        tile_sums::<L, E, Q>(src, m, next, next_step)
    };
    TileResult { state, bad: false }
}

/// First pass: the maximum of `z'` and whether any entry is NaN or +inf; with `STORE`, `z' = z/t`
/// is also written to `buf`.
#[inline(always)]
unsafe fn tile_max<L: Lanes, E: Source, const STORE: bool>(
    src: &[E],
    t: f32,
    buf: &mut TileBuf,
) -> (f32, bool) {
    let n = src.len();
    let width = L::WIDTH;
    let tv = L::splat(t);
    let mut vmax = L::splat(f32::NEG_INFINITY);
    let mut flag = L::flag_none();
    let full = n / width * width;
    let mut i = 0;
    while i < full {
        let mut x = E::load::<L>(src.as_ptr().add(i));
        if STORE {
            x = L::div(x, tv);
            L::store(buf.as_mut_ptr().add(i), x);
        }
        flag = L::flag_bad(flag, x);
        vmax = L::max(vmax, x);
        i += width;
    }
    let mut bad = L::flag_any(flag);
    let mut m = L::hmax(vmax);
    for j in full..n {
        let mut x = src[j].to_f32();
        if STORE {
            x /= t;
            buf[j] = x;
        }
        bad |= x.is_nan() || x == f32::INFINITY;
        if x > m {
            m = x;
        }
    }
    (m, bad)
}

/// Second pass: `s, w, q` relative to the finite maximum `m`. Entry `i` always lands in lane
/// `i % WIDTH` of accumulator `(i / WIDTH) % UNROLL`; the ragged end is padded with `−∞`.
/// Step `i` also prefetches `next + i · next_step` bytes ahead.
/// Arguments are clamped at `EXP_FLOOR`, where `2^n` underflows to exactly 0, so `−∞` entries add
/// exactly nothing to any sum.
#[inline(always)]
unsafe fn tile_sums<L: Lanes, S: Source, const Q: bool>(
    src: &[S],
    m: f32,
    next: *const u8,
    next_step: usize,
) -> State {
    let step = L::WIDTH * L::UNROLL;
    let mv = L::splat(m);
    let floor = L::splat(EXP_FLOOR);
    let zero = L::splat(0.0);
    let mut s = [zero; MAX_UNROLL];
    let mut w = [zero; MAX_UNROLL];
    let mut q = [zero; MAX_UNROLL];
    let n = src.len();
    let full = n / step * step;
    let mut sums = [L::dzero(); 3];
    // Blocks of FLUSH steps: the f32 accumulators live in registers through a block, the f64
    // sums are touched once per block (outside the hot loop, so they need no register). The
    // ragged end, padded with −∞, is the last step of the last block, exactly where it would be
    // if the row were longer: appended −∞ entries change no bit of the result.
    let mut pad = [S::NEG_INFINITY; MAX_STEP];
    pad[..n - full].copy_from_slice(&src[full..]);
    let total = n.div_ceil(step) * step;
    let mut i = 0;
    while i < total {
        let block_end = total.min(i + FLUSH * step);
        while i < block_end.min(full) {
            L::prefetch(next.wrapping_add(i * next_step));
            accumulate::<L, S, Q>(src.as_ptr().add(i), mv, floor, &mut s, &mut w, &mut q);
            i += step;
        }
        if i < block_end {
            accumulate::<L, S, Q>(pad.as_ptr(), mv, floor, &mut s, &mut w, &mut q);
            i += step;
        }
        flush::<L, Q>(&mut sums, &mut s, &mut w, &mut q);
    }
    State {
        m: m as f64,
        s: L::dsum(sums[0]),
        w: L::dsum(sums[1]),
        q: if Q { L::dsum(sums[2]) } else { 0.0 },
    }
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

/// One step of `L::UNROLL` vectors from `p` into the accumulators.
#[inline(always)]
unsafe fn accumulate<L: Lanes, S: Source, const Q: bool>(
    p: *const S,
    m: L::V,
    floor: L::V,
    s: &mut [L::V; MAX_UNROLL],
    w: &mut [L::V; MAX_UNROLL],
    q: &mut [L::V; MAX_UNROLL],
) {
    for u in 0..L::UNROLL {
        let x = L::max(L::sub(S::load::<L>(p.add(u * L::WIDTH)), m), floor);
        let e = L::exp_nonpositive(x);
        s[u] = L::add(s[u], e);
        w[u] = L::fmadd(x, e, w[u]);
        if Q {
            q[u] = L::fmadd(e, e, q[u]);
        }
    }
}

/// Add the f32 lane sums into the f64 lanes of `sums` (`s`, `w`, `q`) and clear them (never a
/// closure: closures do not inherit the caller's target features, so their lane operations
/// would not inline).
#[inline(always)]
unsafe fn flush<L: Lanes, const Q: bool>(
    sums: &mut [L::D; 3],
    s: &mut [L::V; MAX_UNROLL],
    w: &mut [L::V; MAX_UNROLL],
    q: &mut [L::V; MAX_UNROLL],
) {
    let zero = L::splat(0.0);
    for u in 0..L::UNROLL {
        sums[0] = L::dadd(sums[0], s[u]);
        sums[1] = L::dadd(sums[1], w[u]);
        if Q {
            sums[2] = L::dadd(sums[2], q[u]);
        }
        (s[u], w[u], q[u]) = (zero, zero, zero);
    }
}
