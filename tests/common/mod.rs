//! Helpers shared by the integration tests (and the core benchmark): a small deterministic RNG,
//! and re-running the current test binary as a child with a chosen environment.
// Each test binary uses part of this module.
#![allow(dead_code)]

use std::process::Command;

/// xorshift64: deterministic, good enough to pick sizes and shapes.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

/// Run test `name` of this binary alone in a child process with `TENSORPOOL_TEST_CHILD=1` and
/// `env`, however it ends.
pub fn child_output(name: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env("TENSORPOOL_TEST_CHILD", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The child `out` was stopped by SIGABRT after a line naming tensorpool that contains `want`
/// and says it is aborting; returns that line.
pub fn assert_stopped(out: &std::process::Output, case: &str, want: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "case {case} was not stopped: {:?} {err}",
        out.status
    );
    let line = err
        .lines()
        .find(|l| l.starts_with("tensorpool: ") && l.contains("aborting"))
        .unwrap_or_else(|| panic!("case {case}: no message: {err}"));
    assert!(line.contains(want), "case {case}: {line}");
    line.to_string()
}

/// Run test `name` of this binary alone in a child process with `TENSORPOOL_TEST_CHILD=1` and
/// `env`; panics unless it exits successfully. Returns its stdout and stderr.
pub fn run_child_test(name: &str, env: &[(&str, &str)]) -> (String, String) {
    let out = child_output(name, env);
    assert!(out.status.success(), "child {name} failed: {out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
