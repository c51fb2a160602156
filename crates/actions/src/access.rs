//! Who may run an action, decided the same way by the agent (which enforces it) and the master
//! (which refuses early what the agent would refuse, sparing a node call):
//! - the caller's token must carry the capability the action declares (`actions` by default);
//! - an **operator** (a principal holding `admin`) passes every tenant list: tenant lists limit
//!   tenants, and operators run the node;
//! - anyone else needs its tenant listed by the action (or `*`); an empty list means operators
//!   only.

use std::str::FromStr as _;

use ragmesh_auth::{Capability, Principal};

/// Whether `principal` may run an action requiring `capability` and limited to `tenants`; the
/// error says what is missing.
pub fn authorize(principal: &Principal, capability: &str, tenants: &[String]) -> Result<(), String> {
    let Ok(needed) = Capability::from_str(capability) else {
        return Err(format!(
            "the action requires capability {capability:?}, which this agent does not know: fix its [[actions]] config"
        ));
    };
    if !principal.has(needed) {
        return Err(format!("the caller's token lacks capability {capability:?} that the action requires"));
    }
    if principal.has(Capability::Admin) {
        return Ok(());
    }
    if tenants.is_empty() {
        return Err("the action is for operators only (a token with capability \"admin\")".to_owned());
    }
    if principal.tenant.is_empty() {
        return Err(format!("the caller has no tenant; the action is limited to tenants {tenants:?}"));
    }
    let allowed = tenants.iter().any(|allowed| allowed == crate::spec::ANY_TENANT || *allowed == principal.tenant);
    if !allowed {
        return Err(format!(
            "the action is limited to tenants {tenants:?}; the caller's tenant is {:?}",
            principal.tenant
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(tenant: &str, capabilities: &[Capability]) -> Principal {
        Principal {
            subject: "someone".into(),
            tenant: tenant.into(),
            capabilities: capabilities.iter().copied().collect(),
            token_id: "t".into(),
            expires_at: 0,
            issued_at: 0,
        }
    }

    #[test]
    fn who_may_run_what() {
        let listed = vec!["acme".to_owned()];
        let any = vec!["*".to_owned()];
        let acme = principal("acme", &[Capability::Actions]);
        assert!(authorize(&acme, "actions", &listed).is_ok());
        assert!(authorize(&acme, "actions", &any).is_ok());
        let other =
            authorize(&principal("globex", &[Capability::Actions]), "actions", &listed).expect_err("other tenant");
        assert!(other.contains("\"acme\"") && other.contains("\"globex\""), "{other}");
        let no_cap = authorize(&principal("acme", &[Capability::Search]), "actions", &listed).expect_err("capability");
        assert!(no_cap.contains("\"actions\""), "{no_cap}");
        assert!(authorize(&acme, "ingest", &listed).is_err(), "the declared capability is the one checked");
        assert!(authorize(&acme, "actions", &[]).expect_err("operators only").contains("operators only"));
        assert!(authorize(&principal("", &[Capability::Actions]), "actions", &any).is_err(), "no tenant, no operator");
        let operator = principal("", &[Capability::Actions, Capability::Admin]);
        assert!(authorize(&operator, "actions", &[]).is_ok(), "operators pass tenant lists");
        assert!(authorize(&operator, "actions", &listed).is_ok());
        assert!(
            authorize(&principal("", &[Capability::Admin]), "actions", &[]).is_err(),
            "but still need the capability"
        );
        assert!(authorize(&operator, "launch", &any).expect_err("unknown").contains("\"launch\""));
    }
}
