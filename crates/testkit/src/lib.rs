//! What the tests of every crate start, real parts only: a node served in-process on
//! `127.0.0.1:0` with its own data dir ([`TestNode`]) and a small JSON [`Client`]; a real
//! `redis-server` on a free port with its own data dir, alone or as a cluster
//! ([`redis_server`]); a fresh PostgreSQL database per test ([`pg`]); the gateway served
//! in-process ([`gateway`]). Each is stopped and removed when its handle drops.
//!
//! A dev-dependency of `ticketrush-server`, `-store`, `-gateway` and the binary's crate; never
//! of a library's normal build.

#![allow(dead_code)]

pub mod gateway;
pub mod node;
pub mod pg;
pub mod redis_server;

pub use node::{config, wait_until, Answer, Client, TempDir, TestNode, ADMIN_TOKEN};
