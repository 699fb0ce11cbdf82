//! A node over real sockets, in-process: the contract (docs/API.md), hostile input, and races.
//! One test binary for the crate, so the suite links once.

mod contract;
mod hostile;
mod races;
