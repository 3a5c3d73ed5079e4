//! Link the unwinder statically (`libgcc_eh.a`, the C compiler's) where the compiler has it, so
//! that the library does not bring `libgcc_s.so.1` into every process it is preloaded into.
//! Rust's standard library needs an unwinder only for backtraces here; a C program that did not
//! load `libgcc_s` itself paid for its mapping and about 100 KiB of resident pages (see
//! docs/performance.md, "0.3.9"). Only the library's own exported symbols are visible, so the
//! program's unwinder, if it has one, is untouched. Where the compiler has no `libgcc_eh.a`,
//! nothing changes: `libgcc_s` is linked as before.
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !linux_gnu {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let Ok(out) = Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
    else {
        return;
    };
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let path = Path::new(&path);
    // The compiler prints the bare name when it has no such file.
    if !out.status.success() || !path.is_absolute() || !path.is_file() {
        return;
    }
    if let Some(dir) = path.parent() {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
    }
}
