//! The gateway's integration tests: the tier in-process over real nodes.
//! One test binary for the crate, so the suite links once.

mod tier;
