//! ragmeshctl, the operator CLI of a ragmesh mesh, as a library: `main.rs` only parses the
//! command line and maps the result to an exit code; everything else lives in one module per
//! subcommand, with the pure parts (rendering, argument handling) unit-tested.
//!
//! Errors are `anyhow::Error`s with messages that say what to do; [`error::UsageError`] marks
//! the ones caused by the command line (exit status 64).

pub mod action;
pub mod args;
pub mod certs;
pub mod client;
pub mod demo;
pub mod error;
pub mod eval;
pub mod ingest;
pub mod nodes;
pub mod render;
pub mod samples;
pub mod search;
pub mod stats;
pub mod token;
pub mod top;
pub mod watch;

use std::time::SystemTime;

use args::{Cli, Command, NodesArgs, NodesCommand};
use client::{Master, Target};

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = &cli.global;
    match &cli.command {
        Command::Certs(command) => certs::run(command, &mut std::io::stdout().lock()),
        Command::Demo(args) => demo::run(args).await,
        Command::Eval(args) => eval::run(args, global).await,
        Command::Nodes(args) => {
            let master = connect(global).await?;
            nodes(&master, args).await
        }
        Command::Node(args) => {
            let master = connect(global).await?;
            let node = master.get_node(&args.name).await?;
            let now = SystemTime::now();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&nodes::to_json(&node, now))?);
            } else {
                print!("{}", nodes::detail(&node, now));
            }
            Ok(())
        }
        Command::Stats(args) => {
            let master = connect(global).await?;
            let response = master.stats().await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&stats::to_json(&response))?);
            } else {
                print!("{}", stats::text(&response));
            }
            Ok(())
        }
        Command::Search(args) => {
            let master = connect(global).await?;
            search::run(&master, args, global.timeout_ms).await
        }
        Command::Ingest(args) => {
            let master = connect(global).await?;
            ingest::run(&master, args, global.timeout_ms).await
        }
        Command::Token(command) => {
            let master = connect(global).await?;
            token::run(&master, command).await
        }
        Command::Watch(args) => {
            let master = connect(global).await?;
            watch::run(&master, args).await
        }
        Command::Top(args) => {
            let master = connect(global).await?;
            top::run(&master, args).await
        }
        Command::Action(command) => {
            action::precheck(command)?;
            let master = connect(global).await?;
            action::run(&master, command, global.timeout_ms).await
        }
    }
}

/// `nodes`, `nodes --pending` and `nodes evict NAME`.
async fn nodes(master: &Master, args: &NodesArgs) -> anyhow::Result<()> {
    if let Some(NodesCommand::Evict(evict)) = &args.command {
        master.evict_node(&evict.name).await?;
        print!("{}", nodes::evicted(&evict.name));
        return Ok(());
    }
    if args.pending {
        let pending = master.list_pending_nodes().await?;
        let now = SystemTime::now();
        if args.json {
            println!("{}", serde_json::to_string_pretty(&nodes::pending_json(&pending, now))?);
        } else {
            print!("{}", nodes::pending_table(&pending, now));
        }
        return Ok(());
    }
    let listed = master.list_nodes_and_groups().await?;
    let now = SystemTime::now();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&nodes::list_json(&listed.nodes, now))?);
    } else {
        print!("{}", nodes::table(&listed.nodes, now));
        print!("{}", nodes::groups_summary(&listed.groups));
    }
    Ok(())
}

/// Validates the connection flags and connects to the master.
async fn connect(global: &args::GlobalArgs) -> anyhow::Result<Master> {
    Master::connect(Target::from_args(global)?).await
}
