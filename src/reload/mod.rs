//! Reloading: a file watcher (and SIGHUP) notices a save; bursts of events
//! are coalesced (a quiet period of [`QUIET`]); the whole configuration is
//! then read, validated and compiled off the runtime's threads and, if it
//! changed, put in force with one atomic store, listen addresses applied by
//! difference. A configuration that fails changes nothing: the error is
//! logged and kept for `/status` and the metrics.
//!
//! The watcher watches directories, not files: the directory of every
//! configuration file, of every include pattern, and of every certificate
//! and key. That is what makes editors' atomic saves (write a temporary file,
//! rename it over), files deleted and created again, new files in conf.d and
//! Kubernetes ConfigMap mounts (a `..data` symlink swapped to a new
//! directory) ordinary events rather than lost ones. An event that names
//! only other plain files in those directories (a log written beside a
//! certificate) is dropped where the watcher sees it: it neither wakes the
//! gateway's runtime nor starts a reload ([`Relevant`]).

mod dirs;

use crate::compile::{load_and_compile, Config};
use crate::config::load::absolute;
use crate::serve::Shared;
use arc_swap::ArcSwap;
use dirs::{Change, DirWatcher};
use std::collections::{BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How long events must stop before a reload starts.
pub const QUIET: Duration = Duration::from_millis(100);
/// A burst that never goes quiet still reloads after this long.
const MAX_COALESCE: Duration = Duration::from_secs(1);

/// What the reloads did, for `/status` and the metrics.
#[derive(Debug, Clone, Default)]
pub struct ReloadState {
    /// Configurations put in force so far (the first one is 1).
    pub generation: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub last: Option<Attempt>,
    /// The files of the configuration in force, with a hash of each.
    pub files: Vec<(PathBuf, String)>,
    /// Reloads that found every file as it was (nothing put in force, nothing counted above).
    pub unchanged: u64,
    fingerprint: u64,
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: SystemTime,
    pub ok: bool,
    /// Every error, one per line, with file:line:column.
    pub error: Option<String>,
    pub cause: String,
}

/// The files a configuration depends on and a hash of their contents.
fn file_hashes(config: &Config) -> Vec<(PathBuf, String)> {
    let mut files: Vec<(PathBuf, String)> = config
        .sources
        .iter()
        .map(|s| (s.path.to_path_buf(), hash_hex(s.text.as_bytes())))
        .collect();
    for path in &config.data_files {
        let bytes = std::fs::read(path).unwrap_or_default();
        files.push((path.clone(), hash_hex(&bytes)));
    }
    files
}

fn hash_hex(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

fn fingerprint(files: &[(PathBuf, String)]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut h);
    h.finish()
}

/// Record the configuration just put in force.
pub fn record_success(shared: &Shared) {
    let generation = shared.current();
    let files = file_hashes(&generation.config);
    let mut state = shared.reload.lock().unwrap_or_else(|e| e.into_inner());
    state.generation += 1;
    shared.metrics.generation.set(state.generation as i64);
    state.fingerprint = fingerprint(&files);
    state.files = files;
    drop(state);
    shared.config_changed.notify_one();
}

/// Load, check and put in force the configuration at `main`; `cause` says
/// what asked (for the log). Returns whether a new configuration is in force.
pub async fn reload(shared: &Arc<Shared>, main: &Path, cause: &str) -> bool {
    let path = main.to_path_buf();
    let loaded = match tokio::task::spawn_blocking(move || load_and_compile(&path)).await {
        Ok(result) => result.map_err(|errors| errors.to_string()),
        Err(e) => Err(format!("the reload task failed: {e}")),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(error) => {
            for line in error.lines() {
                tracing::error!(
                    cause,
                    "reload failed, the running configuration is kept: {line}"
                );
            }
            note_failure(shared, cause, error);
            return false;
        }
    };
    let files = file_hashes(&config);
    let unchanged = shared
        .reload
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .fingerprint
        == fingerprint(&files);
    if unchanged {
        tracing::debug!(cause, "configuration files unchanged; nothing to reload");
        shared
            .reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unchanged += 1;
        return false;
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    if let Err(e) = shared.apply(config) {
        let error = format!("{e}");
        tracing::error!(
            cause,
            "reload failed, the running configuration is kept: {error}"
        );
        note_failure(shared, cause, error);
        return false;
    }
    record_success(shared);
    let generation = note_attempt(shared, cause, None);
    tracing::info!(cause, generation, "configuration reloaded");
    true
}

fn note_failure(shared: &Shared, cause: &str, error: String) {
    note_attempt(shared, cause, Some(error));
}

/// Count a reload that put a configuration in force (no error) or failed,
/// and keep it for `/status`. Returns the generation in force.
fn note_attempt(shared: &Shared, cause: &str, error: Option<String>) -> u64 {
    let ok = error.is_none();
    let result = if ok { "ok" } else { "failed" };
    shared
        .metrics
        .reloads
        .get_or_create(&crate::admin::ResultLabels { result })
        .inc();
    let mut state = shared.reload.lock().unwrap_or_else(|e| e.into_inner());
    match ok {
        true => state.succeeded += 1,
        false => state.failed += 1,
    }
    state.last = Some(Attempt {
        at: SystemTime::now(),
        ok,
        error,
        cause: cause.to_string(),
    });
    state.generation
}

/// The directories to watch for a configuration at `main`.
fn watched_dirs(main: &Path, config: &Config) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    let mut add_parent = |p: &Path| {
        if let Some(d) = p.parent() {
            dirs.insert(d.to_path_buf());
        }
    };
    add_parent(&absolute(main));
    for s in &config.sources {
        add_parent(&s.path);
    }
    for f in &config.data_files {
        add_parent(f);
    }
    for pattern in &config.include_patterns {
        add_parent(pattern);
    }
    dirs
}

/// Which file events are worth a reload: those naming one of the
/// configuration's files (main, included, certificates, keys), a file an
/// include pattern matches (a new one in conf.d), or an entry that is not a
/// plain file (a directory or a symlink: a Kubernetes `..data` swap names
/// neither the files nor their directory), or a watched directory itself
/// (removed, moved). Anything else in a watched directory, a log written
/// beside a certificate say, is not looked at again. An event naming no
/// path (the watcher lost some) counts.
struct Relevant {
    /// The configuration's files and the watched directories.
    paths: HashSet<PathBuf>,
    patterns: Vec<glob::Pattern>,
}

impl Relevant {
    fn of(main: &Path, config: &Config) -> Relevant {
        let mut paths: HashSet<PathBuf> = [tidy(&absolute(main))].into();
        paths.extend(watched_dirs(main, config).iter().map(|d| tidy(d)));
        paths.extend(config.sources.iter().map(|s| tidy(&s.path)));
        paths.extend(config.data_files.iter().map(|f| tidy(f)));
        let patterns = config
            .include_patterns
            .iter()
            .filter_map(|p| glob::Pattern::new(&tidy(p).to_string_lossy()).ok())
            .collect();
        Relevant { paths, patterns }
    }

    fn concerns(&self, change: &Change) -> bool {
        change.paths.is_empty() || change.paths.iter().any(|p| self.names(p))
    }

    fn names(&self, path: &Path) -> bool {
        // As `glob::glob` matches when it loads the includes: `*` stays
        // within a directory.
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..glob::MatchOptions::new()
        };
        let path = tidy(path);
        self.paths.contains(&path)
            || self
                .patterns
                .iter()
                .any(|p| p.matches_path_with(&path, options))
            || std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file())
    }
}

