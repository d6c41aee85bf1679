//! The portable fallback: one lane, plain arithmetic (no FMA assumed).

use half::f16;

use super::Lanes;

#[derive(Copy, Clone)]
pub struct Scalar;

impl Lanes for Scalar {
    const WIDTH: usize = 1;
    const UNROLL: usize = 2;
    type V = f32;
    type D = f64;
    type Flag = bool;

    #[inline(always)]
    unsafe fn splat(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32) -> f32 {
        *p
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> f32 {
        f32::from_bits((*p as u32) << 16)
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> f32 {
        f16::from_bits(*p).to_f32()
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32) {
        *p = v
    }
    #[inline(always)]
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn sub(a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    unsafe fn mul(a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    unsafe fn div(a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    unsafe fn fmadd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
    #[inline(always)]
    unsafe fn max(a: f32, b: f32) -> f32 {
        if a > b {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    unsafe fn round(a: f32) -> f32 {
        a.round_ties_even()
    }
    #[inline(always)]
    unsafe fn pow2i(n: f32) -> f32 {
        f32::from_bits(((n as i32 + 127) as u32) << 23)
    }
    #[inline(always)]
    unsafe fn hmax(a: f32) -> f32 {
        a
    }
    #[inline(always)]
    unsafe fn dzero() -> f64 {
        0.0
    }
    #[inline(always)]
    unsafe fn dadd(acc: f64, v: f32) -> f64 {
        acc + v as f64
    }
    #[inline(always)]
    unsafe fn dsum(acc: f64) -> f64 {
        acc
    }
    #[inline(always)]
    unsafe fn add_to_f64(p: *mut f64, v: f32) {
        *p += v as f64
    }
    #[inline(always)]
    unsafe fn flag_none() -> bool {
        false
    }
    #[inline(always)]
    unsafe fn flag_bad(flag: bool, x: f32) -> bool {
        flag | x.is_nan() | (x == f32::INFINITY)
    }
    #[inline(always)]
    unsafe fn flag_any(flag: bool) -> bool {
        flag
    }
    #[inline(always)]
    unsafe fn prefetch(_p: *const u8) {}
}
