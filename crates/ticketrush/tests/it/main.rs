//! Integration tests: the real router over real sockets, and the real binary for crashes.
//! One test binary for the crate, so the suite links once.

mod auth;
mod bench;
mod cli;
mod cluster;
mod contract;
mod crash;
mod dashboard;
mod demo;
mod deploy;
mod embedded_orders;
mod gateway;
mod hostile;
mod journal;
mod openapi;
mod orders;
mod pg;
mod pg_tls;
mod races;
mod redis_cluster;
mod redis_server;
mod redis_tls;
mod support;
