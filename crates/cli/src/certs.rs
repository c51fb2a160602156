//! `ragmeshctl certs`: a development CA (`init`) and certificates signed by it (`issue`),
//! through `ragmesh_tls::devca`.

use ragmesh_tls::TlsError;

use crate::args::{CertsCommand, CertsInitArgs, CertsIssueArgs};
use crate::error::usage;

/// Runs a `certs` subcommand, printing the paths written.
pub fn run(command: &CertsCommand, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init(args) => init(args, out),
        CertsCommand::Issue(args) => issue(args, out),
    }
}

fn init(args: &CertsInitArgs, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let paths = ragmesh_tls::devca::init_ca(&args.dir, args.force).map_err(classify)?;
    writeln!(out, "wrote {}  (the mesh CA certificate: give it to every party as --ca)", paths.cert.display())?;
    writeln!(out, "wrote {}  (the CA key: keep it here, it signs certificates)", paths.key.display())?;
    writeln!(out, "next: ragmeshctl certs issue --dir {} master   (then agent names, and client)", args.dir.display())?;
    Ok(())
}

fn issue(args: &CertsIssueArgs, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let out_dir = args.out.as_deref().unwrap_or(&args.dir);
    let paths =
        ragmesh_tls::devca::issue_for_days(&args.dir, &args.name, &args.hosts, out_dir, args.days).map_err(classify)?;
    writeln!(out, "wrote {}  (certificate for {}, valid {} days: --cert)", paths.cert.display(), args.name, args.days)?;
    writeln!(out, "wrote {}  (its private key: --key)", paths.key.display())?;
    Ok(())
}

/// Problems the user fixes by changing the command line are usage errors; the rest (I/O while
/// writing, a corrupt CA) are runtime failures. Both keep the library's message, which already
/// says what to do.
fn classify(err: TlsError) -> anyhow::Error {
    match err {
        TlsError::InvalidName { .. }
        | TlsError::InvalidHost { .. }
        | TlsError::InvalidDays { .. }
        | TlsError::CaExists { .. }
        | TlsError::Read { .. } => usage(err.to_string()),
        other => anyhow::Error::new(other),
    }
}
