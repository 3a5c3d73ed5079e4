//! Which frames of a stack belong to the program, and which to the runtime around it: the
//! report shows the program's and folds the rest (the standard library, the allocator, the
//! Python interpreter's eval loop) into one expandable line per run of them.

/// The runtime a frame belongs to, or `None` for the program's own.
pub(crate) fn runtime(function: &str) -> Option<&'static str> {
    let f = function.trim_start_matches('<');
    const GROUPS: &[(&str, &[&str])] = &[
        (
            "the allocator",
            &[
                "tensorpool::",
                "malloc",
                "calloc",
                "realloc",
                "posix_memalign",
                "aligned_alloc",
                "memalign",
                "__rust_alloc",
                "__rust_realloc",
                "__rdl_",
                "__rg_",
            ],
        ),
        (
            "Rust's standard library",
            &[
                "std::",
                "core::",
                "alloc::",
                "__rust",
                "hashbrown::",
                "allocator_api2::",
                "backtrace::",
                "_Unwind",
                "__libc_start",
                "_start",
                "test::",
                "start_thread",
                "clone3",
                "__clone",
            ],
        ),
        (
            "the Python interpreter",
            &[
                "_PyEval_",
                "PyEval_",
                "_PyObject_",
                "PyObject_",
                "_PyFunction_",
                "_PyRun_",
                "PyRun_",
                "Py_RunMain",
                "Py_BytesMain",
                "pymain_",
                "run_mod",
                "run_eval_code_obj",
                "cfunction_",
                "method_vectorcall",
                "slot_tp_",
                "_PyVectorcall",
                "vectorcall_",
                "builtin_exec",
                "call_function",
            ],
        ),
    ];
    for (group, prefixes) in GROUPS {
        if prefixes.iter().any(|p| f.starts_with(p)) {
            return Some(group);
        }
    }
    if f.starts_with("0x") {
        return Some("unresolved addresses");
    }
    // `<T as Trait>::f`: a runtime's type, or a runtime's trait implemented by a closure or a
    // type parameter (`<F as core::ops::FnOnce<()>>::call_once`).
    if let Some((ty, tr)) = f.split_once(" as ") {
        let generic = ty.len() == 1
            || ty.contains("{{closure}}")
            || ty.starts_with("fn(")
            || ty.starts_with("dyn ");
        return runtime(ty).or(if generic { runtime(tr) } else { None });
    }
    None
}

/// A stack (innermost first) as runs: `(None, frames)` for the program's frames one by one,
/// `(Some(group), frames)` for a run of the runtime's.
pub(crate) fn runs<T>(
    frames: &[T],
    name: impl Fn(&T) -> &str,
) -> Vec<(Option<&'static str>, &[T])> {
    let mut out: Vec<(Option<&'static str>, &[T])> = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let g = runtime(name(&frames[i]));
        let mut j = i + 1;
        if g.is_some() {
            while j < frames.len() && runtime(name(&frames[j])) == g {
                j += 1;
            }
        }
        out.push((g, &frames[i..j]));
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_frames_are_grouped_and_the_programs_are_not() {
        let names = [
            "myapp::decode",
            "core::iter::traits::iterator::Iterator::fold",
            "alloc::vec::Vec<T>::extend",
            "myapp::main",
            "std::rt::lang_start",
            "_PyEval_EvalFrameDefault",
            "PyObject_Call",
        ];
        let r = runs(&names, |s| s);
        let shape: Vec<(Option<&str>, usize)> = r.iter().map(|(g, f)| (*g, f.len())).collect();
        assert_eq!(
            shape,
            [
                (None, 1),
                (Some("Rust's standard library"), 2),
                (None, 1),
                (Some("Rust's standard library"), 1),
                (Some("the Python interpreter"), 2)
            ]
        );
        assert_eq!(
            runtime("<alloc::vec::Vec<u8> as Clone>::clone"),
            Some("Rust's standard library")
        );
        assert_eq!(runtime("numpy_zeros"), None);
        assert_eq!(
            runtime("<F as core::ops::function::FnOnce<()>>::call_once"),
            Some("Rust's standard library")
        );
        assert_eq!(runtime("<myapp::Model as core::fmt::Display>::fmt"), None);
        assert_eq!(
            runtime("<fn() -> core::result::Result<(), alloc::string::String> as core::ops::function::FnOnce<()>>::call_once"),
            Some("Rust's standard library")
        );
    }
}
