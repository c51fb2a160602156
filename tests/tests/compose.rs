//! deploy/compose: the compose file parses, runs what the README promises (master, three
//! agents, Jaeger all-in-one with OTLP on 4317 and its UI on 16686, Prometheus scraping both
//! daemons), and every flag and `RAGMESH_*` variable it gives a daemon exists in that daemon's
//! `--help` (clap's help, the same text the binaries print). Its prometheus.yml passes
//! `promtool check config` and scrapes the ports the daemons' --metrics-listen use.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory as _;
use ragmesh_config::{AgentArgs, MasterArgs};
use yaml_rust2::{Yaml, YamlLoader};

fn compose_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/compose")
}

fn load() -> Yaml {
    let path = compose_dir().join("docker-compose.yml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(docs.len(), 1, "one YAML document");
    docs.remove(0)
}

/// A service's `command` as a list of strings (a merge key `<<` brings in the anchors' keys).
fn service_key<'a>(service: &'a Yaml, key: &str) -> &'a Yaml {
    let own = &service[key];
    if !own.is_badvalue() {
        return own;
    }
    &service["<<"][key]
}

fn strings(list: &Yaml) -> Vec<String> {
    list.as_vec().map(|v| v.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

fn help(binary: &str) -> String {
    let mut command = match binary {
        "ragmesh-master" => MasterArgs::command(),
        "ragmesh-agent" => AgentArgs::command(),
        other => panic!("not a daemon: {other}"),
    };
    command.render_long_help().to_string()
}

/// Flags of a daemon's `command:` list that its --help does not know.
fn unknown_flags(binary: &str, args: &[String]) -> Vec<String> {
    let help = help(binary);
    let mut unknown = Vec::new();
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        let flag = arg.split_once('=').map_or(arg.as_str(), |(flag, _)| flag);
        let known = help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n"));
        if !known {
            unknown.push(flag.to_owned());
        }
    }
    unknown
}

#[test]
fn compose_runs_master_three_agents_jaeger_and_prometheus_with_flags_the_daemons_know() {
    let compose = load();
    let services = compose["services"].as_hash().expect("services");
    let mut daemons = Vec::new();
    for (name, service) in services {
        let name = name.as_str().expect("service name");
        let command = strings(service_key(service, "command"));
        let Some(binary) = command.first().filter(|b| b.starts_with("ragmesh-")) else { continue };
        let unknown = unknown_flags(binary, &command[1..]);
        assert!(unknown.is_empty(), "service {name}: {binary} has no {unknown:?} in --help");
        let help = help(binary);
        if let Some(env) = service_key(service, "environment").as_hash() {
            for key in env.keys().filter_map(Yaml::as_str).filter(|k| k.starts_with("RAGMESH_")) {
                assert!(help.contains(&format!("[env: {key}=")), "service {name}: {binary} reads no {key}");
            }
        }
        // Every daemon serves metrics and exports traces to the Jaeger of the file.
        assert!(command.iter().any(|a| a.starts_with("--metrics-listen=0.0.0.0:")), "{name}: {command:?}");
        assert!(command.contains(&"--otlp-endpoint=http://jaeger:4317".to_owned()), "{name}: {command:?}");
        daemons.push((name.to_owned(), binary.clone(), command));
    }
    let masters = daemons.iter().filter(|(_, binary, _)| binary == "ragmesh-master").count();
    let agents: Vec<&str> =
        daemons.iter().filter(|(_, binary, _)| binary == "ragmesh-agent").map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(masters, 1, "one master");
    assert_eq!(agents, ["agent-1", "agent-2", "agent-3"], "three agents");

    let jaeger = &compose["services"]["jaeger"];
    assert!(jaeger["image"].as_str().is_some_and(|i| i.starts_with("jaegertracing/all-in-one:")));
    let ports = strings(&jaeger["ports"]);
    assert!(ports.iter().any(|p| p.starts_with("16686:16686")), "Jaeger UI: {ports:?}");
    assert!(ports.iter().any(|p| p.starts_with("4317:4317")), "OTLP gRPC: {ports:?}");
    let prometheus = &compose["services"]["prometheus"];
    assert!(prometheus["image"].as_str().is_some_and(|i| i.starts_with("prom/prometheus:")));
}

#[test]
fn prometheus_scrapes_every_daemons_metrics_port_and_its_config_passes_promtool() {
    let path = compose_dir().join("prometheus.yml");
    let text = std::fs::read_to_string(&path).expect("prometheus.yml");
    let config = YamlLoader::load_from_str(&text).expect("YAML").remove(0);
    let mut targets = Vec::new();
    for job in config["scrape_configs"].as_vec().expect("scrape_configs") {
        for static_config in job["static_configs"].as_vec().expect("static_configs") {
            targets.extend(strings(&static_config["targets"]));
        }
    }
    let compose = load();
    for (name, service) in compose["services"].as_hash().expect("services") {
        let name = name.as_str().expect("name");
        let command = strings(service_key(service, "command"));
        let Some(listen) = command.iter().find_map(|a| a.strip_prefix("--metrics-listen=")) else { continue };
        let port = listen.rsplit_once(':').expect("IP:PORT").1;
        assert!(targets.contains(&format!("{name}:{port}")), "{name}:{port} is not scraped: {targets:?}");
    }

    let promtool = std::env::var("RAGMESH_PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    match Command::new(&promtool).arg("check").arg("config").arg(&path).output() {
        Ok(output) => assert!(
            output.status.success(),
            "promtool check config: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(err) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "promtool missing under CI ({promtool}: {err})");
            println!("NOTE: promtool not found ({promtool}: {err}): `promtool check config` SKIPPED");
        }
    }
}
