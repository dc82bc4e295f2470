//! Reading configuration files: the raw YAML forms (`raw`), loading the main
//! file and its includes (`load`), value languages such as sizes and `listen`
//! strings (`units`), and positioned errors (`error`). Interpretation happens
//! in `compile`.

pub mod error;
pub mod load;
pub mod raw;
pub mod units;

pub use error::{ConfigError, ConfigErrors, Origin};
