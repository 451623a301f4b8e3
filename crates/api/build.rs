//! Builds a protobuf descriptor set from the `.proto` files that ship inside the
//! `envoy-types` crate, so that the run-time loader (prost-reflect) and the typed
//! structs (envoy-types) come from exactly the same API definitions: transcoding
//! through a struct that does not know a field would silently drop it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let proto_root = envoy_types_proto_dir();
    println!("cargo:rerun-if-changed=build.rs");

    let includes = [
        "data-plane-api",
        "xds",
        "protoc-gen-validate",
        "googleapis",
        "cel-spec/proto",
        "opentelemetry-proto",
        "client_model",
        "ratelimit/api",
    ];
    let mut files = Vec::new();
    for dir in ["data-plane-api/envoy", "xds/xds", "xds/udpa"] {
        collect_protos(&proto_root.join(dir), &mut files);
    }
    files.sort();
    // Legate's own extension configs (`legate.*`), in the same descriptor set.
    let own = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR")).join("proto");
    println!("cargo:rerun-if-changed={}", own.display());
    collect_protos(&own.join("legate"), &mut files);

    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("envoy_descriptor.bin");
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    let wkt = protoc_bin_vendored::include_path().expect("vendored protoc include path");
    let mut cmd = Command::new(protoc);
    cmd.arg("--include_imports")
        .arg("--include_source_info=false")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg(format!("-I{}", wkt.display()));
    for inc in includes {
        cmd.arg(format!("-I{}", proto_root.join(inc).display()));
    }
    cmd.arg(format!("-I{}", own.display()));
    for f in &files {
        cmd.arg(f);
    }
    let status = cmd.status().expect("run protoc");
    assert!(status.success(), "protoc failed on envoy-types' protos");
    // Kept compressed in the binary: the pool decompresses it only to decode.
    let raw = std::fs::read(&out).expect("read the descriptor set");
    let packed = zstd::stream::encode_all(raw.as_slice(), 19).expect("compress the descriptor set");
    std::fs::write(out.with_extension("bin.zst"), packed).expect("write the compressed descriptor set");
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_protos(&p, out);
        } else if p.extension().is_some_and(|x| x == "proto") {
            out.push(p);
        }
    }
}

/// Finds `proto/` inside the envoy-types package that this build resolved, using
/// `cargo metadata` (so the version is the one in Cargo.lock, vendored or not).
fn envoy_types_proto_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--filter-platform"])
        .arg(std::env::var("TARGET").expect("TARGET"))
        .arg("--manifest-path")
        .arg(Path::new(&manifest_dir).join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(output.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata json");
    let packages = meta["packages"].as_array().expect("packages");
    let pkg = packages.iter().find(|p| p["name"] == "envoy-types").expect("envoy-types in the dependency graph");
    let manifest = PathBuf::from(pkg["manifest_path"].as_str().expect("manifest_path"));
    let dir = manifest.parent().expect("package dir").join("proto");
    println!("cargo:rerun-if-changed={}", dir.display());
    dir
}
