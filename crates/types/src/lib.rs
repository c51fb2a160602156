//! ragmesh-types: small, dependency-light checks shared by the master and the agents.
//!
//! The [`query`] module bounds the *structure* of a query string (nesting depth, clauses, terms)
//! before any recursive parser sees it, so the master can refuse a hostile query without
//! linking tantivy and an agent can refuse it again before tantivy's parser runs. The [`writer`]
//! module bounds the index writer's memory budget.

pub mod query;
pub mod writer;
