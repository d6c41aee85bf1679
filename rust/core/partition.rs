//! The marking pass of the exact selection (`select.rs`): one read of the values that writes the
//! mask of every value above a key bracket, counts the values below it and collects the few
//! inside it. Written once in scalar code and once with AVX2 intrinsics (32 values per step, a
//! byte-mask table for the stores); the level comes from `simd::level()` so tests run both.

use rayon::prelude::*;

use crate::core::pool;
use crate::core::simd::{self, Level};

/// Elements per task.
const CHUNK: usize = 1 << 18;
/// Elements per block: a block whose values are all decided is never looked at again.
const BLOCK: usize = 32;

/// The order-preserving image of a non-NaN float: `a < b ⇔ key(a) < key(b)`, and `a == b ⇔
/// key(a) == key(b)`: −0 is taken as +0 (`x + 0.0`), so that a cut at zero keeps both.
#[inline(always)]
pub fn order_key(x: f32) -> u32 {
    let bits = (x + 0.0).to_bits();
    // Negative: flip every bit; non-negative: set the sign bit (branch-free, vectorisable).
    bits ^ ((((bits as i32) >> 31) as u32) | 0x8000_0000)
}

/// The float of a key (the inverse of [`order_key`]; zero comes back as +0).
#[inline(always)]
pub fn from_key(key: u32) -> f32 {
    let bits = if key & 0x8000_0000 != 0 {
        key ^ 0x8000_0000
    } else {
        !key
    };
    f32::from_bits(bits)
}

/// The values that take part are the valid (mask non-zero) ones that are not NaN.
#[derive(Copy, Clone)]
pub struct Entries<'a> {
    pub values: &'a [f32],
    pub valid: Option<&'a [u8]>,
}

/// What one pass over a unit found.
pub struct Pass {
    /// Taken values above the bracket (marked 1).
    pub above: usize,
    /// Taken values below the bracket.
    pub below: usize,
    /// First valid NaN.
    pub first_nan: Option<usize>,
    /// `(index, value)` of the taken values inside the bracket, in index order.
    pub inside: Vec<(usize, f32)>,
}

impl Pass {
    fn empty() -> Pass {
        Pass {
            above: 0,
            below: 0,
            first_nan: None,
            inside: Vec::new(),
        }
    }

    /// Add the next chunk's findings (chunks are merged in index order).
    fn extend(&mut self, next: Pass) {
        self.above += next.above;
        self.below += next.below;
        self.first_nan = self.first_nan.or(next.first_nan);
        self.inside.extend(next.inside);
    }
}

