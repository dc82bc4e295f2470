//! The error collector used while compiling one file's values: it knows the
//! file, turns spans into positions, and parses typed values, recording a
//! positioned error (and returning the default) when one is wrong.

use crate::config::error::{ConfigErrors, Origin};
use crate::config::raw::Text;
use crate::config::units::{parse_duration, parse_size};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct Checker<'a> {
    pub file: Arc<Path>,
    pub errors: &'a mut ConfigErrors,
    /// Things worth saying that do not stop the configuration.
    pub warnings: Vec<crate::config::error::ConfigError>,
    /// Files other than configuration files that the configuration reads
    /// (certificates, keys, CAs): reload watches them too.
    pub files: Vec<PathBuf>,
}

impl<'a> Checker<'a> {
    pub fn new(file: &Arc<Path>, errors: &'a mut ConfigErrors) -> Self {
        Checker {
            file: file.clone(),
            errors,
            warnings: Vec::new(),
            files: Vec::new(),
        }
    }

    pub fn origin(&self, location: &serde_saphyr::Location) -> Origin {
        if location.line() == 0 {
            Origin::file_start(&self.file)
        } else {
            Origin::new(&self.file, location)
        }
    }

    pub fn origin_of(&self, text: &Text) -> Origin {
        self.origin(&text.referenced)
    }

    pub fn warn(&mut self, origin: Origin, message: impl Into<String>) {
        self.warnings
            .push(crate::config::error::ConfigError::new(origin, message));
    }

    pub fn push(&mut self, origin: Origin, message: impl Into<String>) {
        self.errors.push(origin, message);
    }

    /// An error about the value `text`.
    pub fn error(&mut self, text: &Text, message: impl Into<String>) {
        let origin = self.origin_of(text);
        self.errors.push(origin, message);
    }

    pub fn size(&mut self, text: Option<&Text>, key: &str, default: u64) -> u64 {
        let Some(t) = text else { return default };
        parse_size(&t.value).unwrap_or_else(|e| {
            self.error(t, format!("{key}: {e}"));
            default
        })
    }

    pub fn duration(&mut self, text: Option<&Text>, key: &str, default: Duration) -> Duration {
        let Some(t) = text else { return default };
        parse_duration(&t.value).unwrap_or_else(|e| {
            self.error(t, format!("{key}: {e}"));
            default
        })
    }

    /// A whole number within `min..=max`.
    pub fn number(
        &mut self,
        text: Option<&Text>,
        key: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let Some(t) = text else { return default };
        match t.value.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                self.error(
                    t,
                    format!(
                        "{key}: expected a whole number from {min} to {max}, found {:?}",
                        t.value
                    ),
                );
                default
            }
        }
    }

    /// A file the configuration reads (a certificate, a key): resolved
    /// relative to the naming file, and remembered for the reload watcher.
    pub fn data_file(&mut self, text: &str) -> PathBuf {
        let p = self.path(text);
        self.files.push(p.clone());
        p
    }

    /// A path relative to the directory of the file that names it.
    pub fn path(&self, text: &str) -> PathBuf {
        let p = Path::new(text);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file
                .parent()
                .map_or_else(|| p.to_path_buf(), |d| d.join(p))
        }
    }
}
