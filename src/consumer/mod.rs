//! What applications run next to the operator: the sidecar token proxy ([`proxy`]), the
//! per-namespace [`gateway`] and
//! the `authorize` and `status` commands ([`cli`]).
//!
//! The consumers' path (token Secret → proxy) shares only `crd/` and the token Secret layout
//! (DESIGN.md section 2) with the operator's own path: a proxy never sees a refresh token and
//! never talks to the authorization server.

pub mod cli;
pub mod gateway;
pub mod proxy;
