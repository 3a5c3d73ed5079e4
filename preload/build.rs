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
    layout_script();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let Ok(out) = Command::new(&cc)
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
    let Some(dir) = path.parent() else {
        return;
    };
    // The unwinder's lookup of code addresses, without glibc 2.35's `_dl_find_object` (see
    // csrc/find_object.c): an object file on the link line, so that its definition is there
    // before libgcc_eh.a asks for the symbol. If it cannot be compiled, the unwinder stays
    // dynamic: a library that loads everywhere matters more than 100 KiB.
    let Some(obj) = compile_find_object(&cc) else {
        println!("cargo:warning=csrc/find_object.c did not compile: linking libgcc_s instead");
        return;
    };
    println!("cargo:rustc-link-arg-cdylib={}", obj.display());
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
}

/// `csrc/find_object.c` compiled into `OUT_DIR`, or `None` if the compiler fails.
fn compile_find_object(cc: &str) -> Option<std::path::PathBuf> {
    println!("cargo:rerun-if-changed=csrc/find_object.c");
    let out = Path::new(&std::env::var_os("OUT_DIR")?).join("find_object.o");
    let ok = Command::new(cc)
        .args(["-c", "-O2", "-fPIC", "-fvisibility=hidden", "-o"])
        .arg(&out)
        .arg("csrc/find_object.c")
        .status()
        .ok()?
        .success();
    ok.then_some(out)
}

/// Put the code and read-only data that every process runs and reads at the front of their
/// segments (`layout.ld`, a script that only inserts sections: the linker's own layout stays
/// for everything else; GNU ld and lld both read it). The kernel maps a library's file pages
/// 64 KiB around each page a process touches ("fault-around"), so each scattered piece costs a
/// window of resident pages in every process the library is preloaded into (docs/performance.md,
/// "0.3.12"). `TENSORPOOL_PRELOAD_LAYOUT=0` leaves the linker's layout alone, for a linker that
/// reads no scripts (mold).
fn layout_script() {
    println!("cargo:rerun-if-env-changed=TENSORPOOL_PRELOAD_LAYOUT");
    println!("cargo:rerun-if-changed=layout.ld");
    if std::env::var("TENSORPOOL_PRELOAD_LAYOUT").as_deref() == Ok("0") {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("layout.ld");
    println!("cargo:rustc-link-arg-cdylib=-Wl,-T,{}", script.display());
}
