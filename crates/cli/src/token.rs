//! `ragmeshctl token ...`: access and refresh tokens for clients, join tokens for agents, and
//! the master's signing keys, through the master's `AuthService`.
//!
//! Secrets (access, refresh and join tokens) are printed to stdout and nowhere else; the
//! rendering is a pure function of the master's answer and the current time, unit-tested below.

use std::fmt::Write as _;
use std::time::SystemTime;

use ragmesh_proto::v1;
use serde_json::{Value, json};

use crate::args::{TokenCommand, TokenIssueArgs, TokenJoinArgs, TokenRevokeArgs};
use crate::client::Master;
use crate::demo::quote_str;
use crate::error::usage;
use crate::render::{self, Column, Table, clean};

/// Runs one `token` subcommand against the master and prints its result.
pub async fn run(master: &Master, command: &TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Issue(args) => {
            let response = master.issue_token(issue_request(args)?).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&issue_json(&response))?);
            } else {
                print!("{}", issue_text(&response, SystemTime::now()));
            }
        }
        TokenCommand::Refresh(args) => {
            let presented = args.refresh_token.expose().trim();
            if presented.is_empty() {
                return Err(usage(
                    "the refresh token is empty: pass the refresh_token of the last `token issue` or \
                     `token refresh` (or set RAGMESH_REFRESH_TOKEN)",
                ));
            }
            let request = v1::RefreshTokenRequest { refresh_token: presented.to_owned() };
            let response = master.refresh_token(request).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&refresh_json(&response))?);
            } else {
                print!("{}", refresh_text(&response, SystemTime::now()));
            }
        }
        TokenCommand::Revoke(args) => {
            let request = revoke_request(args)?;
            let response = master.revoke_tokens(request).await?;
            print!("{}", revoked_text(args, response.revoked));
        }
        TokenCommand::Join(args) => join(master, args).await?,
        TokenCommand::RotateKey => {
            let kid = master.rotate_signing_key().await?;
            print!("{}", rotated_text(&kid));
        }
        TokenCommand::Keys(args) => {
            let keys = master.verification_keys().await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&keys_json(&keys))?);
            } else {
                print!("{}", keys_table(&keys, SystemTime::now()));
            }
        }
    }
    Ok(())
}

/// `token join`: create, `--list` or `--revoke ID`.
async fn join(master: &Master, args: &TokenJoinArgs) -> anyhow::Result<()> {
    if args.list {
        let tokens = master.list_join_tokens().await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&join_list_json(&tokens))?);
        } else {
            print!("{}", join_table(&tokens, SystemTime::now()));
        }
        return Ok(());
    }
    if let Some(id) = &args.revoke {
        if id.trim().is_empty() {
            return Err(usage("--revoke needs the id of a join token (see `ragmeshctl token join --list`)"));
        }
        master.revoke_join_token(id.trim()).await?;
        println!(
            "revoked join token {}: no agent can join with it any more (nodes it admitted stay; remove \
             one with `ragmeshctl nodes evict NAME`)",
            clean(id)
        );
        return Ok(());
    }
    let request = v1::CreateJoinTokenRequest { ttl_seconds: args.ttl, uses: args.uses, note: args.note.clone() };
    let response = master.create_join_token(request).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&join_json(&response))?);
    } else {
        print!("{}", join_text(&response, &args.note, SystemTime::now()));
    }
    Ok(())
}

/// The `IssueToken` request for `args`; empty names are usage errors.
pub fn issue_request(args: &TokenIssueArgs) -> anyhow::Result<v1::IssueTokenRequest> {
    for (flag, value) in [("--subject", &args.subject), ("--tenant", &args.tenant)] {
        if value.trim().is_empty() {
            return Err(usage(format!(
                "{flag} is empty: name who the token is for, e.g. --subject alice --tenant acme"
            )));
        }
    }
    let mut capabilities: Vec<String> = Vec::new();
    for cap in &args.caps {
        let name = cap.name().to_owned();
        if !capabilities.contains(&name) {
            capabilities.push(name);
        }
    }
    Ok(v1::IssueTokenRequest {
        subject: args.subject.clone(),
        tenant: args.tenant.clone(),
        capabilities,
        ttl_seconds: args.ttl.unwrap_or(0),
    })
}

