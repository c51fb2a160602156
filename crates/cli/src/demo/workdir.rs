//! The demo's directory: a fresh temporary one removed at exit, or `--dir`, which must be empty
//! or an earlier demo's (recognised by a marker file) whose daemons are no longer running.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::usage;

/// Marks a directory as made by `ragmeshctl demo`, so a later run may reuse it.
const MARKER: &str = ".ragmesh-demo";
/// What a demo writes into its directory, removed before reuse.
const DEMO_DIRS: [&str; 3] = ["certs", "data", "logs"];

/// Where the demo keeps its files.
#[derive(Debug)]
pub struct Workdir {
    path: PathBuf,
    /// Removes the directory when dropped; `None` for `--dir`.
    temp: Option<tempfile::TempDir>,
}

impl Workdir {
    /// A new temporary directory, removed when this is dropped.
    pub fn temporary() -> anyhow::Result<Workdir> {
        Self::temporary_named("ragmesh-demo-")
    }

    /// [`Workdir::temporary`] named `PREFIX...` (`ragmesh-eval-` for `ragmeshctl eval`).
    pub fn temporary_named(prefix: &str) -> anyhow::Result<Workdir> {
        let temp = tempfile::Builder::new().prefix(prefix).tempdir().map_err(|err| {
            anyhow::anyhow!(
                "cannot create a temporary directory: {err}: set TMPDIR to a writable directory, or pass --dir"
            )
        })?;
        let path = temp.path().to_path_buf();
        let workdir = Workdir { path, temp: Some(temp) };
        workdir.create_layout()?;
        Ok(workdir)
    }

    /// `dir`, created if missing. An existing directory must be empty or an earlier demo's,
    /// whose files are then replaced.
    pub fn keep(dir: &Path) -> anyhow::Result<Workdir> {
        fs::create_dir_all(dir).map_err(|err| usage(format!("cannot create --dir {}: {err}", dir.display())))?;
        let path = fs::canonicalize(dir).map_err(|err| usage(format!("cannot use --dir {}: {err}", dir.display())))?;
        let entries: Vec<_> = fs::read_dir(&path)
            .map_err(|err| usage(format!("cannot read --dir {}: {err}", path.display())))?
            .filter_map(Result::ok)
            .collect();
        if !entries.is_empty() {
            if !path.join(MARKER).exists() {
                return Err(usage(format!(
                    "--dir {} is not empty and was not made by `ragmeshctl demo`: pass a new or \
                     empty directory",
                    path.display()
                )));
            }
            refuse_if_running(&path)?;
            clear_previous_demo(&path, &entries)?;
        }
        let workdir = Workdir { path, temp: None };
        workdir.create_layout()?;
        Ok(workdir)
    }

    fn create_layout(&self) -> anyhow::Result<()> {
        fs::write(self.path.join(MARKER), "made by `ragmeshctl demo`; safe to delete with the directory\n")
            .map_err(|err| anyhow::anyhow!("cannot write into {}: {err}", self.path.display()))?;
        for sub in ["certs", "logs", "data"] {
            let dir = self.path.join(sub);
            fs::create_dir_all(&dir).map_err(|err| anyhow::anyhow!("cannot create {}: {err}", dir.display()))?;
        }
        Ok(())
    }

    /// The directory (absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it is removed at exit.
    pub fn is_temporary(&self) -> bool {
        self.temp.is_some()
    }

    /// `DIR/certs`.
    pub fn certs(&self) -> PathBuf {
        self.path.join("certs")
    }

