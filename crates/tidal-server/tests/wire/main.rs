#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Integration tests of `tidal serve`'s PostgreSQL wire protocol, driven by real
//! clients: tokio-postgres (extended protocol, binary results, SCRAM, cancel), psql, and
//! the Python, Node.js and Java drivers (psycopg, node-postgres, pgjdbc).
//!
//! Most tests run a [`tidal_server::Server`] in process on a free port with its own
//! temporary data directory; the durability tests run the real `tidal` binary and kill
//! it.

mod auth;
mod catalog;
mod common;
mod drivers;
mod durability;
mod errors;
mod feedback;
mod limits;
mod metrics;
mod preference;
mod protocol;
mod psql;
mod search;
mod slt;
mod vectors;
