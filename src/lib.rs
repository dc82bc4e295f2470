//! ginx: an nginx-like HTTP gateway driven by YAML.
//!
//! # Layout
//! A request passes through these modules, top to bottom:
//! - [`config`]: the files as written: loading `ginx.yaml` and its includes
//!   into raw serde structs, with every error at file:line:column.
//! - [`compile`]: raw structs → one immutable [`compile::Config`]: per listen
//!   address a host table, per server a location table, templates parsed once.
//! - [`tls`]: certificates, SNI and the rustls configurations.
//! - [`serve`]: listening sockets, HTTP/1.1 and HTTP/2 connections with the
//!   client limits, and the per-request handler.
//! - [`route`]: pure routing (server, location, rewrites, action) shared by
//!   serving and `ginx explain`.
//! - [`balance`]: the six balancers over peers whose state outlives a reload.
//! - [`forward`]: proxying to the chosen peer: pooled connections, header
//!   rules, streaming bodies, retries, timeouts.
//! - [`clock`]: coarse time for deadlines and stamps counted in seconds.
//! - [`health`]: active health checks whose verdicts the balancers respect.
//! - [`access_log`]: one line per request, written off the request path.
//! - [`reload`]: the file watcher, coalescing, and the atomic swap.
//! - [`admin`]: `/status` and `/metrics` on the admin listener.
//! - [`explain`]: the `ginx explain` report.
//!
//! Forwarding to upstreams, reload, TLS and the admin endpoint are added
//! beside these, one module each.

pub mod access_log;
pub mod admin;
pub mod alloc;
pub mod balance;
pub mod clock;
pub mod compile;
pub mod config;
pub mod explain;
pub mod forward;
pub mod health;
pub mod reload;
pub mod route;
pub mod serve;
pub mod tls;