/// The `RevokeTokens` request for `args` (clap guarantees exactly one target).
pub fn revoke_request(args: &TokenRevokeArgs) -> anyhow::Result<v1::RevokeTokensRequest> {
    use v1::revoke_tokens_request::Target;
    let target = match (&args.family, &args.subject) {
        (Some(family), None) if !family.trim().is_empty() => Target::Family(family.trim().to_owned()),
        (None, Some(subject)) if !subject.trim().is_empty() => Target::Subject(subject.trim().to_owned()),
        _ => return Err(usage("name one non-empty target: --family F or --subject S")),
    };
    Ok(v1::RevokeTokensRequest { target: Some(target) })
}

/// Aligned `key: value` lines.
fn fields(rows: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (key, value) in rows {
        let _ = writeln!(out, "{:<15}{value}", format!("{key}:"));
    }
    out
}

/// The line that puts tokens into the environment ragmeshctl reads them from.
fn export_line(access_token: &str, refresh_token: &str) -> String {
    format!("export RAGMESH_TOKEN={} RAGMESH_REFRESH_TOKEN={}", quote_str(access_token), quote_str(refresh_token))
}

/// `token issue` for people: the tokens, their expiry and ids, and how to use them.
pub fn issue_text(response: &v1::IssueTokenResponse, now: SystemTime) -> String {
    let mut rows = vec![
        ("access token", response.access_token.clone()),
        ("expires", render::timestamp(response.expires_at.as_ref(), now)),
        ("token id", clean(&response.token_id)),
        ("refresh token", response.refresh_token.clone()),
    ];
    if !response.family.is_empty() {
        rows.push(("family", clean(&response.family)));
    }
    let mut out = fields(&rows);
    let _ = writeln!(out);
    let _ = writeln!(out, "use them (--token also works; `ragmeshctl token refresh` reads RAGMESH_REFRESH_TOKEN):");
    let _ = writeln!(out, "  {}", export_line(&response.access_token, &response.refresh_token));
    out
}

/// `token issue --json`.
pub fn issue_json(response: &v1::IssueTokenResponse) -> Value {
    json!({
        "access_token": response.access_token,
        "expires_at": render::timestamp_json(response.expires_at.as_ref()),
        "token_id": response.token_id,
        "refresh_token": response.refresh_token,
        "family": (!response.family.is_empty()).then(|| response.family.clone()),
    })
}

/// `token refresh` for people: the new tokens and a reminder that the old one is used up.
pub fn refresh_text(response: &v1::RefreshTokenResponse, now: SystemTime) -> String {
    let mut out = fields(&[
        ("access token", response.access_token.clone()),
        ("expires", render::timestamp(response.expires_at.as_ref(), now)),
        ("refresh token", response.refresh_token.clone()),
    ]);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "the refresh token you presented is now used up: presenting it again revokes this whole \
         token family"
    );
    let _ = writeln!(out, "use the new ones:");
    let _ = writeln!(out, "  {}", export_line(&response.access_token, &response.refresh_token));
    out
}

/// `token refresh --json`.
pub fn refresh_json(response: &v1::RefreshTokenResponse) -> Value {
    json!({
        "access_token": response.access_token,
        "expires_at": render::timestamp_json(response.expires_at.as_ref()),
        "refresh_token": response.refresh_token,
    })
}

/// What `token revoke` did.
pub fn revoked_text(args: &TokenRevokeArgs, revoked: u32) -> String {
    let target = match (&args.family, &args.subject) {
        (Some(family), _) => format!("family {}", clean(family)),
        (None, Some(subject)) => format!("subject {}", clean(subject)),
        (None, None) => "nothing".to_owned(),
    };
    if revoked == 0 {
        return format!(
            "revoked 0 token families: {target} has no live family (already revoked, expired or unknown)\n"
        );
    }
    let (families, its) = if revoked == 1 {
        ("1 token family".to_owned(), "its")
    } else {
        (format!("{revoked} token families"), "their")
    };
    let access = if args.subject.is_some() {
        "and every access token issued to the subject so far is refused"
    } else {
        "access tokens already issued stay valid until they expire"
    };
    format!("revoked {families} of {target}: {its} refresh tokens no longer refresh; {access}\n")
}

