//! Real programs under `LD_PRELOAD=libtensorpool_preload.so`: a multi-threaded C program with
//! content checks, `python3` with numpy, `sort` on a large file and `git` on a repository made
//! here, each exiting 0 with the same output as without the library; the library loaded with
//! `dlopen`; and the ctypes example tagging numpy's allocations.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The shared library, built (once per test run) beside this test binary in `target/<profile>/`.
/// Cargo does not build a cdylib-only package's library for its integration tests, so the test
/// asks cargo for it: a stale library would test old code.
fn library() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
            let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
            cargo
                .args(["build", "-p", "tensorpool-preload", "--manifest-path"])
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
            if dir.file_name().is_some_and(|n| n == "release") {
                cargo.arg("--release");
            }
            let status = cargo.status().expect("cargo");
            assert!(status.success(), "building the library failed");
            let lib = dir.join("libtensorpool_preload.so");
            assert!(lib.exists(), "{} not built", lib.display());
            lib
        })
        .clone()
}

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compile one of `tests/c/*.c` into the test's temporary directory.
fn compile(src: &str) -> PathBuf {
    let out = tmp("c").join(src.trim_end_matches(".c"));
    let status = Command::new("cc")
        .args([
            "-O2",
            "-fno-builtin",
            "-pthread",
            "-Wno-alloc-size-larger-than",
            "-o",
        ])
        .arg(&out)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/c")
                .join(src),
        )
        .arg("-ldl")
        .status()
        .expect("a C compiler (cc)");
    assert!(status.success(), "compiling {src}");
    out
}

fn run(cmd: &mut Command, preload: bool) -> Output {
    if preload {
        cmd.env("LD_PRELOAD", library());
    } else {
        cmd.env_remove("LD_PRELOAD");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} (preload {preload}) failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a command without and with the library; both succeed with the same stdout.
fn same_output(mut make: impl FnMut() -> Command) -> String {
    let plain = run(&mut make(), false);
    let pre = run(&mut make(), true);
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        String::from_utf8_lossy(&pre.stdout)
    );
    String::from_utf8_lossy(&pre.stdout).into_owned()
}

/// `TENSORPOOL_BACKGROUND=1` under the preload library: the thread is not started before `main`
/// (the library waits for glibc to call `main`), and once started it returns an idle process's
/// freed memory without any allocator call.
#[test]
fn the_background_thread_starts_after_main_and_returns_idle_memory() {
    let exe = compile("background.c");
    let out = run(
        Command::new(&exe)
            .env("TENSORPOOL_BACKGROUND", "1")
            .env("TENSORPOOL_DECAY_MS", "200"),
        true,
    );
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| -> i64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    assert_eq!(field("threads_at_main="), 1, "a thread before main: {line}");
    assert_eq!(field("threads_after="), 2, "{line}");
    assert!(field("written=") >= 300, "{line}");
    assert!(field("freed=") >= 300, "kept for reuse at first: {line}");
    assert!(field("idle=") < 40, "returned while idle: {line}");
    // Without the option no thread is made, and an idle process keeps its memory.
    let out = run(Command::new(&exe).env("TENSORPOOL_DECAY_MS", "200"), true);
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(line.contains("threads_after=1"), "{line}");
}

#[test]
fn multithreaded_c_program_checks_contents_and_contracts() {
    let exe = compile("stress.c");
    let out = same_output(|| Command::new(&exe));
    assert_eq!(out, "threads 4, steps 40000 each, failures 0\n");
    // With the C API checked too: kinds, a KV-cache block in the statistics, trim, EBADF.
    let out = run(Command::new(&exe).env("TP_CHECK_API", "1"), true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("JSON line");
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert!(
        v["kinds"]["kv_cache"]["live_bytes"].as_u64().unwrap() >= 3 << 20,
        "{json}"
    );
    assert!(stdout.ends_with("failures 0\n"), "{stdout}");
}

#[test]
fn sort_of_a_large_file_is_unchanged() {
    let dir = tmp("sort");
    let input = dir.join("input.txt");
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut text = String::new();
    for i in 0..300_000u64 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        text.push_str(&format!("{:016x} line {i}\n", s));
    }
    std::fs::write(&input, text).unwrap();
    let out = same_output(|| {
        let mut c = Command::new("sort");
        c.arg(&input).env("LC_ALL", "C");
        c
    });
    assert_eq!(out.lines().count(), 300_000);
    assert!(out.lines().zip(out.lines().skip(1)).all(|(a, b)| a <= b));
}