/// `out[i] = 1` for taken values with key above `hi_key`, 0 elsewhere; counts the taken values
/// below `lo_key` and collects those in `[lo_key, hi_key]`. Integer counts: the split into tasks
/// cannot change the result.
pub fn partition_pass(e: Entries<'_>, lo_key: u32, hi_key: u32, out: &mut [u8]) -> Pass {
    let level = simd::level();
    let part = |c: usize, o: &mut [u8]| {
        let base = c * CHUNK;
        let values = &e.values[base..base + o.len()];
        let valid = e.valid.map(|v| &v[base..base + o.len()]);
        let mut pass = Pass::empty();
        let done = match level {
            Level::Scalar => 0,
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a level other than Scalar is only chosen on a CPU with AVX2.
            _ => unsafe { avx2::mark(values, valid, base, lo_key, hi_key, o, &mut pass) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => 0,
        };
        let (vs, os) = (&values[done..], &mut o[done..]);
        let valid = valid.map(|v| &v[done..]);
        mark_scalar(vs, valid, base + done, lo_key, hi_key, os, &mut pass);
        pass
    };
    let parts: Vec<Pass> = if out.len() < pool::PARALLEL_MIN_WORK {
        out.chunks_mut(CHUNK)
            .enumerate()
            .map(|(c, o)| part(c, o))
            .collect()
    } else {
        pool::install(|| {
            out.par_chunks_mut(CHUNK)
                .enumerate()
                .map(|(c, o)| part(c, o))
                .collect()
        })
    };
    let mut total = Pass::empty();
    for p in parts {
        total.extend(p);
    }
    total
}

/// Look again at a block that holds a bracketed value or a valid NaN.
#[inline(always)]
fn collect_block(
    xs: &[f32],
    vs: Option<&[u8]>,
    base: usize,
    lo_key: u32,
    hi_key: u32,
    pass: &mut Pass,
) {
    for (j, &x) in xs.iter().enumerate() {
        if vs.is_some_and(|v| v[j] == 0) {
            continue;
        }
        if x.is_nan() {
            pass.first_nan = pass.first_nan.or(Some(base + j));
        } else if (lo_key..=hi_key).contains(&order_key(x)) {
            pass.inside.push((base + j, x));
        }
    }
}

/// The scalar pass: a branch-free loop marks a block and counts; only a block with an undecided
/// value is looked at again.
fn mark_scalar(
    values: &[f32],
    valid: Option<&[u8]>,
    base: usize,
    lo_key: u32,
    hi_key: u32,
    out: &mut [u8],
    pass: &mut Pass,
) {
    for (b, (xs, os)) in values.chunks(BLOCK).zip(out.chunks_mut(BLOCK)).enumerate() {
        let vs = valid.map(|v| &v[b * BLOCK..b * BLOCK + xs.len()]);
        let (mut above, mut below, mut taken) = (0usize, 0usize, 0usize);
        let mut nans = false;
        for (j, (o, &x)) in os.iter_mut().zip(xs).enumerate() {
            let v = vs.is_none_or(|v| v[j] != 0);
            let t = !x.is_nan() & v;
            let key = order_key(x);
            let keep = t & (key > hi_key);
            *o = keep as u8;
            above += keep as usize;
            below += (t & (key < lo_key)) as usize;
            taken += t as usize;
            nans |= v & x.is_nan();
        }
        pass.above += above;
        pass.below += below;
        if taken != above + below || nans {
            collect_block(xs, vs, base + b * BLOCK, lo_key, hi_key, pass);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Pass, BLOCK};

    /// Byte `j` of entry `m` is bit `j` of `m`: eight 0/1 mask bytes from a movemask.
    const BYTES: [u64; 256] = {
        let mut table = [0u64; 256];
        let mut m = 0;
        while m < 256 {
            let mut j = 0;
            while j < 8 {
                if m & (1 << j) != 0 {
                    table[m] |= 1 << (8 * j);
                }
                j += 1;
            }
            m += 1;
        }
        table
    };

    /// Signed image of the order key (`key ^ 0x8000_0000`), so that AVX2's signed compare orders
    /// keys: `bits ^ ((bits >> 31) & 0x7FFF_FFFF)` with an arithmetic shift, −0 taken as +0.
    #[inline(always)]
    unsafe fn signed_keys(x: __m256) -> __m256i {
        let bits = _mm256_castps_si256(_mm256_add_ps(x, _mm256_setzero_ps()));
        let flip = _mm256_and_si256(_mm256_srai_epi32(bits, 31), _mm256_set1_epi32(i32::MAX));
        _mm256_xor_si256(bits, flip)
    }

    /// The whole blocks of `values`: marks written, counts and bracketed values added to `pass`.
    /// Returns how many values it handled (a multiple of `BLOCK`).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2,popcnt")]
    pub unsafe fn mark(
        values: &[f32],
        valid: Option<&[u8]>,
        base: usize,
        lo_key: u32,
        hi_key: u32,
        out: &mut [u8],
        pass: &mut Pass,
    ) -> usize {
        let blocks = values.len() / BLOCK;
        let lo = _mm256_set1_epi32((lo_key ^ 0x8000_0000) as i32);
        let hi = _mm256_set1_epi32((hi_key ^ 0x8000_0000) as i32);
        let (mut above_total, mut below_total) = (0usize, 0usize);
        for b in 0..blocks {
            let at = b * BLOCK;
            // SAFETY: `at + BLOCK <= values.len() == out.len()` (and the mask's length).
            let (mut above, mut below) = (0u32, 0u32);
            for q in 0..BLOCK / 8 {
                let x = _mm256_loadu_ps(values.as_ptr().add(at + 8 * q));
                let k = signed_keys(x);
                let is_nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
                let gt = _mm256_andnot_si256(is_nan, _mm256_cmpgt_epi32(k, hi));
                let lt = _mm256_andnot_si256(is_nan, _mm256_cmpgt_epi32(lo, k));
                above |= (_mm256_movemask_ps(_mm256_castsi256_ps(gt)) as u32) << (8 * q);
                below |= (_mm256_movemask_ps(_mm256_castsi256_ps(lt)) as u32) << (8 * q);
            }
            let taken_bits = match valid {
                None => u32::MAX,
                Some(v) => {
                    let bytes = _mm256_loadu_si256(v.as_ptr().add(at) as *const __m256i);
                    !(_mm256_movemask_epi8(_mm256_cmpeq_epi8(bytes, _mm256_setzero_si256())) as u32)
                }
            };
            above &= taken_bits;
            below &= taken_bits;
            for q in 0..BLOCK / 8 {
                let marks = BYTES[((above >> (8 * q)) & 0xFF) as usize];
                (out.as_mut_ptr().add(at + 8 * q) as *mut u64).write_unaligned(marks);
            }
            above_total += above.count_ones() as usize;
            below_total += below.count_ones() as usize;
            // Undecided: a taken value in the bracket, or a valid NaN; visited lane by lane.
            let mut undecided = taken_bits & !(above | below);
            while undecided != 0 {
                let j = undecided.trailing_zeros() as usize;
                let x = *values.get_unchecked(at + j);
                if x.is_nan() {
                    pass.first_nan = pass.first_nan.or(Some(base + at + j));
                } else {
                    pass.inside.push((base + at + j, x));
                }
                undecided &= undecided - 1;
            }
        }
        pass.above += above_total;
        pass.below += below_total;
        blocks * BLOCK
    }
}