/// `a/./b` and `a//b` as `a/b`: the watcher's paths are the watched
/// directory joined with a name, the configuration's as they were written.
fn tidy(p: &Path) -> PathBuf {
    p.components().collect()
}

/// Watch the configuration's files and reload on change, until the gateway
/// stops (the task is aborted). Fails only when no watcher can be created.
pub fn spawn_watcher(
    shared: Arc<Shared>,
    main: PathBuf,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Change>();
    let relevant = Arc::new(ArcSwap::from_pointee(Relevant::of(
        &main,
        &shared.current().config,
    )));
    let filter = relevant.clone();
    let watcher = DirWatcher::new(move |change| {
        // On the watcher's own thread: what is not worth a reload goes no
        // further. Once the task is gone, the thread ends.
        !filter.load().concerns(&change) || tx.send(change).is_ok()
    })?;
    let mut watches = Watches {
        main,
        relevant,
        watcher,
        watching: BTreeSet::new(),
    };
    watches.follow(&shared);
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                change = rx.recv() => if change.is_none() { return },
                // A configuration put in force, by the reload below or by
                // SIGHUP: watch what it names (a new include, a certificate).
                () = shared.config_changed.notified() => {
                    watches.follow(&shared);
                    continue;
                }
            }
            // Coalesce the burst a save makes (write, rename, chmod, ...).
            let started = Instant::now();
            loop {
                let wait = QUIET.min(MAX_COALESCE.saturating_sub(started.elapsed()));
                if wait.is_zero() {
                    break;
                }
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            reload(&shared, &watches.main, "file change").await;
        }
    }))
}

