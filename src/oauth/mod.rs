//! Talking OAuth: the Atlassian client and the sealed state of a browser flow.

pub mod atlassian;
pub mod flow;
pub mod state;
