//! The store's integration tests: its Redis scripts against a real `redis-server`.
//! One test binary for the crate, so the suite links once.

mod scripts;
