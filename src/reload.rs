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
//! directory) ordinary events rather than lost ones.

use crate::compile::{load_and_compile, Config};
use crate::serve::Shared;
use notify::{RecursiveMode, Watcher};
use std::collections::BTreeSet;
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
    shared
        .metrics
        .reloads
        .get_or_create(&crate::admin::ResultLabels { result: "ok" })
        .inc();
    let mut state = shared.reload.lock().unwrap_or_else(|e| e.into_inner());
    state.succeeded += 1;
    state.last = Some(Attempt {
        at: SystemTime::now(),
        ok: true,
        error: None,
        cause: cause.to_string(),
    });
    tracing::info!(
        cause,
        generation = state.generation,
        "configuration reloaded"
    );
    true
}

fn note_failure(shared: &Shared, cause: &str, error: String) {
    shared
        .metrics
        .reloads
        .get_or_create(&crate::admin::ResultLabels { result: "failed" })
        .inc();
    let mut state = shared.reload.lock().unwrap_or_else(|e| e.into_inner());
    state.failed += 1;
    state.last = Some(Attempt {
        at: SystemTime::now(),
        ok: false,
        error: Some(error),
        cause: cause.to_string(),
    });
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
    for d in &config.include_dirs {
        dirs.insert(d.clone());
    }
    dirs
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Watch the configuration's files and reload on change, until the gateway
/// stops (the task is aborted). Fails only when no watcher can be created.
pub fn spawn_watcher(
    shared: Arc<Shared>,
    main: PathBuf,
) -> notify::Result<tokio::task::JoinHandle<()>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })?;
    let mut watching = BTreeSet::new();
    sync_watches(
        &mut watcher,
        &mut watching,
        watched_dirs(&main, &shared.current().config),
    );
    Ok(tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            match &first {
                // Reading the files (as every reload does) makes access
                // events: reacting to them would reload forever.
                Ok(event) if !is_change(event) => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "file watcher error"),
            }
            // Coalesce the burst a save makes (write, rename, chmod, ...).
            let started = Instant::now();
            loop {
                let wait = QUIET.min(MAX_COALESCE.saturating_sub(started.elapsed()));
                if wait.is_zero() {
                    break;
                }
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(Some(Ok(event))) if !is_change(&event) => continue,
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            reload(&shared, &main, "file change").await;
            // The configuration may name new directories (an include, a certificate).
            let dirs = watched_dirs(&main, &shared.current().config);
            sync_watches(&mut watcher, &mut watching, dirs);
        }
    }))
}

/// Events that change a file or a directory (not opening or reading one).
fn is_change(event: &notify::Event) -> bool {
    !matches!(event.kind, notify::EventKind::Access(_))
}

fn sync_watches(
    watcher: &mut notify::RecommendedWatcher,
    watching: &mut BTreeSet<PathBuf>,
    wanted: BTreeSet<PathBuf>,
) {
    for gone in watching.difference(&wanted) {
        let _ = watcher.unwatch(gone);
    }
    for new in wanted.difference(watching) {
        if let Err(e) = watcher.watch(new, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %new.display(), error = %e, "cannot watch this directory for changes");
        }
    }
    *watching = wanted;
}
