//! Who may read a document ([`Acl`]) and who is searching ([`Viewer`]), and their encoding as
//! index terms. Secure by default: a document with an empty ACL is visible only to an
//! unrestricted (operator) viewer, and an anonymous viewer sees only public documents.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Longest tenant or subject name, in bytes.
pub const MAX_PRINCIPAL_BYTES: usize = 256;

/// A subject within its tenant: subjects of different tenants never match each other.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubjectRef {
    /// Tenant of the subject.
    pub tenant: String,
    /// Subject (user or service) name.
    pub subject: String,
}

/// Who may read a document.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Acl {
    /// Readable by every viewer, anonymous ones included.
    #[serde(default)]
    pub public: bool,
    /// Readable by every subject of these tenants.
    #[serde(default)]
    pub tenants: BTreeSet<String>,
    /// Readable by these subjects.
    #[serde(default)]
    pub subjects: BTreeSet<SubjectRef>,
}

/// The reader of a search, from a verified token (never from request fields).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Viewer {
    /// No identity: sees public documents only.
    #[default]
    Anonymous,
    /// A subject of a tenant: sees public documents, its tenant's and its own.
    Principal(SubjectRef),
    /// An operator (admin capability or a trusted mesh component): sees everything.
    Unrestricted,
}

const PUBLIC_TERM: &str = "public";
/// Separates tenant and subject inside a term; principal names cannot contain it.
const SEPARATOR: char = '\u{1f}';

fn tenant_term(tenant: &str) -> String {
    format!("tenant:{tenant}")
}

fn subject_term(subject: &SubjectRef) -> String {
    format!("subject:{}{SEPARATOR}{}", subject.tenant, subject.subject)
}

impl Acl {
    /// A public ACL.
    pub fn public() -> Self {
        Acl { public: true, ..Acl::default() }
    }

    /// An ACL granting one tenant.
    pub fn tenant(tenant: impl Into<String>) -> Self {
        Acl { tenants: BTreeSet::from([tenant.into()]), ..Acl::default() }
    }

    /// The index terms that grant access to this document.
    pub(crate) fn terms(&self) -> Vec<String> {
        let mut terms = Vec::new();
        if self.public {
            terms.push(PUBLIC_TERM.to_owned());
        }
        terms.extend(self.tenants.iter().map(|t| tenant_term(t)));
        terms.extend(self.subjects.iter().map(subject_term));
        terms
    }

    /// Adds the grant one index term of [`Acl::terms`] stands for: the inverse of `terms`, used
    /// to read ACLs back from the index (they are indexed, not stored). Fails on a term
    /// `terms` never writes.
    pub(crate) fn add_term(&mut self, term: &str) -> Result<(), String> {
        if term == PUBLIC_TERM {
            self.public = true;
        } else if let Some(tenant) = term.strip_prefix("tenant:") {
            self.tenants.insert(tenant.to_owned());
        } else if let Some((tenant, subject)) =
            term.strip_prefix("subject:").and_then(|rest| rest.split_once(SEPARATOR))
        {
            self.subjects.insert(SubjectRef { tenant: tenant.to_owned(), subject: subject.to_owned() });
        } else {
            return Err(format!("acl term {term:?} is not one ragmesh writes"));
        }
        Ok(())
    }

    /// Why this ACL is invalid, if it is.
    pub(crate) fn problem(&self) -> Option<String> {
        let names = self.tenants.iter().chain(self.subjects.iter().flat_map(|s| [&s.tenant, &s.subject]));
        names.filter_map(|name| principal_problem(name)).next()
    }

    /// Whether `viewer` may read a document with this ACL (the reference the index filter
    /// must agree with).
    pub fn allows(&self, viewer: &Viewer) -> bool {
        match viewer {
            Viewer::Unrestricted => true,
            Viewer::Anonymous => self.public,
            Viewer::Principal(who) => self.public || self.tenants.contains(&who.tenant) || self.subjects.contains(who),
        }
    }
}

impl Viewer {
    /// The index terms any one of which grants this viewer access; `None` means no filter.
    pub(crate) fn granting_terms(&self) -> Option<Vec<String>> {
        match self {
            Viewer::Unrestricted => None,
            Viewer::Anonymous => Some(vec![PUBLIC_TERM.to_owned()]),
            Viewer::Principal(who) => Some(vec![PUBLIC_TERM.to_owned(), tenant_term(&who.tenant), subject_term(who)]),
        }
    }
}

/// Who is writing: operators may write anything; a tenant only documents it owns, readable
/// within the tenant (never public, never granting another tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writer {
    /// An operator (admin capability): owns nothing, may overwrite and delete anything.
    Operator,
    /// A subject writing for its tenant.
    Tenant(String),
}

