//! Input element types. Half-precision logits arrive as their raw 16-bit patterns and are
//! widened exactly, a few lanes at a time, inside the kernels: no f32 copy of a whole input.

use half::f16;

use crate::core::simd::Lanes;

/// An element type of a logits row that widens exactly to f32.
pub trait Source: Copy + Send + Sync + 'static {
    /// `−∞` in this encoding (padding of ragged vectors).
    const NEG_INFINITY: Self;

    /// Exact widening of one element.
    fn to_f32(self) -> f32;

    /// Widen `L::WIDTH` consecutive elements starting at `p`.
    ///
    /// # Safety
    /// `p` must be valid for `L::WIDTH` reads and the CPU must support `L`.
    unsafe fn load<L: Lanes>(p: *const Self) -> L::V;
}

impl Source for f32 {
    const NEG_INFINITY: Self = f32::NEG_INFINITY;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[inline(always)]
    unsafe fn load<L: Lanes>(p: *const Self) -> L::V {
        L::load_f32(p)
    }
}

/// bfloat16 bits: the upper half of an f32.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16Bits(pub u16);

/// IEEE float16 bits.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct F16Bits(pub u16);

impl Source for Bf16Bits {
    const NEG_INFINITY: Self = Bf16Bits(0xFF80);

    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }

    #[inline(always)]
    unsafe fn load<L: Lanes>(p: *const Self) -> L::V {
        L::load_bf16(p as *const u16)
    }
}

impl Source for F16Bits {
    const NEG_INFINITY: Self = F16Bits(0xFC00);

    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::from_bits(self.0).to_f32()
    }

    #[inline(always)]
    unsafe fn load<L: Lanes>(p: *const Self) -> L::V {
        L::load_f16(p as *const u16)
    }
}

/// Reinterpret raw 16-bit patterns (what the bindings receive) as a typed slice.
pub fn as_bf16(bits: &[u16]) -> &[Bf16Bits] {
    // SAFETY: Bf16Bits is repr(transparent) over u16.
    unsafe { std::slice::from_raw_parts(bits.as_ptr() as *const Bf16Bits, bits.len()) }
}

/// Reinterpret raw 16-bit patterns as IEEE float16.
pub fn as_f16(bits: &[u16]) -> &[F16Bits] {
    // SAFETY: F16Bits is repr(transparent) over u16.
    unsafe { std::slice::from_raw_parts(bits.as_ptr() as *const F16Bits, bits.len()) }
}
