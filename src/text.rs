//! Text without allocation: a string on the stack, byte sizes in binary units, and the number
//! parsing that `TENSORPOOL_*` variables and sysfs files need. Shared by options, topology and
//! statistics; it knows nothing of the allocator.

use core::fmt::{self, Write as _};

/// Bytes in binary units, padded as the formatter asks (no allocation).
#[derive(Clone, Copy)]
pub(crate) struct Bytes(pub(crate) u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = StackStr::<24>::new();
        let b = self.0;
        let r = if b < 1024 {
            write!(buf, "{b} B")
        } else {
            let (v, unit) = [("KiB", 1u64 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)]
                .iter()
                .rev()
                .find(|&&(_, d)| b >= d)
                .map(|&(u, d)| (b as f64 / d as f64, u))
                .unwrap_or((b as f64, "B"));
            write!(buf, "{v:.1} {unit}")
        };
        r?;
        f.pad(buf.as_str())
    }
}

/// A fixed-size string on the stack.
pub(crate) struct StackStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackStr<N> {
    pub(crate) const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }
    pub(crate) fn as_str(&self) -> &str {
        // Only whole `&str`s are ever appended.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }
    /// Append raw bytes (a path need not be UTF-8); an error if they do not fit.
    pub(crate) fn push_bytes(&mut self, b: &[u8]) -> fmt::Result {
        let end = self.len + b.len();
        if end > N {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(b);
        self.len = end;
        Ok(())
    }
    /// The contents as a C string: `None` if there is no room for the NUL or the contents hold
    /// one.
    pub(crate) fn as_cstr(&mut self) -> Option<&core::ffi::CStr> {
        if self.len >= N {
            return None;
        }
        self.buf[self.len] = 0;
        core::ffi::CStr::from_bytes_with_nul(&self.buf[..=self.len]).ok()
    }
}

impl<const N: usize> fmt::Write for StackStr<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > N {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A byte size: digits, an optional fraction, an optional binary unit (K, M, G, T, with or
/// without `iB`/`B`, any case). Rejects overflow and empty input.
pub(crate) fn parse_size(s: &[u8]) -> Option<usize> {
    let s = trim(s);
    let split = s
        .iter()
        .position(|c| !(c.is_ascii_digit() || *c == b'.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = trim(unit);
    // Compared in place: this runs on the allocation path, where nothing may allocate.
    let units: [(&[u8], u32); 5] = [(b"", 0), (b"K", 10), (b"M", 20), (b"G", 30), (b"T", 40)];
    let shift = units
        .iter()
        .find(|&&(p, _)| {
            [&b""[..], b"B", b"IB"].iter().any(|suffix| {
                unit.len() == p.len() + suffix.len()
                    && unit[..p.len()].eq_ignore_ascii_case(p)
                    && unit[p.len()..].eq_ignore_ascii_case(suffix)
                    && !(p.is_empty() && *suffix == b"IB")
            })
        })?
        .1;
    let (int, frac) = match num.iter().position(|&c| c == b'.') {
        Some(i) => (&num[..i], &num[i + 1..]),
        None => (num, &b""[..]),
    };
    if int.is_empty() || frac.contains(&b'.') || (frac.is_empty() && num.ends_with(b".")) {
        return None;
    }
    let mut v: usize = 0;
    for &c in int {
        v = v.checked_mul(10)?.checked_add((c - b'0') as usize)?;
    }
    let bytes = v.checked_mul(1usize.checked_shl(shift)?)?;
    // A fraction of the unit, to 10^-9 of it (truncated to whole bytes): exact for halves etc.
    if frac.len() > 9 {
        return None;
    }
    let (mut f, mut d) = (0u128, 1u128);
    for &c in frac {
        f = f * 10 + (c - b'0') as u128;
        d *= 10;
    }
    let part = usize::try_from((f << shift) / d).ok()?;
    let total = bytes.checked_add(part)?;
    // A value written as more than nothing that comes out as 0 bytes ("0.0000001K") is a
    // mistake, not a request for zero.
    if total == 0 && num.iter().any(|&c| c.is_ascii_digit() && c != b'0') {
        return None;
    }
    Some(total)
}

/// Whether `s` is one of `words`, ignoring ASCII case (no allocation).
pub(crate) fn is_one_of(s: &[u8], words: &[&[u8]]) -> bool {
    words.iter().any(|w| s.eq_ignore_ascii_case(w))
}

/// `s` without surrounding ASCII whitespace.
pub(crate) fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// A decimal number with nothing else but surrounding whitespace; `None` on overflow.
pub(crate) fn parse_uint(s: &[u8]) -> Option<usize> {
    let s = trim(s);
    if s.is_empty() {
        return None;
    }
    let mut v: usize = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as usize)?;
    }
    Some(v)
}

/// Append `s` to `out` as a JSON string literal.
pub(crate) fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_format_and_pad() {
        let mut s = StackStr::<64>::new();
        fmt::Write::write_fmt(&mut s, format_args!("[{:>9}]", Bytes(1536))).unwrap();
        assert_eq!(s.as_str(), "[  1.5 KiB]");
        s.clear();
        fmt::Write::write_fmt(&mut s, format_args!("{}", Bytes(3 << 30))).unwrap();
        assert_eq!(s.as_str(), "3.0 GiB");
        s.clear();
        fmt::Write::write_fmt(&mut s, format_args!("{}", Bytes(17))).unwrap();
        assert_eq!(s.as_str(), "17 B");
    }

    #[test]
    fn stack_str_refuses_what_does_not_fit() {
        let mut s = StackStr::<4>::new();
        assert!(s.write_str("abcd").is_ok());
        assert!(s.write_str("e").is_err());
        assert_eq!(s.as_str(), "abcd");
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size(b"6M"), Some(6 << 20));
        assert_eq!(parse_size(b" 2GiB "), Some(2 << 30));
        assert_eq!(parse_size(b"512k"), Some(512 << 10));
        assert_eq!(parse_size(b"1.5G"), Some(3 << 29));
        assert_eq!(parse_size(b"4096"), Some(4096));
        assert_eq!(parse_size(b"0"), Some(0));
        assert_eq!(parse_size(b"0.0K"), Some(0));
        assert_eq!(parse_size(b"1.0625K"), Some(1088));
        assert_eq!(parse_size(b"0.001M"), Some(1048));
        for bad in [
            &b""[..],
            b"M",
            b"abc",
            b"12Q",
            b"1..5G",
            b"-1G",
            b"5.G",
            b"99999999999999T",
            // More than nothing, yet no byte: a mistake, not zero.
            b"0.0000001K",
            b"0.5",
            // Finer than a billionth of the unit.
            b"1.0000000001G",
        ] {
            assert_eq!(parse_size(bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }

    #[test]
    fn numbers_parse_strictly() {
        assert_eq!(parse_uint(b" 42 "), Some(42));
        assert_eq!(parse_uint(b""), None);
        assert_eq!(parse_uint(b"4 2"), None);
        assert_eq!(parse_uint(b"99999999999999999999999"), None);
        assert_eq!(trim(b"  x y \n"), b"x y");
        assert!(is_one_of(b"TRUE", &[b"false", b"true"]));
    }
}
