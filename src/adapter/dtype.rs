//! Element types of tensors.

use core::fmt;
use core::str::FromStr;

/// A tensor's element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float (half).
    F16,
    /// bfloat16: the top half of an f32.
    BF16,
    /// 64-bit IEEE float.
    F64,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Boolean, one byte (0 or 1).
    Bool,
}

impl DType {
    /// Every element type.
    pub const ALL: [DType; 9] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F64,
        DType::I8,
        DType::U8,
        DType::I32,
        DType::I64,
        DType::Bool,
    ];

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The canonical name (`"f32"`, `"bf16"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F64 => "f64",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Accepted spellings: Rust's, numpy's and PyTorch's (`torch.` prefix optional), any case.
const SPELLINGS: &[(&str, DType)] = &[
    ("f32", DType::F32),
    ("float32", DType::F32),
    ("float", DType::F32),
    ("f16", DType::F16),
    ("float16", DType::F16),
    ("half", DType::F16),
    ("bf16", DType::BF16),
    ("bfloat16", DType::BF16),
    ("f64", DType::F64),
    ("float64", DType::F64),
    ("double", DType::F64),
    ("i8", DType::I8),
    ("int8", DType::I8),
    ("u8", DType::U8),
    ("uint8", DType::U8),
    ("i32", DType::I32),
    ("int32", DType::I32),
    ("int", DType::I32),
    ("i64", DType::I64),
    ("int64", DType::I64),
    ("long", DType::I64),
    ("bool", DType::Bool),
];

/// A string that names no element type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseDTypeError {
    input: String,
}

impl fmt::Display for ParseDTypeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown dtype {:?}; expected one of ", self.input)?;
        for (i, (name, _)) in SPELLINGS.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        f.write_str(" (optionally prefixed with \"torch.\")")
    }
}

impl std::error::Error for ParseDTypeError {}

impl FromStr for DType {
    type Err = ParseDTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t.strip_prefix("torch.").unwrap_or(t);
        SPELLINGS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(t))
            .map(|&(_, d)| d)
            .ok_or_else(|| ParseDTypeError {
                input: s.to_owned(),
            })
    }
}

/// An IEEE half-precision float, stored as its bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct F16(pub u16);

/// A bfloat16, stored as its bits (the top 16 bits of an f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Bf16 {
    /// Round an f32 to the nearest bfloat16 (ties to even; NaN stays NaN).
    pub fn from_f32(x: f32) -> Bf16 {
        let b = x.to_bits();
        if x.is_nan() {
            return Bf16(((b >> 16) as u16) | 0x40);
        }
        let round = 0x7fff + ((b >> 16) & 1);
        Bf16((b.wrapping_add(round) >> 16) as u16)
    }

    /// The exact f32 value.
    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

impl F16 {
    /// Round an f32 to the nearest half (ties to even), with overflow to infinity and gradual
    /// underflow to subnormals.
    pub fn from_f32(x: f32) -> F16 {
        let b = x.to_bits();
        let sign = ((b >> 16) & 0x8000) as u16;
        let exp = ((b >> 23) & 0xff) as i32;
        let man = b & 0x7f_ffff;
        if exp == 0xff {
            // Infinity or NaN (keep NaN quiet and non-zero).
            let nan = if man != 0 { 0x200 } else { 0 };
            return F16(sign | 0x7c00 | nan);
        }
        let e = exp - 127 + 15;
        if e >= 0x1f {
            return F16(sign | 0x7c00);
        }
        if e <= 0 {
            // Subnormal half (or zero): shift the full significand into place.
            if e < -10 {
                return F16(sign);
            }
            let full = man | 0x80_0000;
            let shift = (14 - e) as u32;
            let half = full >> shift;
            let rest = full & ((1 << shift) - 1);
            let mid = 1 << (shift - 1);
            let up = rest > mid || (rest == mid && half & 1 == 1);
            return F16(sign | (half + u32::from(up)) as u16);
        }
        let half = ((e as u32) << 10) | (man >> 13);
        let rest = man & 0x1fff;
        let up = rest > 0x1000 || (rest == 0x1000 && half & 1 == 1);
        // A carry out of the significand correctly bumps the exponent (to infinity at the top).
        F16(sign | (half + u32::from(up)) as u16)
    }

    /// The exact f32 value.
    pub fn to_f32(self) -> f32 {
        let sign = ((self.0 & 0x8000) as u32) << 16;
        let exp = ((self.0 >> 10) & 0x1f) as u32;
        let man = (self.0 & 0x3ff) as u32;
        let bits = match (exp, man) {
            (0, 0) => sign,
            (0, m) => {
                // Subnormal: normalise.
                let shift = m.leading_zeros() - 21;
                let m = (m << shift) & 0x3ff;
                sign | ((127 - 15 + 1 - shift) << 23) | (m << 13)
            }
            (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
            (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
        };
        f32::from_bits(bits)
    }
}

mod sealed {
    pub trait Sealed {}
}

/// Rust types a tensor's elements can be viewed as: each matches one `DType` exactly, and every
/// bit pattern the tensor can hold is a valid value of it (tensors start zeroed, and a `bool`
/// tensor is only written through `&mut [bool]`).
pub trait Element: sealed::Sealed + Copy + 'static {
    /// The element type this Rust type views.
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = DType::$d;
        }
    )*};
}

element!(f32 => F32, F16 => F16, Bf16 => BF16, f64 => F64, i8 => I8, u8 => U8, i32 => I32,
    i64 => I64, bool => Bool);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_parse_and_names_round_trip() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
        }
        assert_eq!("torch.float16".parse::<DType>().unwrap(), DType::F16);
        assert_eq!(" BFloat16 ".parse::<DType>().unwrap(), DType::BF16);
        let e = "complex64".parse::<DType>().unwrap_err().to_string();
        assert!(e.contains("\"complex64\"") && e.contains("bfloat16"), "{e}");
    }

    #[test]
    fn half_conversions_round_to_nearest_even() {
        for (x, bits) in [
            (0.0f32, 0x0000u16),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (65504.0, 0x7bff),
            (65520.0, 0x7c00), // rounds up to infinity
            (f32::INFINITY, 0x7c00),
            (2f32.powi(-14), 0x0400),             // smallest normal
            (2f32.powi(-24), 0x0001),             // smallest subnormal
            (2f32.powi(-25), 0x0000),             // half of it: a tie, to even (zero)
            (1.0 + 2f32.powi(-11), 0x3c00),       // a tie, stays even
            (1.0 + 3.0 * 2f32.powi(-11), 0x3c02), // a tie, rounds up to even
        ] {
            assert_eq!(F16::from_f32(x).0, bits, "{x}");
        }
        // Every finite half survives the round trip.
        for b in 0..=u16::MAX {
            let h = F16(b);
            let f = h.to_f32();
            if f.is_nan() {
                assert!(F16::from_f32(f).to_f32().is_nan());
            } else {
                assert_eq!(F16::from_f32(f), h, "{b:#06x}");
            }
        }
    }

    #[test]
    fn bf16_conversions_round_to_nearest_even() {
        assert_eq!(Bf16::from_f32(1.0).0, 0x3f80);
        assert_eq!(Bf16::from_f32(1.0 + 1.0 / 256.0).0, 0x3f80); // tie, even
        assert_eq!(Bf16::from_f32(1.0 + 3.0 / 256.0).0, 0x3f82); // tie, up to even
        assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
        for b in (0..=u16::MAX).step_by(7) {
            let h = Bf16(b);
            if !h.to_f32().is_nan() {
                assert_eq!(Bf16::from_f32(h.to_f32()), h);
            }
        }
    }
}
