//! Integration tests: the real router over real sockets, and the real binary for crashes.
//! One test binary for the crate, so the suite links once.

mod auth;
mod bench;
mod buyer_page;
mod cli;
mod cluster;
mod crash;
mod dashboard;
mod demo;
mod deploy;
mod embedded_orders;
mod front_door;
mod journal;
mod nginx;
mod openapi;
mod orders;
mod pg_tls;
mod redis_cluster;
mod redis_tls;
