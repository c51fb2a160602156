//! One value per analysis profile, built on first use and shared: the master's query analyzers
//! (statistics cache) and routing parsers each cost far more to build than a query costs to
//! analyse. Bounded by the profiles this build knows, since only a [`Profile`] is a key.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use ragmesh_index::Profile;

/// The values built so far, by profile name; clones share them.
#[derive(Debug)]
pub(crate) struct PerProfile<T> {
    built: Arc<Mutex<BTreeMap<String, Arc<T>>>>,
}

impl<T> Default for PerProfile<T> {
    fn default() -> Self {
        PerProfile { built: Arc::default() }
    }
}

impl<T> Clone for PerProfile<T> {
    fn clone(&self) -> Self {
        PerProfile { built: Arc::clone(&self.built) }
    }
}

impl<T> PerProfile<T> {
    /// `profile`'s value, built by `build` the first time it is asked for.
    pub(crate) fn get(&self, profile: &Profile, build: impl FnOnce(&Profile) -> T) -> Arc<T> {
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(built.entry(profile.name()).or_insert_with(|| Arc::new(build(profile))))
    }
}
