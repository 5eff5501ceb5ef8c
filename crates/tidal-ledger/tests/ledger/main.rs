//! Scenario and property tests of the signal ledger, in one test binary.

// Test helpers outside `#[test]` functions may unwrap too (clippy's allow-unwrap-in-tests
// covers only the functions themselves).
#![allow(clippy::unwrap_used)]

mod memory;
mod model;
mod perf;
mod scenarios;
