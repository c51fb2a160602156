//! `ragmeshctl watch`: the master's events live (`WatchEvents`), one line each, or one JSON
//! object per line with `--json` for scripts. Runs until Ctrl-C or until the master ends the
//! stream (it stops, or this client fell behind: the message says which).

use ragmesh_proto::v1;

use crate::args::WatchArgs;
use crate::client::Master;
use crate::error::usage;

/// The kind's name without the enum prefix (`node_down`).
pub fn kind_name(kind: i32) -> String {
    match v1::EventKind::try_from(kind) {
        Ok(kind) => kind.as_str_name().trim_start_matches("EVENT_KIND_").to_lowercase(),
        Err(_) => format!("unknown({kind})"),
    }
}

/// Parses `--kind` names (`node_down`, case-insensitive) into wire values.
pub fn parse_kinds(names: &[String]) -> anyhow::Result<Vec<i32>> {
    let mut kinds = Vec::new();
    for name in names {
        let wire = format!("EVENT_KIND_{}", name.trim().to_uppercase());
        match v1::EventKind::from_str_name(&wire) {
            Some(kind) if kind != v1::EventKind::Unspecified => kinds.push(kind as i32),
            _ => {
                let known: Vec<String> = (1..=13).map(kind_name).collect();
                return Err(usage(format!("--kind {name:?} is not an event kind: use one of {}", known.join(", "))));
            }
        }
    }
    Ok(kinds)
}

/// One event as a line of text: time, sequence, kind, node, message and the kind's extras.
pub fn line(event: &v1::Event) -> String {
    let time = event.time.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string);
    let mut text = format!("{time}  #{:<5} {:<24}", event.seq, kind_name(event.kind));
    let subject = if event.node.is_empty() { "-" } else { &event.node };
    text.push_str(&format!(" {subject:<12}"));
    if !event.message.is_empty() {
        text.push_str(&format!(" {}", event.message));
    }
    let extras = [
        ("shard", event.shard.clone()),
        ("address", event.address.clone()),
        ("key", event.key_id.clone()),
        ("protocol", event.agent_protocol.clone()),
        ("expires", event.expires_at.as_ref().map(ToString::to_string).unwrap_or_default()),
    ];
    for (name, value) in extras {
        // A group of one is named after its node: the shard adds nothing then.
        let redundant = name == "shard" && value == event.node;
        if !value.is_empty() && !redundant {
            text.push_str(&format!(" {name}={value}"));
        }
    }
    text
}

/// One event as a JSON object (the same field names as the webhook payload, `time` in RFC 3339).
pub fn json(event: &v1::Event) -> serde_json::Value {
    let mut object = serde_json::json!({
        "id": format!("evt-{}", event.seq),
        "seq": event.seq,
        "time": crate::render::timestamp_json(event.time.as_ref()),
        "kind": kind_name(event.kind),
    });
    let fields = [
        ("node", &event.node),
        ("shard", &event.shard),
        ("message", &event.message),
        ("address", &event.address),
        ("key_id", &event.key_id),
        ("agent_protocol", &event.agent_protocol),
    ];
    for (name, value) in fields {
        if !value.is_empty() {
            object[name] = serde_json::Value::String(value.clone());
        }
    }
    if event.expires_at.is_some() {
        object["expires_at"] = crate::render::timestamp_json(event.expires_at.as_ref());
    }
    object
}

/// Prints events until Ctrl-C or the end of the stream.
pub async fn run(master: &Master, args: &WatchArgs) -> anyhow::Result<()> {
    let kinds = parse_kinds(&args.kinds)?;
    let mut stream = master.watch_events(kinds).await?;
    if !args.json {
        eprintln!("watching events of {} (Ctrl-C to stop)", master.addr());
    }
    loop {
        let next = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            next = stream.message() => next,
        };
        match next {
            Ok(Some(response)) => {
                let Some(event) = response.event else { continue };
                if args.json {
                    println!("{}", json(&event));
                } else {
                    println!("{}", line(&event));
                }
            }
            Ok(None) => {
                anyhow::bail!("the master ended the event stream (it is stopping): run `ragmeshctl watch` again")
            }
            Err(status) => return Err(master.describe("watch events", &status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> v1::Event {
        v1::Event {
            seq: 12,
            time: Some(prost_types::Timestamp { seconds: 1_764_470_000, nanos: 0 }),
            kind: v1::EventKind::NodeDown as i32,
            node: "agent-2".into(),
            shard: "agent-2".into(),
            message: "health stream ended".into(),
            ..v1::Event::default()
        }
    }

    #[test]
    fn kinds_parse_by_their_short_names() {
        let kinds = parse_kinds(&["node_down".into(), "BREAKER_OPENED".into()]).expect("valid");
        assert_eq!(kinds, [v1::EventKind::NodeDown as i32, v1::EventKind::BreakerOpened as i32]);
        let err = parse_kinds(&["node_exploded".into()]).expect_err("unknown");
        assert!(err.to_string().contains("use one of node_joined, node_suspect"), "{err}");
        assert!(parse_kinds(&["unspecified".into()]).is_err());
    }

    #[test]
    fn an_event_prints_as_one_line_or_one_json_object() {
        let text = line(&down());
        assert!(text.starts_with("2025-11-30T02:33:20Z  #12    node_down"), "{text}");
        assert!(text.contains("agent-2") && text.ends_with("health stream ended"), "{text}");
        let object = json(&down());
        assert_eq!(object["id"], "evt-12");
        assert_eq!(object["kind"], "node_down");
        assert_eq!(object["time"], "2025-11-30T02:33:20Z");
        assert_eq!(object["message"], "health stream ended");
        assert!(object.get("key_id").is_none(), "empty fields are left out");
        assert!(!json(&down()).to_string().contains('\n'), "one object per line");
    }
}