    /// `DIR/logs/<name>.log`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.path.join("logs").join(format!("{name}.log"))
    }

    /// `DIR/data/<name>`.
    pub fn data(&self, name: &str) -> PathBuf {
        self.path.join("data").join(name)
    }

    /// `DIR/<name>.toml`: the config file of agent `name` (its declared actions).
    pub fn agent_config(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.toml"))
    }

    /// `DIR/<name>.pid`.
    pub fn pid_file(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.pid"))
    }

    /// `DIR/<name>.addr`: the address daemon `name` bound, which it writes itself (`--addr-file`).
    pub fn addr_file(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.addr"))
    }

    /// `DIR/<name>.metrics.addr`: where daemon `name` serves `/metrics` (`--metrics-addr-file`).
    pub fn metrics_addr_file(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.metrics.addr"))
    }

    /// `DIR/master.addr`: the master's address, for scripts (`RAGMESH_MASTER=$(cat DIR/master.addr)`).
    pub fn master_addr_file(&self) -> PathBuf {
        self.addr_file("master")
    }

    /// Turns a temporary directory into a kept one (after a failure, its logs explain why).
    pub fn keep_for_inspection(mut self) -> PathBuf {
        if let Some(temp) = self.temp.take() {
            return temp.keep();
        }
        self.path
    }

    /// Removes a temporary directory now (rather than at drop) and reports failures.
    pub fn remove(mut self) -> anyhow::Result<Option<PathBuf>> {
        match self.temp.take() {
            Some(temp) => {
                let path = temp.path().to_path_buf();
                temp.close()
                    .map_err(|err| anyhow::anyhow!("cannot remove {}: {err}: delete it by hand", path.display()))?;
                Ok(Some(path))
            }
            None => Ok(None),
        }
    }
}

/// An earlier demo in `dir` whose daemons still run would fight over the files.
fn refuse_if_running(dir: &Path) -> anyhow::Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.extension().is_none_or(|ext| ext != "pid") {
            continue;
        }
        let Some(pid) = fs::read_to_string(&path).ok().and_then(|text| text.trim().parse::<u32>().ok()) else {
            continue;
        };
        // /proc/<pid>/comm holds the executable name: only our daemons count (pids get reused).
        let running = fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.starts_with("ragmesh-"));
        if running {
            return Err(usage(format!(
                "a demo is still running in {} ({} has pid {pid}): stop it first (Ctrl-C in its \
                 terminal, or kill {pid}), or pass another --dir",
                dir.display(),
                path.display()
            )));
        }
    }
    Ok(())
}

fn clear_previous_demo(dir: &Path, entries: &[fs::DirEntry]) -> anyhow::Result<()> {
    let remove_err = |path: &Path, err: std::io::Error| {
        anyhow::anyhow!("cannot clear {} of the earlier demo: {err}", path.display())
    };
    for sub in DEMO_DIRS {
        let path = dir.join(sub);
        if path.exists() {
            fs::remove_dir_all(&path).map_err(|err| remove_err(&path, err))?;
        }
    }
    for entry in entries {
        let path = entry.path();
        let ours = path.extension().is_some_and(|ext| ext == "pid" || ext == "addr");
        if ours {
            fs::remove_file(&path).map_err(|err| remove_err(&path, err))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_dir_must_be_empty_or_an_earlier_demo() {
        let root = tempfile::tempdir().expect("tempdir");
        let foreign = root.path().join("foreign");
        fs::create_dir_all(&foreign).expect("mkdir");
        fs::write(foreign.join("notes.txt"), "mine").expect("write");
        let err = Workdir::keep(&foreign).expect_err("not ours");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
        assert!(fs::read_to_string(foreign.join("notes.txt")).is_ok(), "foreign files untouched");

        let demo = root.path().join("demo");
        let first = Workdir::keep(&demo).expect("new dir");
        fs::write(first.certs().join("ca.pem"), "old").expect("write");
        fs::write(first.pid_file("agent-1"), "999999999\n").expect("write");
        fs::write(first.master_addr_file(), "127.0.0.1:1\n").expect("write");
        fs::write(first.addr_file("agent-1"), "127.0.0.1:2\n").expect("write");
        let again = Workdir::keep(&demo).expect("an earlier demo is reused");
        assert!(!again.certs().join("ca.pem").exists(), "old certs cleared");
        assert!(!again.pid_file("agent-1").exists(), "stale pid file cleared");
        assert!(!again.master_addr_file().exists(), "stale master address cleared");
        assert!(!again.addr_file("agent-1").exists(), "stale agent address cleared");
        assert!(!again.is_temporary());
    }

    #[test]
    fn temporary_dir_is_removed() {
        let workdir = Workdir::temporary().expect("temp");
        let path = workdir.path().to_path_buf();
        assert!(path.join("logs").is_dir());
        assert_eq!(workdir.remove().expect("removed"), Some(path.clone()));
        assert!(!path.exists());
    }
}