/// What the watcher looks at, for the configuration in force.
struct Watches {
    main: PathBuf,
    relevant: Arc<ArcSwap<Relevant>>,
    watcher: DirWatcher,
    watching: BTreeSet<PathBuf>,
}

impl Watches {
    fn follow(&mut self, shared: &Shared) {
        let current = shared.current();
        let (main, config) = (&self.main, &current.config);
        self.relevant.store(Arc::new(Relevant::of(main, config)));
        sync_watches(
            &mut self.watcher,
            &mut self.watching,
            watched_dirs(main, config),
        );
    }
}

fn sync_watches(
    watcher: &mut DirWatcher,
    watching: &mut BTreeSet<PathBuf>,
    wanted: BTreeSet<PathBuf>,
) {
    for gone in watching.difference(&wanted) {
        watcher.unwatch(gone);
    }
    for new in wanted.difference(watching) {
        if let Err(e) = watcher.watch(new) {
            tracing::warn!(dir = %new.display(), error = %e, "cannot watch this directory for changes");
        }
    }
    *watching = wanted;
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// What counts, path by path, for a main file including conf.d/*.yaml.
    #[test]
    fn the_events_that_count() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("conf.d")).unwrap();
        std::fs::write(root.join("ginx.yaml"), "include: [conf.d/*.yaml]\n").unwrap();
        std::fs::write(root.join("conf.d/a.yaml"), "servers: []\n").unwrap();
        let main = root.join("ginx.yaml");
        let config = load_and_compile(&main).unwrap();
        let relevant = Relevant::of(&main, &config);
        let counts = |name: &str| relevant.names(&root.join(name));

        std::fs::write(root.join("conf.d/notes.txt"), "x").unwrap();
        std::fs::write(root.join("access.log"), "x").unwrap();
        assert!(counts("ginx.yaml") && counts("conf.d/a.yaml"));
        assert!(
            counts("conf.d/b.yaml"),
            "a file the pattern matches, new or gone"
        );
        assert!(!counts("conf.d/notes.txt") && !counts("access.log"));
        assert!(
            !counts("conf.d/gone.txt"),
            "gone, and never the configuration's"
        );
        assert!(!counts("conf.d/sub/c.yaml"), "`*` stays within conf.d");
        std::os::unix::fs::symlink("conf.d", root.join("..data")).unwrap();
        assert!(counts("..data"), "a symlink (a ConfigMap's swap)");
        std::fs::remove_dir_all(root.join("conf.d")).unwrap();
        assert!(
            counts("conf.d"),
            "a watched directory itself, even once removed"
        );
        assert!(
            relevant.concerns(&Change { paths: Vec::new() }),
            "lost events"
        );
    }
}
