//! Replays every input under services/fuzz/regressions/ through the same
//! checks as the fuzz targets (see ops/fuzz.sh), so an input that once broke
//! something stays fixed.

#![allow(clippy::expect_used, missing_docs)]

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .collect();
    files.sort();
    let inputs: Vec<_> =
        files.into_iter().map(|path| (path.clone(), std::fs::read(&path).expect("read input"))).collect();
    assert!(!inputs.is_empty(), "no regression inputs for {target}");
    inputs
}

#[test]
fn request_regressions() {
    for (path, input) in inputs("request") {
        println!("{}", path.display());
        postback_ingest::request::check_body(&input);
    }
}

#[test]
fn template_regressions() {
    for (path, input) in inputs("template") {
        println!("{}", path.display());
        postback_common::template::check_fuzz_input(&input);
    }
}

#[test]
fn expansion_regressions() {
    for (path, input) in inputs("expansion") {
        println!("{}", path.display());
        postback_common::template::check_expansion_fuzz_input(&input);
    }
}

#[test]
fn wire_regressions() {
    for (path, input) in inputs("wire") {
        println!("{}", path.display());
        postback_common::records::postback::check_fuzz_input(&input);
    }
}
