//! confluence-auth-operator: Confluence Cloud OAuth credentials as Kubernetes resources.
//!
//! The path of a token: `crd` (what users ask for) → `validation` (is the spec sound) →
//! `vault` (the encrypted token set at rest).

pub mod api_client;
pub mod claim;
pub mod config;
pub mod consumer;
pub mod context;
pub mod controller;
pub mod crd;
#[cfg(feature = "demo")]
pub mod demo;
pub mod duration;
pub mod events;
pub mod grant;
pub mod http_guard;
pub mod known;
pub mod leader;
pub mod metrics;
pub mod oauth;
pub mod operator;
pub mod refresh;
pub mod selector;
pub mod store;
pub mod telemetry;
pub mod token;
pub mod token_set;
pub mod validation;
pub mod vault;
pub mod webhook;