#[test]
fn git_on_a_repository_made_here_is_unchanged() {
    let dir = tmp("git");
    let repo = dir.join("repo");
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str], preload: bool| {
        let mut c = Command::new("git");
        c.args(args)
            .current_dir(&repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", &dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z");
        run(&mut c, preload)
    };
    git(&["init", "-q", "-b", "main"], true);
    for i in 0..40 {
        let body: String = (0..200).map(|j| format!("file {i} line {j}\n")).collect();
        std::fs::write(repo.join(format!("f{i}.txt")), body).unwrap();
        git(&["add", "."], true);
        git(&["commit", "-q", "-m", &format!("commit {i}")], true);
    }
    git(&["gc", "-q"], true);
    for args in [
        &["log", "--stat", "--format=%H %s"][..],
        &["fsck", "--full"][..],
        &["diff", "HEAD~30", "HEAD", "--stat"][..],
    ] {
        let a = git(args, false);
        let b = git(args, true);
        assert_eq!(a.stdout, b.stdout, "git {args:?}");
    }
    let log = git(&["log", "--format=%s"], false);
    assert_eq!(String::from_utf8_lossy(&log.stdout).lines().count(), 40);
}

#[test]
fn options_apply_at_load_even_without_a_large_allocation() {
    // `git --version` never makes a large allocation; the exit report still comes.
    let out = run(
        Command::new("git")
            .arg("--version")
            .env("TENSORPOOL_STATS", "1"),
        true,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tensorpool: statistics at exit"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("git version"));
}

const NUMPY_WORK: &str = "
import numpy as np
rng = np.random.default_rng(7)
acc = 0.0
for step in range(20):
    a = rng.standard_normal((256, 512)).astype(np.float32)
    w = rng.standard_normal((512, 1024)).astype(np.float32)
    h = np.maximum(a @ w, 0)
    acc += float(np.round(h.sum(dtype=np.float64), 2))
    kv = np.concatenate([a] * (step + 1))
    acc += kv.shape[0]
print(f'{acc:.2f}', np.sort(rng.integers(0, 1000, 100000))[::9999].tolist())
";

#[test]
fn python_with_numpy_is_unchanged() {
    let out = same_output(|| {
        let mut c = Command::new("python3");
        c.args(["-c", NUMPY_WORK]);
        c
    });
    assert!(out.contains('['), "{out}");
}

#[test]
fn the_ctypes_example_tags_numpy_allocations() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/tag_numpy.py");
    let out = run(Command::new("python3").arg(script), true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("freed: kv_cache live"), "{stdout}");
}

#[test]
fn the_library_loads_with_dlopen_and_serves_threads() {
    let exe = compile("dlopen.c");
    let out = run(Command::new(&exe).arg(library()), false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.ends_with("dlopen ok, failures 0\n"), "{stdout}");
    let json = stdout.lines().find(|l| l.starts_with('{')).unwrap();
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    // Four threads tagged kinds 1-4 and allocated from them.
    for k in ["attention", "kv_cache", "image_embedding", "text_embedding"] {
        assert!(
            v["kinds"][k]["requests"].as_u64().unwrap() >= 2000,
            "{k}: {json}"
        );
    }
}

#[test]
fn the_library_needs_no_static_tls() {
    // Initial-exec TLS shows as TPOFF relocations; the general-dynamic model (DTPMOD) loads with
    // dlopen anywhere.
    let out = Command::new("readelf")
        .arg("-rW")
        .arg(library())
        .output()
        .expect("readelf");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("TPOFF"), "static TLS relocations found");
}
