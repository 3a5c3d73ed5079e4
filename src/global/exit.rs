//! The reports a process writes at exit (registered with `atexit` when the allocator
//! configures itself): the statistics table or JSON (`TENSORPOOL_STATS`, to
//! `TENSORPOOL_STATS_FILE`), the leak lines and profile, and the HTML report
//! (`TENSORPOOL_REPORT`). Nothing here allocates but the HTML report.

use super::TensorPool;
use crate::kind::TensorKind;
use crate::options::ExitReport;

/// The exit report chosen (`ExitReport as u8`); statistics, not synchronisation.
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
pub(super) static EXIT_REPORT: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// Print the statistics at process exit (registered with `atexit`), allocating nothing: to
/// stderr, or to the file `TENSORPOOL_STATS_FILE` names (`%p` replaced by the pid), so that each
/// process of a family (a shell shim, workers) reports on its own. The table's first line names
/// the program and the pid.
pub(super) extern "C" fn exit_report() {
    use core::fmt::Write;
    let mode = EXIT_REPORT.load(core::sync::atomic::Ordering::Relaxed);
    let stats = TensorPool::new().stats();
    let pid = crate::os::pid();
    let file = env_path(c"TENSORPOOL_STATS_FILE", pid).and_then(|mut p| {
        let fd = crate::os::create_file(p.as_cstr()?);
        if fd.is_none() {
            crate::os::write_stderr(
                b"tensorpool: TENSORPOOL_STATS_FILE cannot be created; reporting to stderr\n",
            );
        }
        fd
    });
    let mut w = FdWriter {
        fd: file.unwrap_or(2),
        buf: crate::text::StackStr::new(),
    };
    let mut comm = [0u8; 64];
    let prog = program_name(&mut comm);
    if mode == ExitReport::Json as u8 {
        let _ = stats.write_json(&mut w);
        let _ = w.write_char('\n');
    } else {
        let _ = write!(
            w,
            "tensorpool: statistics at exit of {prog} (pid {pid})\n{stats}"
        );
        for (k, p) in TensorKind::ALL.iter().zip(&stats.kinds) {
            if p.live_bytes > 0 {
                let _ = writeln!(
                    w,
                    "tensorpool: still live at exit: {} {} ({} bytes)",
                    k.name(),
                    crate::text::Bytes(p.live_bytes),
                    p.live_bytes
                );
            }
        }
        if crate::profile::on() {
            w.flush();
            let text = crate::profile::snapshot().to_text(5);
            crate::os::write_fd(w.fd, text.as_bytes());
        }
    }
    w.flush();
    if let Some(fd) = file {
        crate::os::close(fd);
    }
}

/// The program's name (`/proc/self/comm`, read into `buf` without allocating), or `?`.
pub(super) fn program_name(buf: &mut [u8; 64]) -> &str {
    crate::os::read_small_file(b"/proc/self", b"comm", buf)
        .and_then(|b| core::str::from_utf8(b).ok())
        .map_or("?", str::trim)
}

/// The path a variable names, `%p` replaced by `pid` (`%%`: a `%`); None if unset or too long.
fn env_path(var: &core::ffi::CStr, pid: u32) -> Option<crate::text::StackStr<512>> {
    use core::fmt::Write;
    let raw = crate::os::getenv(var)?;
    let mut path = crate::text::StackStr::<512>::new();
    let mut i = 0;
    while i < raw.len() {
        let r = match (raw[i], raw.get(i + 1)) {
            (b'%', Some(b'p')) => {
                i += 1;
                write!(path, "{pid}")
            }
            (b'%', Some(b'%')) => {
                i += 1;
                path.push_bytes(b"%")
            }
            (c, _) => path.push_bytes(&[c]),
        };
        r.ok()?;
        i += 1;
    }
    Some(path)
}

/// `TENSORPOOL_REPORT=path.html` (`%p`: the pid): the HTML report at exit.
pub(super) extern "C" fn html_report_at_exit() {
    let Some(path) = env_path(c"TENSORPOOL_REPORT", crate::os::pid()) else {
        return;
    };
    if TensorPool::new()
        .write_html(std::ffi::OsStr::new(path.as_str()))
        .is_err()
    {
        crate::os::write_stderr(b"tensorpool: TENSORPOOL_REPORT cannot be written\n");
    }
}

/// Formats into a stack buffer and writes it to a descriptor as it fills.
struct FdWriter {
    fd: i32,
    buf: crate::text::StackStr<2048>,
}

impl FdWriter {
    fn flush(&mut self) {
        crate::os::write_fd(self.fd, self.buf.as_bytes());
        self.buf.clear();
    }
}

impl core::fmt::Write for FdWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        if self.buf.write_str(s).is_ok() {
            return Ok(());
        }
        self.flush();
        if self.buf.write_str(s).is_err() {
            crate::os::write_fd(self.fd, s.as_bytes());
        }
        Ok(())
    }
}
