//! The two transcendental functions the crate needs (`exp`, `ln`), without libm.
//!
//! `f64::exp` and `f64::ln` call the C library's libm, and a shared library that calls them has
//! libm as a dependency: loading it (its IFUNC resolvers run at load, each in its own part of
//! the text) put 320 KiB of libm's pages, and 480-576 KiB of peak RSS in all, into every process
//! the preload library was loaded into, before the first `malloc`. Only the heap profiler's
//! sampling and its report use these, where ten significant digits are more than enough; both
//! series below reach about 1e-15.

// ln 2 = LN2_HI + LN2_LO, the high part with its low 32 bits zero so that k * LN2_HI is exact.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);

/// `e^x`. Underflows to 0 below -745 and overflows to infinity above 709.8, as libm does.
pub(crate) fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x > 709.78 {
        return f64::INFINITY;
    }
    if x < -745.2 {
        return 0.0;
    }
    // x = k ln 2 + r with |r| <= ln 2 / 2; ln 2 in two parts keeps r exact to the last bit.
    // (`f64::round` would call libm's `round` on x86-64 without SSE4.1; the cast truncates.)
    let q = x / core::f64::consts::LN_2;
    let k = (q + if q < 0.0 { -0.5 } else { 0.5 }) as i32 as f64;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // Taylor to r^16 / 16!: the first term left out is under 3e-19 for |r| <= 0.35.
    let mut term = 1.0;
    let mut sum = 1.0;
    for i in 1..=16 {
        term *= r / i as f64;
        sum += term;
    }
    scale_by_pow2(sum, k as i32)
}

/// `x * 2^k`, through two steps where `2^k` alone is not a normal number.
fn scale_by_pow2(x: f64, k: i32) -> f64 {
    let pow2 = |e: i32| f64::from_bits(((e + 1023) as u64) << 52);
    if k > 1023 {
        x * pow2(1023) * pow2(k - 1023)
    } else if k < -1022 {
        x * pow2(-1022) * pow2(k + 1022)
    } else {
        x * pow2(k)
    }
}

/// The natural logarithm: NaN below 0, minus infinity at 0.
pub(crate) fn ln(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_infinite() {
        return x;
    }
    // x = m 2^e with m in [sqrt(1/2), sqrt(2)); subnormals are scaled into the normal range.
    let (mut bits, mut e) = (x.to_bits(), 0i64);
    if bits >> 52 == 0 {
        bits = (x * f64::from_bits(0x4350_0000_0000_0000)).to_bits(); // 2^54
        e -= 54;
    }
    e += ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > core::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172: the series to s^25 leaves < 1e-20.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut power = s;
    let mut sum = 0.0;
    for i in 0..13 {
        sum += power / (2 * i + 1) as f64;
        power *= s2;
    }
    2.0 * sum + e as f64 * LN2_LO + e as f64 * LN2_HI
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        a == b || ((a - b) / b).abs() < 4e-15
    }

    #[test]
    fn exp_matches_the_c_library_over_its_range() {
        let mut x = -745.0;
        while x < 709.0 {
            assert!(
                close(exp(x), x.exp()),
                "exp({x}) = {} not {}",
                exp(x),
                x.exp()
            );
            x += 0.37;
        }
        for x in [0.0, 1e-300, -1e-300, 1e-8, -0.5, 0.5, 1.0, 20.0, -20.0] {
            assert!(close(exp(x), x.exp()), "exp({x})");
        }
        assert_eq!(exp(-800.0), 0.0);
        assert_eq!(exp(800.0), f64::INFINITY);
        assert!(exp(f64::NAN).is_nan());
        // Subnormal results: fewer digits exist, the value is still right to them.
        assert!((exp(-744.0) - (-744f64).exp()).abs() <= 2.0 * f64::from_bits(1));
    }

    #[test]
    fn ln_matches_the_c_library_over_its_range() {
        let mut x = f64::MIN_POSITIVE;
        while x < 1e300 {
            assert!(close(ln(x), x.ln()), "ln({x}) = {} not {}", ln(x), x.ln());
            x *= 1.7;
        }
        for x in [1.0, 2.0, 0.5, 1.0 + 1e-12, 0.999_999, 10.0, 5e-324, 1e-310] {
            let (a, b) = (ln(x), x.ln());
            assert!(
                a == b || (a - b).abs() < 4e-15 * b.abs().max(1e-300) + 1e-300,
                "ln({x})"
            );
        }
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
        assert!(ln(-1.0).is_nan());
        assert_eq!(ln(f64::INFINITY), f64::INFINITY);
    }
}
