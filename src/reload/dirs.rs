//! Watching directories for entries that change.
//!
//! On Linux, inotify directly, asked for the events a save makes and no
//! others: an entry written and closed, created, deleted, renamed in or
//! out, its attributes changed (`touch`), the directory itself deleted or
//! moved. notify's inotify backend also asks for every open and every write
//! (`IN_OPEN`, `IN_MODIFY`), with no way not to: a log written beside a
//! certificate then woke its thread for each write, 0.80 CPU-seconds of
//! ginx's 4.81 in a 5 s HTTP/2 benchmark whose load generator logged there.
//! Elsewhere, notify (its events reduced to the paths they name).

use std::path::PathBuf;

/// Entries of the watched directories that may have changed. No path at
/// all: anything may have (the kernel's queue overflowed, or the platform's
/// watcher names paths its own way).
#[derive(Debug)]
pub struct Change {
    pub paths: Vec<PathBuf>,
}

#[cfg(target_os = "linux")]
pub use linux::DirWatcher;
#[cfg(not(target_os = "linux"))]
pub use portable::DirWatcher;

#[cfg(target_os = "linux")]
mod linux {
    use super::Change;
    use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
    use std::collections::HashMap;
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    /// What a save makes (see the module's note on what is left out).
    const SAVES: WatchMask = WatchMask::CLOSE_WRITE
        .union(WatchMask::CREATE)
        .union(WatchMask::DELETE)
        .union(WatchMask::MOVED_FROM)
        .union(WatchMask::MOVED_TO)
        .union(WatchMask::ATTRIB)
        .union(WatchMask::DELETE_SELF)
        .union(WatchMask::MOVE_SELF);

    /// Each watch's directory, under every path it was asked by: a
    /// directory reached through a symlink too is one watch of the kernel's,
    /// and its events name it both ways.
    type Dirs = Arc<Mutex<HashMap<WatchDescriptor, Vec<PathBuf>>>>;

    pub struct DirWatcher {
        watches: Watches,
        dirs: Dirs,
    }

    impl DirWatcher {
        /// Starts a thread that calls `on_change` for each event, until it
        /// returns false.
        pub fn new(on_change: impl Fn(Change) -> bool + Send + 'static) -> io::Result<Self> {
            let mut inotify = Inotify::init()?;
            let watches = inotify.watches();
            let dirs = Dirs::default();
            let named = dirs.clone();
            std::thread::Builder::new()
                .name("ginx-watch".into())
                .spawn(move || {
                    let mut buffer = vec![0u8; 16 << 10];
                    loop {
                        let events = match inotify.read_events_blocking(&mut buffer) {
                            Ok(events) => events,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => {
                                tracing::error!(error = %e, "cannot read file events; reload with SIGHUP");
                                return;
                            }
                        };
                        for event in events {
                            let paths = if event.mask.contains(EventMask::Q_OVERFLOW) {
                                Vec::new()
                            } else if event.mask.contains(EventMask::IGNORED) {
                                continue; // a watch removed
                            } else {
                                let dirs = named.lock().unwrap_or_else(|e| e.into_inner());
                                let Some(paths) = dirs.get(&event.wd) else {
                                    continue;
                                };
                                paths
                                    .iter()
                                    .map(|d| event.name.map_or_else(|| d.clone(), |n| d.join(n)))
                                    .collect()
                            };
                            if !on_change(Change { paths }) {
                                return;
                            }
                        }
                    }
                })?;
            Ok(DirWatcher { watches, dirs })
        }

        pub fn watch(&mut self, dir: &Path) -> io::Result<()> {
            let wd = self.watches.add(dir, SAVES)?;
            let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
            let paths = dirs.entry(wd).or_default();
            if !paths.iter().any(|d| d == dir) {
                paths.push(dir.to_path_buf());
            }
            Ok(())
        }

