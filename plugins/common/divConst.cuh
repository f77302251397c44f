// fl(y / D) for a compile-time divisor D, IEEE round-to-nearest-even, in three instructions.
//
// __fdiv_rn compiles to MUFU.RCP, five FFMA, FCHK and a branch around a call to the slow-path
// subroutine (~11 issue slots, plus BSSY/BSYNC). With c = fl(1 / D) (a constant):
//   q0 = fl(y * c)            within one ulp of y / D
//   r  = fma(-q0, D, y)       the remainder y - q0 D, exact (fma, q0 within one ulp)
//   q  = fma(r, c, q0)        = fl(y / D)
// Markstein's theorem (c the correctly rounded reciprocal, q0 a faithful quotient: q is the
// correctly rounded quotient while no step underflows). Checked on the H100 against __fdiv_rn for
// every one of the 2^32 fp32 bit patterns and D = 7, 15, 127 (plugins/NOTES.md log 16): bit-equal
// for every finite y except y = -0 (gives +0 instead of -0); y = +-inf gives NaN instead of +-inf.
// The callers divide amax-like values >= +0, and round the quotient to fp16.
#pragma once

namespace lowbit {

template <int D>
__device__ __forceinline__ float divRnConst(float y) {
  static_assert(D > 0, "positive divisor");
  constexpr float c = 1.0f / static_cast<float>(D);  // correctly rounded at compile time
  const float q0 = __fmul_rn(y, c);
  const float r = __fmaf_rn(-q0, static_cast<float>(D), y);
  return __fmaf_rn(r, c, q0);
}

}  // namespace lowbit
