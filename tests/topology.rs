//! Cache topology: detection on this machine against sysfs read independently, sysfs-like
//! fixtures (the reference i5-10210U, a many-core server, malformed trees), and overrides from
//! the environment in a child process.

use std::path::{Path, PathBuf};
use tensorpool::{CacheTopology, TensorPool, TopologyError, TopologySource};
mod common;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

/// A sysfs-like tree under a fresh temporary directory.
struct Fixture(PathBuf);

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("tp-topo-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Fixture(dir)
    }
    /// One cache index of cpu0: (level, type, size, line, shared cpus).
    fn index(&self, i: usize, level: &str, ty: &str, size: &str, line: &str, shared: &str) {
        let d = self.0.join(format!("cpu0/cache/index{i}"));
        std::fs::create_dir_all(&d).unwrap();
        for (f, v) in [
            ("level", level),
            ("type", ty),
            ("size", size),
            ("coherency_line_size", line),
            ("shared_cpu_list", shared),
        ] {
            std::fs::write(d.join(f), format!("{v}\n")).unwrap();
        }
    }
    fn siblings(&self, list: &str) {
        let d = self.0.join("cpu0/topology");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("thread_siblings_list"), format!("{list}\n")).unwrap();
    }
    fn parse(&self) -> Result<CacheTopology, TopologyError> {
        CacheTopology::from_sysfs(self.0.to_str().unwrap())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn i5_10210u_fixture_gives_the_preset() {
    let f = Fixture::new("i5");
    f.index(0, "1", "Data", "32K", "64", "0,4");
    f.index(1, "1", "Instruction", "32K", "64", "0,4");
    f.index(2, "2", "Unified", "256K", "64", "0,4");
    f.index(3, "3", "Unified", "6144K", "64", "0-7");
    f.siblings("0,4");
    assert_eq!(f.parse(), Ok(CacheTopology::I5_10210U));
}

#[test]
fn many_core_server_fixture() {
    let f = Fixture::new("server");
    f.index(0, "1", "Data", "48K", "64", "0,64");
    f.index(1, "1", "Instruction", "32K", "64", "0,64");
    f.index(2, "2", "Unified", "2048K", "64", "0,64");
    f.index(3, "3", "Unified", "107520K", "64", "0-63,128-191");
    f.siblings("0,64");
    let t = f.parse().unwrap();
    assert_eq!((t.l1d, t.l2, t.l3), (48 << 10, 2 << 20, 105 << 20));
    assert_eq!((t.threads, t.cores), (128, 64));
    assert_eq!(t.l3_share(), (105 << 20) / 64);
}

#[test]
fn malformed_and_missing_files_are_errors() {
    let f = Fixture::new("badsize");
    f.index(0, "1", "Data", "lots", "64", "0");
    assert_eq!(f.parse(), Err(TopologyError::Malformed("size")));

    let f = Fixture::new("nol3");
    f.index(0, "1", "Data", "32K", "64", "0");
    f.index(2, "2", "Unified", "256K", "64", "0");
    assert_eq!(f.parse(), Err(TopologyError::Missing(3)));

    let f = Fixture::new("badline");
    f.index(0, "1", "Data", "32K", "48", "0");
    f.index(2, "2", "Unified", "256K", "48", "0");
    f.index(3, "3", "Unified", "8192K", "48", "0-3");
    assert_eq!(f.parse(), Err(TopologyError::Absurd));

    let f = Fixture::new("badlist");
    f.index(0, "1", "Data", "32K", "64", "0");
    f.index(2, "2", "Unified", "256K", "64", "0");
    f.index(3, "3", "Unified", "8192K", "64", "3-1");
    assert_eq!(f.parse(), Err(TopologyError::Malformed("shared_cpu_list")));

    let f = Fixture::new("badtype");
    f.index(0, "1", "Sideways", "32K", "64", "0");
    assert_eq!(f.parse(), Err(TopologyError::Malformed("type")));

    assert_eq!(
        CacheTopology::from_sysfs("/nonexistent/tensorpool"),
        Err(TopologyError::Unreadable)
    );
}

/// Read this machine's sysfs independently (with std) and compare with what the allocator
/// detected. Skips where there is no sysfs cache information.
#[test]
fn detection_matches_this_machines_sysfs() {
    let base = Path::new("/sys/devices/system/cpu/cpu0/cache");
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let read = |p: &Path, f: &str| {
        std::fs::read_to_string(p.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    let kib = |s: String| s.trim_end_matches('K').parse::<usize>().unwrap() << 10;
    let (mut l1d, mut l2, mut l3, mut shared) = (0, 0, 0, String::new());
    for e in entries.flatten() {
        let p = e.path();
        if !p.join("level").exists() {
            continue;
        }
        match (read(&p, "level").as_str(), read(&p, "type").as_str()) {
            ("1", "Data") => l1d = kib(read(&p, "size")),
            ("2", _) => l2 = kib(read(&p, "size")),
            ("3", _) => {
                l3 = kib(read(&p, "size"));
                shared = read(&p, "shared_cpu_list");
            }
            _ => {}
        }
    }
    let threads: usize = shared
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum();
    let (t, source) = ALLOC.topology();
    if std::env::vars()
        .any(|(k, _)| k.starts_with("TENSORPOOL_L") || k.starts_with("TENSORPOOL_CORES"))
    {
        return;
    }
    assert_eq!(source, TopologySource::Detected);
    assert_eq!((t.l1d, t.l2, t.l3, t.threads), (l1d, l2, l3, threads));
    assert_eq!(
        t,
        CacheTopology::from_sysfs("/sys/devices/system/cpu").unwrap()
    );
}

#[test]
fn child_prints_topology() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        return;
    }
    let (t, source) = ALLOC.topology();
    println!(
        "\nTOPO: {} {} {} {} {} {} {:?}",
        t.line, t.l1d, t.l2, t.l3, t.cores, t.threads, source
    );
}

fn child(env: &[(&str, &str)]) -> (Vec<usize>, String) {
    let (stdout, stderr) = common::run_child_test("child_prints_topology", env);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("TOPO: "))
        .unwrap()
        .to_string();
    let nums = line
        .split(' ')
        .skip(1)
        .take(6)
        .map(|v| v.parse().unwrap())
        .collect();
    (nums, stderr)
}

#[test]
fn overrides_apply_and_absurd_values_fall_back_with_a_warning() {
    let (base, _) = child(&[]);
    let (t, err) = child(&[("TENSORPOOL_L3", "6M"), ("TENSORPOOL_CORES", "4")]);
    assert_eq!((t[3], t[4]), (6 << 20, 4), "{err}");
    assert!(!err.contains("warning"), "{err}");

    // Not a number; a line of 3 bytes; more cores than threads would allow: each ignored with
    // one warning naming the variable, the detected value kept.
    let (t, err) = child(&[
        ("TENSORPOOL_L2", "big"),
        ("TENSORPOOL_LINE", "3"),
        ("TENSORPOOL_CORES", "0"),
    ]);
    assert_eq!(t, base, "{err}");
    for var in [
        "TENSORPOOL_L2=\"big\"",
        "TENSORPOOL_LINE=\"3\"",
        "TENSORPOOL_CORES=\"0\"",
    ] {
        assert_eq!(err.matches(var).count(), 1, "{var}: {err}");
    }
}