        pub fn unwatch(&mut self, dir: &Path) {
            let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
            let wd = dirs
                .iter_mut()
                .find(|(_, paths)| paths.iter().any(|d| d == dir))
                .map(|(wd, paths)| {
                    paths.retain(|d| d != dir);
                    (wd.clone(), paths.is_empty())
                });
            // The kernel's watch goes with the last path it was asked by.
            if let Some((wd, true)) = wd {
                dirs.remove(&wd);
                let _ = self.watches.remove(wd);
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod portable {
    use super::Change;
    use notify::{RecursiveMode, Watcher};
    use std::io;
    use std::path::Path;

    pub struct DirWatcher(notify::RecommendedWatcher);

    impl DirWatcher {
        pub fn new(on_change: impl Fn(Change) -> bool + Send + 'static) -> io::Result<Self> {
            let watcher =
                notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                    // Opening or reading a file (as every reload does) is not a change.
                    if let Ok(e) = &event {
                        if matches!(e.kind, notify::EventKind::Access(_)) {
                            return;
                        }
                    }
                    // Any other counts, whatever it names: FSEvents, for one,
                    // names a directory reached through a symlink by its
                    // real path (`/private/var` for `/var`), which the
                    // configuration's paths would not match.
                    on_change(Change { paths: Vec::new() });
                })
                .map_err(io::Error::other)?;
            Ok(DirWatcher(watcher))
        }

        pub fn watch(&mut self, dir: &Path) -> io::Result<()> {
            self.0
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(io::Error::other)
        }

        pub fn unwatch(&mut self, dir: &Path) {
            let _ = self.0.unwatch(dir);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// Writes to a file kept open, and reads, wake nothing; the close of a
    /// written file, a rename in and a removal are seen, each named.
    #[test]
    fn only_what_a_save_makes_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Vec::<PathBuf>::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let (s, c) = (seen.clone(), calls.clone());
        let mut watcher = DirWatcher::new(move |change| {
            c.fetch_add(1, Ordering::SeqCst);
            s.lock().unwrap().extend(change.paths);
            true
        })
        .unwrap();
        std::fs::write(dir.path().join("ginx.yaml"), "servers: []\n").unwrap();
        watcher.watch(dir.path()).unwrap();
        let settle = || std::thread::sleep(Duration::from_millis(150));

        let mut log = std::fs::File::create(dir.path().join("busy.log")).unwrap();
        settle();
        let after_create = calls.load(Ordering::SeqCst);
        assert_eq!(
            after_create,
            1,
            "the log's creation: {:?}",
            seen.lock().unwrap()
        );
        for i in 0..200 {
            writeln!(log, "line {i}").unwrap();
            log.flush().unwrap();
        }
        let _ = std::fs::read_to_string(dir.path().join("ginx.yaml")).unwrap();
        settle();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            after_create,
            "writes and reads woke the watcher"
        );

        drop(log);
        std::fs::write(dir.path().join("tmp"), "servers: []\n").unwrap();
        std::fs::rename(dir.path().join("tmp"), dir.path().join("ginx.yaml")).unwrap();
        std::fs::remove_file(dir.path().join("busy.log")).unwrap();
        let wanted = ["busy.log", "tmp", "ginx.yaml"].map(|n| dir.path().join(n));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !wanted.iter().all(|p| seen.lock().unwrap().contains(p)) {
            assert!(
                Instant::now() < deadline,
                "not all seen: {:?}",
                seen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A directory watched under two paths (one through a symlink) is one
    /// watch of the kernel's: its events name both, and unwatching one path
    /// keeps the other.
    #[test]
    fn a_directory_watched_by_two_paths_is_seen_by_both() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        let link = dir.path().join("link");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let seen = Arc::new(Mutex::new(Vec::<PathBuf>::new()));
        let s = seen.clone();
        let mut watcher = DirWatcher::new(move |change| {
            s.lock().unwrap().extend(change.paths);
            true
        })
        .unwrap();
        watcher.watch(&real).unwrap();
        watcher.watch(&link).unwrap();
        let wait_for = |path: PathBuf| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !seen.lock().unwrap().contains(&path) {
                assert!(
                    Instant::now() < deadline,
                    "{path:?} not in {:?}",
                    seen.lock().unwrap()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        std::fs::write(real.join("ginx.yaml"), "servers: []\n").unwrap();
        wait_for(real.join("ginx.yaml"));
        wait_for(link.join("ginx.yaml"));
        watcher.unwatch(&real);
        std::fs::write(real.join("other.yaml"), "servers: []\n").unwrap();
        wait_for(link.join("other.yaml"));
        assert!(!seen.lock().unwrap().contains(&real.join("other.yaml")));
    }
}