/// `token join` for people: the token (shown once), its id, expiry and how an agent uses it.
pub fn join_text(response: &v1::CreateJoinTokenResponse, note: &str, now: SystemTime) -> String {
    let admits = if response.uses == 1 { "1 agent".to_owned() } else { format!("{} agents", response.uses) };
    let mut rows = vec![
        ("join token", response.token.clone()),
        ("id", clean(&response.id)),
        ("expires", render::timestamp(response.expires_at.as_ref(), now)),
        ("admits", admits),
    ];
    if !note.is_empty() {
        rows.push(("note", clean(note)));
    }
    let mut out = fields(&rows);
    let token = quote_str(&response.token);
    let _ = writeln!(out);
    let _ = writeln!(out, "the token is shown only this once (the master keeps only its hash); give it to the agent:");
    let _ = writeln!(out, "  ragmesh-agent --join-token {token} ...");
    let _ = writeln!(out, "  or in its environment, out of sight of `ps`: RAGMESH_JOIN_TOKEN={token}");
    let _ = writeln!(
        out,
        "see it with `ragmeshctl token join --list`, withdraw it with `ragmeshctl token join --revoke {}`",
        clean(&response.id)
    );
    out
}

/// `token join --json`.
pub fn join_json(response: &v1::CreateJoinTokenResponse) -> Value {
    json!({
        "token": response.token,
        "id": response.id,
        "expires_at": render::timestamp_json(response.expires_at.as_ref()),
        "uses": response.uses,
    })
}

/// When a join token expires, relative to `now`: `in 59m` or `expired 3m ago`.
fn expiry(time: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    let Some(time) = time.and_then(|t| SystemTime::try_from(*t).ok()) else {
        return "unknown".to_owned();
    };
    match time.duration_since(now) {
        Ok(ahead) => format!("in {}", render::span(ahead)),
        Err(behind) => format!("expired {}", render::age(behind.duration())),
    }
}

/// The `token join --list` table: ID EXPIRES USES-LEFT USED-BY NOTE.
pub fn join_table(tokens: &[v1::JoinTokenInfo], now: SystemTime) -> String {
    if tokens.is_empty() {
        return "no join tokens: create one with `ragmeshctl token join`\n".to_owned();
    }
    let mut table = Table::new(vec![
        Column::left("ID"),
        Column::left("EXPIRES"),
        Column::right("USES-LEFT"),
        Column::left("USED-BY").max_width(40),
        Column::left("NOTE").max_width(60),
    ]);
    for token in tokens {
        let used_by: Vec<String> = token.used_by.iter().map(|name| clean(name)).collect();
        let used_by = if used_by.is_empty() { "-".to_owned() } else { used_by.join(",") };
        table.push(vec![
            clean(&token.id),
            expiry(token.expires_at.as_ref(), now),
            token.uses_left.to_string(),
            used_by,
            clean(&token.note),
        ]);
    }
    table.drop_empty_columns();
    table.render()
}

/// `token join --list --json`.
pub fn join_list_json(tokens: &[v1::JoinTokenInfo]) -> Value {
    let list = tokens
        .iter()
        .map(|token| {
            json!({
                "id": token.id,
                "expires_at": render::timestamp_json(token.expires_at.as_ref()),
                "uses_left": token.uses_left,
                "used_by": token.used_by,
                "note": token.note,
            })
        })
        .collect();
    Value::Array(list)
}

/// What `token rotate-key` did.
pub fn rotated_text(kid: &str) -> String {
    format!(
        "signing with new key {}: tokens signed with the previous key keep verifying until they \
         expire (see `ragmeshctl token keys`)\n",
        clean(kid)
    )
}

/// The `token keys` table: KID ALG VERIFY-UNTIL (`current` for the signing key).
pub fn keys_table(keys: &[v1::VerificationKey], now: SystemTime) -> String {
    if keys.is_empty() {
        return "the master published no verification keys: look at its log\n".to_owned();
    }
    let mut table = Table::new(vec![Column::left("KID"), Column::left("ALG"), Column::left("VERIFY-UNTIL")]);
    for key in keys {
        let until = if key.verify_until == 0 {
            "current (signing)".to_owned()
        } else {
            let seconds = i64::try_from(key.verify_until).unwrap_or(i64::MAX);
            let time = prost_types::Timestamp { seconds, nanos: 0 };
            render::timestamp(Some(&time), now)
        };
        table.push(vec![clean(&key.kid), clean(&key.algorithm), until]);
    }
    table.render()
}

