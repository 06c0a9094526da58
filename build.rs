//! Names the source the module is built from, for the line it logs at VM start: a digest of
//! src/, Cargo.toml and Cargo.lock. Not the git commit: the WasmPlugins pin the module's image
//! by digest in the same commit, which a module carrying its commit could never match.

use std::fs;
use std::path::Path;

fn main() {
    let mut files = vec!["Cargo.toml".into(), "Cargo.lock".into()];
    collect(Path::new("src"), &mut files);
    files.sort();
    // FNV-1a over each path and content.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
        let content = fs::read(file).unwrap_or_default();
        for b in file.as_bytes().iter().chain(&content) {
            hash = (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rustc-env=MATOMO_PROXY_WASM_SOURCE={hash:016x}");
}

fn collect(dir: &Path, files: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path.to_string_lossy().into_owned());
        }
    }
}
