//! Fuzz target for the daemons' TOML config files: any file must resolve or be listed as
//! problems, never panic or overflow the stack, for both the master and the agent.
//!
//! Half the inputs are raw bytes; the other half are structure-aware: the bytes pick TOML tokens
//! and repeat counts (see `common/expand.rs`), so arrays, inline tables, dotted keys and table
//! headers nested far past toml's limit of 80, and long repeated keys and tables, are reached.
//! The config is read on a thread with a 2 MiB stack, less than a main thread's 8 MiB.
//!
//! Run: `cd crates/config/fuzz && cargo +nightly fuzz run toml_config -- -max_total_time=600`

#![no_main]

// The generator the index fuzz targets use (each fuzz crate is its own workspace).
#[path = "../../../index/fuzz/common/expand.rs"]
mod expand;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ragmesh_config::{AgentArgs, MasterArgs};

const SMALL_STACK: usize = 2 * 1024 * 1024;
const MAX_STRUCTURED_BYTES: usize = 256 * 1024;

const TOKENS: &[&str] = &[
    "a = ",
    "[",
    "]",
    "{",
    "}",
    "a = {",
    "a = [",
    ",",
    "1",
    "\"s\"",
    "'s'",
    "\n",
    "[a.",
    "a.",
    "[[a]]\n",
    "[[",
    "]]",
    "true",
    "1979-05-27T07:32:00Z",
    "\"\"\"",
    "'''",
    "#",
    "\\",
    "=",
    " ",
    "é",
    "insecure = true\n",
    "labels = {",
    "name = \"n1\"\n",
    "listen = \"127.0.0.1:0\"\n",
    "operators = [",
    "heartbeat_interval_ms = ",
    "[labels]\n",
    "x = \"y\"\n",
    "99999999999999999999",
    "-0",
    "inf",
    "nan",
];

fn config_path() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fuzz.toml");
        (dir, path)
    });
    path
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text: Vec<u8> =
        if mode % 2 == 0 { rest.to_vec() } else { expand::expand(rest, TOKENS, MAX_STRUCTURED_BYTES).into_bytes() };
    let path = config_path().clone();
    std::fs::write(&path, text).expect("write config");
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(move || {
            let _ = AgentArgs { config: Some(path.clone()), ..AgentArgs::default() }.resolve();
            let _ = MasterArgs { config: Some(path), ..MasterArgs::default() }.resolve();
        })
        .expect("spawn config thread")
        .join()
        .expect("config resolution panicked");
});