/// `token keys --json`: the raw public key as hex.
pub fn keys_json(keys: &[v1::VerificationKey]) -> Value {
    let list = keys
        .iter()
        .map(|key| {
            let hex: String = key.public_key.iter().map(|b| format!("{b:02x}")).collect();
            json!({
                "kid": key.kid,
                "algorithm": key.algorithm,
                "public_key_hex": hex,
                "verify_until": (key.verify_until != 0).then_some(key.verify_until),
            })
        })
        .collect();
    Value::Array(list)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(seconds: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos: 0 }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    fn issued(family: &str) -> v1::IssueTokenResponse {
        v1::IssueTokenResponse {
            access_token: "eyJhbGciOiJFZERTQSJ9.e30.c2ln".to_owned(),
            expires_at: Some(at(1_000_900)),
            refresh_token: "rmr_abc-DEF_123".to_owned(),
            token_id: "jti-1".to_owned(),
            family: family.to_owned(),
        }
    }

    #[test]
    fn issue_text_shows_tokens_expiry_and_an_export_line() {
        assert_eq!(
            issue_text(&issued(""), now()),
            "access token:  eyJhbGciOiJFZERTQSJ9.e30.c2ln\n\
             expires:       1970-01-12T14:01:40Z (in 15m)\n\
             token id:      jti-1\n\
             refresh token: rmr_abc-DEF_123\n\
             \n\
             use them (--token also works; `ragmeshctl token refresh` reads RAGMESH_REFRESH_TOKEN):\n  \
             export RAGMESH_TOKEN=eyJhbGciOiJFZERTQSJ9.e30.c2ln RAGMESH_REFRESH_TOKEN=rmr_abc-DEF_123\n"
        );
        assert!(issue_text(&issued("fam-7"), now()).contains("family:        fam-7\n"));
    }

    #[test]
    fn issue_json_has_every_field_and_null_for_a_missing_family() {
        let value = issue_json(&issued(""));
        assert_eq!(value["access_token"], "eyJhbGciOiJFZERTQSJ9.e30.c2ln");
        assert_eq!(value["expires_at"], "1970-01-12T14:01:40Z");
        assert_eq!(value["token_id"], "jti-1");
        assert_eq!(value["refresh_token"], "rmr_abc-DEF_123");
        assert!(value["family"].is_null());
        assert_eq!(issue_json(&issued("f"))["family"], "f");
    }

    #[test]
    fn export_line_quotes_unusual_tokens() {
        assert_eq!(export_line("a b", "c"), "export RAGMESH_TOKEN='a b' RAGMESH_REFRESH_TOKEN=c");
    }

    #[test]
    fn refresh_text_warns_the_old_token_is_used_up() {
        let response = v1::RefreshTokenResponse {
            access_token: "new.access.token".to_owned(),
            expires_at: Some(at(1_000_060)),
            refresh_token: "rmr_next".to_owned(),
        };
        let out = refresh_text(&response, now());
        assert!(out.starts_with("access token:  new.access.token\nexpires:       "), "{out}");
        assert!(out.contains("1970-01-12T13:47:40Z (in 1m)\n"), "{out}");
        assert!(out.contains("presenting it again revokes this whole token family"), "{out}");
        assert!(out.ends_with("  export RAGMESH_TOKEN=new.access.token RAGMESH_REFRESH_TOKEN=rmr_next\n"), "{out}");
        assert_eq!(refresh_json(&response)["refresh_token"], "rmr_next");
    }

    #[test]
    fn revoke_reports_counts_and_targets() {
        let by_subject = TokenRevokeArgs { family: None, subject: Some("alice".to_owned()) };
        assert!(revoked_text(&by_subject, 2).starts_with("revoked 2 token families of subject alice: "));
        let by_family = TokenRevokeArgs { family: Some("f1".to_owned()), subject: None };
        assert!(revoked_text(&by_family, 1).starts_with("revoked 1 token family of family f1: its refresh"));
        assert!(revoked_text(&by_subject, 2).contains(": their refresh tokens"));
        assert!(revoked_text(&by_family, 0).contains("no live family"));
        let request = revoke_request(&by_subject).expect("valid");
        assert_eq!(request.target, Some(v1::revoke_tokens_request::Target::Subject("alice".to_owned())));
        let empty = TokenRevokeArgs { family: Some(" ".to_owned()), subject: None };
        let err = revoke_request(&empty).expect_err("empty family");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
    }

    #[test]
    fn issue_request_dedups_capabilities_and_maps_the_default_ttl() {
        use crate::args::CapabilityArg;
        let args = TokenIssueArgs {
            subject: "alice".to_owned(),
            tenant: "acme".to_owned(),
            caps: vec![CapabilityArg::Search, CapabilityArg::Ingest, CapabilityArg::Search],
            ttl: None,
            json: false,
        };
        let request = issue_request(&args).expect("valid");
        assert_eq!(request.capabilities, ["search", "ingest"]);
        assert_eq!(request.ttl_seconds, 0, "0 asks for the master's default");
        let blank = TokenIssueArgs { tenant: "  ".to_owned(), ..args };
        let err = issue_request(&blank).expect_err("empty tenant");
        assert!(err.to_string().starts_with("--tenant is empty"), "{err}");
    }

    #[test]
    fn join_text_gives_the_agent_flag_and_env() {
        let response = v1::CreateJoinTokenResponse {
            token: "rmj_secret".to_owned(),
            id: "a1b2c3".to_owned(),
            expires_at: Some(at(1_003_600)),
            uses: 2,
        };
        let out = join_text(&response, "rack 4", now());
        assert!(out.starts_with("join token:    rmj_secret\nid:            a1b2c3\n"), "{out}");
        assert!(out.contains("(in 1h)\nadmits:        2 agents\nnote:          rack 4\n"), "{out}");
        assert!(out.contains("  ragmesh-agent --join-token rmj_secret ...\n"), "{out}");
        assert!(out.contains("`ps`: RAGMESH_JOIN_TOKEN=rmj_secret\n"), "{out}");
        assert!(out.contains("--revoke a1b2c3"), "{out}");
        let value = join_json(&response);
        assert_eq!(value["token"], "rmj_secret");
        assert_eq!(value["uses"], 2);
    }

    #[test]
    fn join_table_shows_expiry_uses_and_who_used_them() {
        let tokens = vec![
            v1::JoinTokenInfo {
                id: "a1".to_owned(),
                expires_at: Some(at(1_003_600)),
                uses_left: 1,
                used_by: vec!["agent-1".to_owned(), "agent-2".to_owned()],
                note: "ragmeshctl demo".to_owned(),
            },
            v1::JoinTokenInfo {
                id: "b2".to_owned(),
                expires_at: Some(at(999_700)),
                uses_left: 0,
                used_by: vec![],
                note: String::new(),
            },
        ];
        assert_eq!(
            join_table(&tokens, now()),
            "ID  EXPIRES         USES-LEFT  USED-BY          NOTE\n\
             a1  in 1h                   1  agent-1,agent-2  ragmeshctl demo\n\
             b2  expired 5m ago          0  -\n"
        );
        assert!(join_table(&[], now()).contains("ragmeshctl token join"));
        let value = join_list_json(&tokens);
        assert_eq!(value[0]["used_by"][1], "agent-2");
        assert_eq!(value[1]["uses_left"], 0);
    }

    #[test]
    fn keys_table_marks_the_signing_key() {
        let keys = vec![
            v1::VerificationKey {
                kid: "k2".to_owned(),
                algorithm: "EdDSA".to_owned(),
                public_key: vec![0xab; 32],
                verify_until: 0,
            },
            v1::VerificationKey {
                kid: "k1".to_owned(),
                algorithm: "EdDSA".to_owned(),
                public_key: vec![1, 2],
                verify_until: 1_000_900,
            },
        ];
        assert_eq!(
            keys_table(&keys, now()),
            "KID  ALG    VERIFY-UNTIL\n\
             k2   EdDSA  current (signing)\n\
             k1   EdDSA  1970-01-12T14:01:40Z (in 15m)\n"
        );
        let value = keys_json(&keys);
        assert!(value[0]["verify_until"].is_null());
        assert_eq!(value[1]["public_key_hex"], "0102");
        assert!(rotated_text("k3").starts_with("signing with new key k3: "));
    }
}
