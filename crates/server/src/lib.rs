//! A ticketrush node over HTTP: routes, the reservation flow with its sold-out gate and batcher,
//! the background tasks, and metrics.
//!
//! [`Application`] is how a node is started (the binary, `demo` and the tests all go through
//! it): built on a listener from a config and a store, it serves until a shutdown future
//! completes. Underneath, [`start`] wires the node and its background tasks and
//! [`http::serve`] runs the router on a listener.

pub mod admission;
pub mod app;
pub mod auth;
pub mod batcher;
pub mod body;
pub mod dashboard;
pub mod error;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod openapi;
pub mod request_id;
pub mod routes;
pub mod stock;
pub mod tasks;

use std::sync::Arc;

use ticketrush_store::Store;

pub use app::{Application, Running};
pub use node::{Node, NodeConfig};
pub use routes::app;
pub use tasks::Background;

/// A running node: its shared state, its router and its background tasks.
pub struct Started {
    pub node: Arc<Node>,
    pub router: request_id::NodeService,
    pub background: Background,
}

/// Builds a node on `store` and starts its background task (the reaper).
pub fn start(config: NodeConfig, store: Arc<dyn Store>) -> Started {
    let node = Node::new(config, store);
    let background = Background::start(node.clone());
    let router = app(node.clone());
    Started {
        node,
        router,
        background,
    }
}

impl Started {
    /// Stops the background tasks. The node holds no tickets, so nothing goes back to the
    /// store: every reservation it acknowledged is already there.
    pub async fn shutdown(self) {
        self.background.shutdown().await;
    }
}
