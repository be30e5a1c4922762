//! berthd, the berth CRI server: RuntimeService and ImageService over a unix socket.

pub mod config;
pub mod error;
pub mod id;
pub mod image;
pub mod logging;
pub mod metrics;
pub mod network;
pub mod runtime;
pub mod server;
pub mod store;
pub mod streaming;
