//! Legate's data plane: an Envoy-compatible proxy, as a library.
//!
//! `server` turns a bootstrap into running workers (with the admin API and the
//! xDS client on the main thread); `listener` accepts connections and runs their
//! filter chains; `http` is the connection manager, HTTP filters, route tables
//! and router; `upstream` holds clusters, load balancing and connection pools;
//! `tls` builds TLS contexts from config and secrets; `stats` speaks Envoy's
//! stat names. `docs/ARCHITECTURE.md` draws the map.

// The project keeps functions under about 100 lines (threshold in clippy.toml).
#![warn(clippy::too_many_lines)]

pub mod access_log;
pub mod body;
pub mod common;
pub mod http;
pub mod io;
pub mod listener;
pub mod server;
pub mod stats;
pub mod tls;
pub mod trace;
pub mod upstream;