impl Writer {
    /// The owner recorded on documents this writer stores ("" for operators).
    pub(crate) fn owner(&self) -> &str {
        match self {
            Writer::Operator => "",
            Writer::Tenant(tenant) => tenant,
        }
    }

    /// Fills in an empty ACL (the writer's tenant) and checks the writer may grant this ACL.
    pub(crate) fn settle_acl(&self, acl: &mut Acl) -> Result<(), String> {
        let Writer::Tenant(tenant) = self else {
            return Ok(());
        };
        if *acl == Acl::default() {
            acl.tenants.insert(tenant.clone());
            return Ok(());
        }
        if acl.public {
            return Err(format!("tenant {tenant:?} cannot make documents public: ask an operator (admin capability)"));
        }
        if let Some(other) = acl.tenants.iter().find(|t| *t != tenant) {
            return Err(format!("tenant {tenant:?} cannot grant access to tenant {other:?}"));
        }
        if let Some(other) = acl.subjects.iter().find(|s| s.tenant != *tenant) {
            return Err(format!(
                "tenant {tenant:?} cannot grant access to subject {:?} of tenant {:?}",
                other.subject, other.tenant
            ));
        }
        Ok(())
    }

    /// Whether this writer may replace or delete a document owned by `owner`.
    pub(crate) fn may_replace(&self, owner: &str) -> bool {
        match self {
            Writer::Operator => true,
            Writer::Tenant(tenant) => owner == tenant,
        }
    }
}

/// Why a tenant or subject name is invalid, if it is.
pub(crate) fn principal_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("acl names an empty tenant or subject: remove it or give a name".to_owned());
    }
    if name.len() > MAX_PRINCIPAL_BYTES {
        return Some(format!("acl name of {} bytes exceeds the {MAX_PRINCIPAL_BYTES}-byte limit", name.len()));
    }
    if name.chars().any(char::is_control) {
        return Some(format!("acl name {name:?} contains control characters: use printable names"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Tenant names may contain ':' and subject names the separator-free rest, so the
        /// parse must split at the separator, never at a colon.
        #[test]
        fn acl_terms_read_back_to_the_same_acl(
            public in proptest::bool::ANY,
            tenants in proptest::collection::btree_set("[a-z:]{1,6}", 0..3),
            subjects in proptest::collection::btree_set(("[a-z:]{1,6}", "[a-z:]{1,6}"), 0..3),
        ) {
            let subjects = subjects.into_iter().map(|(tenant, subject)| SubjectRef { tenant, subject }).collect();
            let acl = Acl { public, tenants, subjects };
            let mut back = Acl::default();
            for term in acl.terms() {
                back.add_term(&term).expect("a term ragmesh writes");
            }
            proptest::prop_assert_eq!(back, acl);
        }
    }

    #[test]
    fn subject_terms_do_not_collide_across_tenants() {
        let a = SubjectRef { tenant: "ab".into(), subject: "c".into() };
        let b = SubjectRef { tenant: "a".into(), subject: "bc".into() };
        assert_ne!(subject_term(&a), subject_term(&b));
    }

    #[test]
    fn tenants_write_only_within_themselves() {
        let writer = Writer::Tenant("acme".into());
        let mut empty = Acl::default();
        writer.settle_acl(&mut empty).expect("empty becomes the tenant");
        assert_eq!(empty, Acl::tenant("acme"));
        assert!(writer.settle_acl(&mut Acl::public()).expect_err("public").contains("public"));
        assert!(writer.settle_acl(&mut Acl::tenant("globex")).expect_err("other tenant").contains("globex"));
        let mut other_subject = Acl {
            subjects: BTreeSet::from([SubjectRef { tenant: "globex".into(), subject: "x".into() }]),
            ..Acl::default()
        };
        assert!(writer.settle_acl(&mut other_subject).is_err());
        assert!(Writer::Operator.settle_acl(&mut Acl::public()).is_ok());
        assert!(writer.may_replace("acme") && !writer.may_replace("") && !writer.may_replace("globex"));
        assert!(Writer::Operator.may_replace("acme"));
    }

    #[test]
    fn invalid_names_are_named() {
        let acl = Acl { tenants: BTreeSet::from(["bad\u{1f}name".to_owned()]), ..Acl::default() };
        assert!(acl.problem().expect("invalid").contains("control characters"));
        assert!(Acl::tenant("").problem().is_some());
        assert!(Acl::tenant("acme").problem().is_none());
    }
}
