//! The Wasm HTTP filter (proxy-wasm plugins): the fields Legate honours
//! (they join the main table's). Code is local (a file or inline bytes);
//! `remote` code, environment variables and capability restrictions are not
//! built.

/// A plugin's `configuration` (and its VM's): the wrappers Envoy hands the
/// plugin unwrapped, and `Struct` as JSON.
pub(super) const EXTENSIONS: &[&str] =
    &["google.protobuf.StringValue", "google.protobuf.BytesValue", "google.protobuf.Struct"];

pub(super) const FIELDS: &[(&str, &[&str])] = &[
    ("envoy.extensions.filters.http.wasm.v3.Wasm", &["config"]),
    (
        "envoy.extensions.wasm.v3.PluginConfig",
        &["name", "root_id", "vm_config", "configuration", "fail_open", "failure_policy"],
    ),
    ("envoy.extensions.wasm.v3.VmConfig", &["vm_id", "runtime", "code", "configuration", "allow_precompiled"]),
    ("envoy.config.core.v3.AsyncDataSource", &["local"]),
];
