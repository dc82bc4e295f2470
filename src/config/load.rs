//! Reading the files: the main file, then every `include` pattern (relative to
//! the including file, matches sorted), each parsed into its raw form. Errors of
//! every file are collected; one bad file does not hide another's errors.

use super::error::{closest, ConfigErrors, Origin};
use super::raw::{IncludedFile, MainFile};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One file that took part in a configuration, with its text as read.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub path: Arc<Path>,
    pub text: String,
}

/// The configuration as read from disk, before any interpretation.
#[derive(Debug)]
pub struct Loaded {
    pub main_path: Arc<Path>,
    pub main: MainFile,
    /// Included files in load order.
    pub includes: Vec<(Arc<Path>, IncludedFile)>,
    /// Every file read, main first, for `ginx -T` and for status.
    pub sources: Vec<SourceFile>,
    /// The include patterns with a wildcard, whole: a watcher watches their
    /// directories, and a new file there that one matches counts.
    pub include_patterns: Vec<PathBuf>,
}

/// Read and parse the main file and everything it includes.
pub fn load(main_path: &Path) -> Result<Loaded, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let main_path: Arc<Path> = Arc::from(absolute(main_path).as_path());
    let mut sources = Vec::new();
    let main: MainFile =
        read_and_parse(&main_path, &mut sources, &mut errors, "").unwrap_or_default();

    let base = main_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut includes = Vec::new();
    let mut include_patterns = Vec::new();
    let mut seen: Vec<PathBuf> = vec![main_path.to_path_buf()];
    for pattern in main.include.iter().flat_map(|l| l.0.iter()) {
        let origin = Origin::new(&main_path, &pattern.referenced);
        let full = base.join(&pattern.value);
        let files = match expand_include(&full) {
            Ok(files) => files,
            Err(why) => {
                errors.push(origin, format!("include {:?}: {why}", pattern.value));
                continue;
            }
        };
        if has_glob_chars(&pattern.value) {
            include_patterns.push(full.clone());
        }
        for file in files {
            if seen.contains(&file) {
                continue; // matched by an earlier pattern too: loaded once
            }
            seen.push(file.clone());
            let path: Arc<Path> = Arc::from(file.as_path());
            let hint = "; global settings belong in the main file, an included file holds upstreams and servers only";
            if let Some(parsed) =
                read_and_parse::<IncludedFile>(&path, &mut sources, &mut errors, hint)
            {
                includes.push((path, parsed));
            }
        }
    }
    errors.into_result(Loaded {
        main_path,
        main,
        includes,
        sources,
        include_patterns,
    })
}

/// `path` from the current directory when it is relative.
pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

fn has_glob_chars(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// The files an include pattern names, sorted. A glob that matches nothing is
/// fine (an empty conf.d is normal); a literal path must exist.
fn expand_include(full: &Path) -> Result<Vec<PathBuf>, String> {
    let text = full.to_string_lossy();
    if !has_glob_chars(&text) {
        return if full.is_file() {
            Ok(vec![full.to_path_buf()])
        } else {
            Err(format!("no such file {}", full.display()))
        };
    }
    let paths = glob::glob(&text).map_err(|e| format!("bad pattern: {e}"))?;
    let mut files: Vec<PathBuf> = paths
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn read_and_parse<T: DeserializeOwned>(
    path: &Arc<Path>,
    sources: &mut Vec<SourceFile>,
    errors: &mut ConfigErrors,
    unknown_key_hint: &str,
) -> Option<T> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            errors.push(
                Origin::file_start(path),
                format!("cannot read the file: {e}"),
            );
            return None;
        }
    };
    let parsed = parse_yaml::<T>(path, &text, unknown_key_hint);
    sources.push(SourceFile {
        path: path.clone(),
        text,
    });
    match parsed {
        Ok(v) => Some(v),
        Err(e) => {
            errors.0.push(e);
            None
        }
    }
}

/// Parse one YAML document into `T`, turning serde-saphyr's error into a
/// positioned message in ginx's words.
pub fn parse_yaml<T: DeserializeOwned>(
    path: &Arc<Path>,
    text: &str,
    unknown_key_hint: &str,
) -> Result<T, super::error::ConfigError> {
    let options = serde_saphyr::options! {
        with_snippet: false,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
    };
    serde_saphyr::from_str_with_options::<T>(text, options).map_err(|e| {
        let origin = match e.location() {
            Some(l) if l.line() > 0 => Origin::new(path, &l),
            _ => Origin::file_start(path),
        };
        super::error::ConfigError::new(
            origin,
            describe_yaml_error(&e.to_string(), unknown_key_hint),
        )
    })
}

/// serde-saphyr says `unknown field `x`, expected one of a, b at line 3, column 5`;
/// ginx says `unknown key "x" (did you mean "b"?); expected one of: a, b`.
fn describe_yaml_error(message: &str, unknown_key_hint: &str) -> String {
    let message = strip_position(message);
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((key, expected)) = rest.split_once('`') {
            let expected = expected
                .trim_start_matches(", ")
                .trim_start_matches("expected one of ")
                .trim_start_matches("expected ")
                .trim_start_matches("there are no fields");
            let known: Vec<&str> = expected
                .split(", ")
                .map(|k| k.trim_matches('`'))
                .filter(|k| !k.is_empty())
                .collect();
            let hint = match closest(key, known.iter().copied()) {
                Some(k) => format!(" (did you mean {k:?}?)"),
                None => String::new(),
            };
            let global = [
                "worker_threads",
                "error_log",
                "access_log",
                "server_tokens",
                "shutdown_timeout",
                "admin",
                "http",
                "include",
            ];
            let extra = if global.contains(&key) {
                unknown_key_hint
            } else {
                ""
            };
            return format!(
                "unknown key {key:?}{hint}; expected one of: {}{extra}",
                known.join(", ")
            );
        }
    }
    match message {
        "expected sequence start" => return "expected a list here, e.g. [a, b] or lines starting with \"- \"".to_string(),
        "expected mapping start" => return "expected a mapping here (key: value lines)".to_string(),
        "expected string scalar" => return "expected a single value here, not a list or a mapping".to_string(),
        "mapping values are not allowed in this context" => {
            return "\": \" inside an unquoted value starts a new key; quote the whole value, e.g. return: '200 \"a: b\"'".to_string()
        }
        _ => {}
    }
    if let Some(rest) = message.strip_prefix("duplicate field `") {
        let key = rest.split('`').next().unwrap_or(rest);
        return format!("key {key:?} is given twice in the same mapping");
    }
    message.to_string()
}

fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(", column ") => &message[..i],
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_message_suggests_the_closest() {
        let m = describe_yaml_error(
            "unknown field `wieght`, expected one of addr, weight, max_fails at line 4, column 5",
            "",
        );
        assert_eq!(
            m,
            "unknown key \"wieght\" (did you mean \"weight\"?); expected one of: addr, weight, max_fails"
        );
    }

    #[test]
    fn position_suffix_is_removed() {
        assert_eq!(
            strip_position("invalid u32 at line 1, column 10"),
            "invalid u32"
        );
        assert_eq!(strip_position("nothing here"), "nothing here");
    }
}
