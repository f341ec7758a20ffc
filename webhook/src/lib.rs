//! The vaultkeeper admission webhook: injects the agent into pods that opt in with annotations.
//!
//! The decision is pure ([`annotations`] → [`inject`]); [`review`] and [`server`] are thin
//! transport around it, so almost everything is tested without a network.

pub mod agent_config;
pub mod annotations;
pub mod config;
pub mod inject;
pub mod metrics;
pub mod review;
pub mod server;
pub mod tls;
