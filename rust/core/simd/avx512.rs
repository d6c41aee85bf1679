//! Sixteen f32 lanes: AVX-512F (FMA and float16 widening included).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::Lanes;

#[derive(Copy, Clone)]
pub struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512 {
    const WIDTH: usize = 16;
    const UNROLL: usize = 2;
    type V = __m512;
    type D = (__m512d, __m512d);
    type Flag = __mmask16;

    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> __m512 {
        let bits = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div(a: __m512, b: __m512) -> __m512 {
        _mm512_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        _mm512_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn round(a: __m512) -> __m512 {
        _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a)
    }
    #[inline(always)]
    unsafe fn pow2i(n: __m512) -> __m512 {
        let biased = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
        _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased))
    }
    #[inline(always)]
    unsafe fn hmax(a: __m512) -> f32 {
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), a);
        lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }
    #[inline(always)]
    unsafe fn dzero() -> (__m512d, __m512d) {
        (_mm512_setzero_pd(), _mm512_setzero_pd())
    }
    #[inline(always)]
    unsafe fn dadd(acc: (__m512d, __m512d), v: __m512) -> (__m512d, __m512d) {
        let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
            _mm512_castps_pd(v),
        )));
        (_mm512_add_pd(acc.0, lo), _mm512_add_pd(acc.1, hi))
    }
    #[inline(always)]
    unsafe fn dsum(acc: (__m512d, __m512d)) -> f64 {
        let mut lanes = [0f64; 16];
        _mm512_storeu_pd(lanes.as_mut_ptr(), acc.0);
        _mm512_storeu_pd(lanes.as_mut_ptr().add(8), acc.1);
        lanes.iter().sum()
    }
    #[inline(always)]
    unsafe fn add_to_f64(p: *mut f64, v: __m512) {
        let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
            _mm512_castps_pd(v),
        )));
        _mm512_storeu_pd(p, _mm512_add_pd(_mm512_loadu_pd(p), lo));
        _mm512_storeu_pd(p.add(8), _mm512_add_pd(_mm512_loadu_pd(p.add(8)), hi));
    }
    #[inline(always)]
    unsafe fn flag_none() -> __mmask16 {
        0
    }
    #[inline(always)]
    unsafe fn flag_bad(flag: __mmask16, x: __m512) -> __mmask16 {
        flag | _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(f32::INFINITY))
    }
    #[inline(always)]
    unsafe fn flag_any(flag: __mmask16) -> bool {
        flag != 0
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    }
}
