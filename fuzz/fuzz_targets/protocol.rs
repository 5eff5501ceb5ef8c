//! Untrusted client bytes through the server's decoders: pgwire's frontend message
//! decoder (before and after authentication), SQL splitting and parameter binding, and
//! COPY text/CSV parsing. `cargo test -p tidal-server` runs a stable smoke version of
//! the same entry point (`tidal_server::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tidal_server::fuzzing::fuzz_one(data);
});
