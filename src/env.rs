//! `TENSORPOOL_*` environment variables: reading one without allocating, and the one-line
//! warning a bad value gets. Options and topology overrides both read through here.

use crate::os;
use crate::text::{Bytes, StackStr};

/// The value a bad setting falls back to, for the warning.
pub(crate) enum Kept {
    Bytes(usize),
    Count(usize),
    Bool(bool),
    Millis(i64),
    Text(&'static str),
}

pub(crate) fn read_var<T>(
    name: &core::ffi::CStr,
    parse: fn(&[u8]) -> Option<T>,
    expected: &str,
    kept: impl FnOnce() -> Kept,
) -> Option<T> {
    let raw = os::getenv(name)?;
    let v = parse(raw);
    if v.is_none() {
        warn_bad(name, raw, expected, kept());
    }
    v
}

/// One line to stderr: the variable, its bad value, what was expected and the value kept.
pub(crate) fn warn_bad(name: &core::ffi::CStr, raw: &[u8], expected: &str, kept: Kept) {
    use core::fmt::Write;
    let mut line = StackStr::<512>::new();
    let shown = core::str::from_utf8(&raw[..raw.len().min(64)]).unwrap_or("(not UTF-8)");
    let name = core::str::from_utf8(name.to_bytes()).unwrap_or("");
    let _ = write!(
        line,
        "tensorpool: warning: {name}={shown:?} is not valid (expected {expected}); keeping "
    );
    let _ = match kept {
        Kept::Bytes(b) => write!(line, "{} ({b} bytes)", Bytes(b as u64)),
        Kept::Count(n) => write!(line, "{n}"),
        Kept::Bool(b) => write!(line, "{}", u8::from(b)),
        Kept::Millis(ms) => write!(line, "{ms}"),
        Kept::Text(t) => write!(line, "{t}"),
    };
    let _ = line.write_char('\n');
    os::write_stderr(line.as_bytes());
}
