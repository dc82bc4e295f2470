//! Replays the inputs kept under `fuzz/regressions/<target>/` (findings of
//! the fuzz targets in `fuzz/`, and hand-made cases) and the fuzzers' seeds
//! under `fuzz/seeds/<target>/` through the same property checks the fuzz
//! targets run. No network: the checks stay in memory and in temporary
//! directories.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

fn inputs(kind: &str, target: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no input in {}", dir.display());
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    let mut files = inputs("regressions", target);
    files.extend(inputs("seeds", target));
    for file in files {
        let data = std::fs::read(&file).expect("read input");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", file.display());
    }
}

#[test]
fn config_load() {
    replay("config_load", checks::config_load);
}

#[test]
fn path_normalize() {
    replay("path_normalize", checks::path_normalize);
}

#[test]
fn location_match() {
    replay("location_match", checks::location_match);
}

#[test]
fn upstream_request() {
    replay("upstream_request", checks::upstream_request);
}
