//! The vaultkeeper admission webhook: injects the agent into pods that opt in with annotations.
//!
//! The decision is pure ([`annotations`] → [`inject`]); [`review`] and [`server`] are thin
//! transport around it, so almost everything is tested without a network. What the agent accepts
//! is not decided here: the agent's configuration type and its validation live in
//! `agent_contract`, shared with the agent, and [`inject`] runs that validation before admitting.

pub mod annotations;
pub mod config;
pub mod inject;
pub mod metrics;
pub mod review;
pub mod server;
pub mod tls;
