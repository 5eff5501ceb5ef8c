//! End-to-end scenarios for the embedded database, in one test binary.
//!
//! Crash scenarios re-run this same binary as a child process (an `#[ignore]`d test
//! used as the child's entry point) and kill it with SIGKILL.

// Test code: a failed unwrap is a failed test, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bad_input;
mod child;
mod crash_cohorts;
mod crash_during_ingest;
mod restart_equivalence;
mod sql_logic;
mod sql_reads;
mod sql_restart;
