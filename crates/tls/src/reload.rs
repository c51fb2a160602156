//! Certificate hot reload: a handle over the current TLS material that is swapped atomically
//! when the files change or on SIGHUP, a background task that notices those changes, and the
//! expiry checks that warn before the certificate runs out.
//!
//! A reload validates the new files completely ([`TlsFiles::load`]) before anything is
//! swapped; on any error the previous material stays in use and the error is logged, so a
//! half-written or mismatched file never leaves a daemon without TLS. Connections already
//! established keep the certificate they were set up with; only new connections, and clients
//! built after the reload, use the new one.
//!
//! An expired certificate is logged (error, repeated daily) but deliberately does not turn the
//! daemon's grpc.health.v1 status to NOT_SERVING: the process itself is healthy, established
//! connections keep working, and a health flip would take a node out of service silently, far
//! from the log line that says why. [`ReloadableTls::expires_in`] is there for metrics.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{ISSUE_HINT, TlsError};
use crate::pem::{LoadedTls, TlsFiles, format_system_time};

/// How often [`spawn_reloader`] looks at the files unless told otherwise.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// A certificate closer than this to its end is reported as expiring soon: 14 days.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * SECONDS_PER_DAY);
/// How often the expiry of the current certificate is reported again.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(SECONDS_PER_DAY);
/// A change must hold this long before it is loaded: tools that write the certificate and
/// the key one after the other are done by then, so a reload rarely sees a mismatched pair.
const SETTLE: Duration = Duration::from_millis(250);
/// How many settle periods a change may keep going before it is loaded anyway.
const MAX_SETTLE_ROUNDS: u32 = 8;

const SECONDS_PER_DAY: u64 = 24 * 60 * 60;

/// Where a certificate stands in its validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Valid for longer than [`EXPIRY_WARNING`].
    Valid {
        /// Time left.
        remaining: Duration,
    },
    /// Valid, but for less than [`EXPIRY_WARNING`].
    ExpiresSoon {
        /// Time left.
        remaining: Duration,
    },
    /// Its validity has ended.
    Expired {
        /// How long ago.
        since: Duration,
    },
}

impl Expiry {
    /// The state of a certificate valid until `not_after`, at `now`.
    pub fn of(not_after: SystemTime, now: SystemTime) -> Self {
        match not_after.duration_since(now) {
            Ok(remaining) if remaining > EXPIRY_WARNING => Expiry::Valid { remaining },
            // Exactly at `not_after` the certificate is still valid (X.509 bounds are inclusive).
            Ok(remaining) => Expiry::ExpiresSoon { remaining },
            Err(past) => Expiry::Expired { since: past.duration() },
        }
    }
}

/// What a successful [`ReloadableTls::reload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReloadOutcome {
    /// The files hold what is already in use; nothing was swapped.
    Unchanged,
    /// New material is in use from now on.
    Reloaded {
        /// The new [`ReloadableTls::generation`].
        generation: u64,
    },
}

/// One consistent set of material: what was loaded and the server config made from it.
struct Material {
    generation: u64,
    loaded: Arc<LoadedTls>,
    server: Arc<rustls::ServerConfig>,
}

impl Material {
    fn new(generation: u64, loaded: Arc<LoadedTls>) -> Result<Self, TlsError> {
        let server = Arc::new(loaded.rustls_server_config()?);
        Ok(Material { generation, loaded, server })
    }
}

struct Shared {
    files: TlsFiles,
    current: RwLock<Arc<Material>>,
    generation: watch::Sender<u64>,
    /// Serialises reloads (file poll and SIGHUP at once), so generations never go backwards.
    reloading: Mutex<()>,
}

/// The TLS material a daemon uses now, reloadable while it serves. Cheap to clone; every clone
/// sees every reload.
///
/// Servers take [`ReloadableTls::server_config`] per accepted connection
/// ([`crate::tls_incoming`] does), clients take [`ReloadableTls::current`] whenever they build
/// a channel and rebuild cached channels when [`ReloadableTls::generation`] moves.
#[derive(Clone)]
pub struct ReloadableTls {
    shared: Arc<Shared>,
}

impl fmt::Debug for ReloadableTls {
    // LoadedTls' Debug already leaves the key out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let material = self.material();
        f.debug_struct("ReloadableTls")
            .field("generation", &material.generation)
            .field("loaded", &material.loaded)
            .finish_non_exhaustive()
    }
}

impl ReloadableTls {
    /// Starts from material already loaded (and so validated); later reloads re-read the files
    /// it came from. Reports its expiry if it is near.
    pub fn new(loaded: Arc<LoadedTls>) -> Result<Self, TlsError> {
        let files = loaded.files().clone();
        let material = Material::new(0, loaded)?;
        report_expiry(&material.loaded);
        let (generation, _) = watch::channel(0);
        let shared = Shared { files, current: RwLock::new(Arc::new(material)), generation, reloading: Mutex::new(()) };
        Ok(ReloadableTls { shared: Arc::new(shared) })
    }

    /// Loads and validates `files`, then [`ReloadableTls::new`].
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Self::new(Arc::new(files.load()?))
    }

    /// The files reloads read.
    pub fn files(&self) -> &TlsFiles {
        &self.shared.files
    }

    /// The material in use now; for building client configs.
    pub fn current(&self) -> Arc<LoadedTls> {
        self.material().loaded.clone()
    }

    /// The server config in use now; for the next TLS handshake a server accepts.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.material().server.clone()
    }

    /// Counts successful reloads that changed something: 0 for the material it started with.
    pub fn generation(&self) -> u64 {
        self.material().generation
    }

    /// A receiver of [`ReloadableTls::generation`], to wait for the next reload.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// How long the certificate in use stays valid; `None` once it has expired.
    pub fn expires_in(&self) -> Option<Duration> {
        self.current().expires_in()
    }

    /// Re-reads and validates the files and, if they hold new material, uses it from now on.
    ///
    /// On any error the material in use stays, and the error is logged and returned. This
    /// reads files: call it from blocking context (`spawn_blocking`), as [`spawn_reloader`]
    /// does.
    pub fn reload(&self) -> Result<ReloadOutcome, TlsError> {
        let _one_at_a_time = self.shared.reloading.lock().unwrap_or_else(PoisonError::into_inner);
        let files = &self.shared.files;
        let attempt = files.load().and_then(|loaded| {
            let previous = self.material();
            if loaded.same_contents(&previous.loaded) {
                return Ok((previous, None));
            }
            let next = Material::new(previous.generation + 1, Arc::new(loaded))?;
            Ok((previous, Some(next)))
        });
        let (previous, next) = match attempt {
            Ok(found) => found,
            Err(err) => {
                let in_use = self.current();
                tracing::error!(
                    tls.cert = %files.cert.display(),
                    tls.identity = %in_use.identity().name,
                    tls.not_after = %format_system_time(in_use.not_after()),
                    error = %err,
                    "tls reload failed; still using the previous certificate"
                );
                return Err(err);
            }
        };
        let Some(next) = next else {
            tracing::debug!(tls.cert = %files.cert.display(), "tls files unchanged");
            return Ok(ReloadOutcome::Unchanged);
        };

        let before = previous.loaded.identity();
        let after = next.loaded.identity();
        if before.name != after.name {
            // Peers check our name against what they expect (the master checks a node's name):
            // a renamed certificate is almost always a mistake, so say so before peers refuse it.
            tracing::warn!(
                tls.cert = %files.cert.display(),
                tls.identity.before = %before.name,
                tls.identity.after = %after.name,
                "the reloaded certificate names another identity; peers that expect the old name will refuse it"
            );
        }
        let generation = next.generation;
        let loaded = next.loaded.clone();
        *self.shared.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        self.shared.generation.send_replace(generation);
        tracing::info!(
            tls.cert = %files.cert.display(),
            tls.identity = %loaded.identity().name,
            tls.not_after = %format_system_time(loaded.not_after()),
            tls.generation = generation,
            "tls certificate reloaded; new connections use it"
        );
        report_expiry(&loaded);
        Ok(ReloadOutcome::Reloaded { generation })
    }

    fn material(&self) -> Arc<Material> {
        // The lock only guards an Arc swap; a panic elsewhere cannot leave it half-written.
        self.shared.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Logs the expiry of `loaded` when it matters: a warning within [`EXPIRY_WARNING`] of its end,
/// an error once it has ended.
pub fn report_expiry(loaded: &LoadedTls) {
    let cert = loaded.files().cert.display();
    let identity = &loaded.identity().name;
    let not_after = format_system_time(loaded.not_after());
    match loaded.expiry() {
        Expiry::Valid { remaining } => {
            tracing::debug!(
                tls.cert = %cert,
                tls.identity = %identity,
                tls.not_after = %not_after,
                tls.expires_in_days = remaining.as_secs() / SECONDS_PER_DAY,
                "tls certificate valid"
            );
        }
        Expiry::ExpiresSoon { remaining } => {
            tracing::warn!(
                tls.cert = %cert,
                tls.identity = %identity,
                tls.not_after = %not_after,
                tls.expires_in_hours = remaining.as_secs() / 3600,
                "tls certificate expires soon: issue a new one with {ISSUE_HINT} over the same files; it is picked up without a restart"
            );
        }
        Expiry::Expired { since } => {
            tracing::error!(
                tls.cert = %cert,
                tls.identity = %identity,
                tls.not_after = %not_after,
                tls.expired_hours_ago = since.as_secs() / 3600,
                "tls certificate has expired: peers refuse new connections to and from this process; issue a new one with {ISSUE_HINT} over the same files; it is picked up without a restart"
            );
        }
    }
}

/// When to report the expiry of `loaded` next: daily, and at the moment it expires.
fn next_expiry_report(loaded: &LoadedTls) -> Instant {
    let wait = match loaded.expires_in() {
        // One second past the end, so the check then sees it expired.
        Some(remaining) => remaining.saturating_add(Duration::from_secs(1)).min(EXPIRY_CHECK_INTERVAL),
        None => EXPIRY_CHECK_INTERVAL,
    };
    Instant::now() + wait
}

/// What the three files look like on disk; a difference means someone changed one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<Option<FileStamp>>);

/// Size, modification time and (on unix) inode of one file; `None` in the fingerprint when the
/// file cannot be read (a rename in progress).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Fingerprint {
    async fn of(files: &TlsFiles) -> Self {
        let mut stamps = Vec::with_capacity(3);
        for path in [&files.ca, &files.cert, &files.key] {
            // metadata() follows symlinks: a Kubernetes secret swapping its `..data` link shows
            // up as a new inode even when size and time happen to match.
            let stamp = tokio::fs::metadata(path).await.ok().map(|meta| FileStamp {
                len: meta.len(),
                modified: meta.modified().ok(),
                inode: inode(&meta),
            });
            stamps.push(stamp);
        }
        Fingerprint(stamps)
    }
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    meta.ino()
}

#[cfg(not(unix))]
fn inode(_meta: &std::fs::Metadata) -> u64 {
    0
}

/// Reloads `tls` when its files change (looked at every `interval`) and, on unix, on SIGHUP;
/// reports the certificate's expiry daily. Ends when `shutdown` is cancelled.
///
/// Call it inside a tokio runtime. SIGHUP is handled from the moment this returns; the files
/// are reloaded once when the task starts, so a change made since they were first loaded is
/// not missed.
pub fn spawn_reloader(tls: ReloadableTls, interval: Duration, shutdown: CancellationToken) -> JoinHandle<()> {
    let mut hangup = Hangup::new();
    tokio::spawn(async move {
        let mut seen = Fingerprint::of(tls.files()).await;
        reload_blocking(&tls).await;
        let mut poll = tokio::time::interval(interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.reset(); // the first tick would fire at once; the files were just read
        let mut expiry_report = next_expiry_report(&tls.current());
        tracing::debug!(
            tls.cert = %tls.files().cert.display(),
            interval_ms = interval.as_millis() as u64,
            "watching tls files for changes"
        );
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = poll.tick() => {
                    let now = Fingerprint::of(tls.files()).await;
                    if now == seen {
                        continue;
                    }
                    seen = settle(tls.files(), now).await;
                    tracing::info!(tls.cert = %tls.files().cert.display(), "tls files changed; reloading");
                    reload_blocking(&tls).await;
                }
                () = hangup.recv() => {
                    tracing::info!(tls.cert = %tls.files().cert.display(), "SIGHUP; reloading tls files");
                    seen = Fingerprint::of(tls.files()).await;
                    reload_blocking(&tls).await;
                }
                () = tokio::time::sleep_until(expiry_report) => {
                    report_expiry(&tls.current());
                    expiry_report = next_expiry_report(&tls.current());
                    continue;
                }
            }
            // A new certificate has a new end: report on its schedule from now on.
            expiry_report = next_expiry_report(&tls.current());
        }
    })
}

/// Waits until the files stop changing (at most [`MAX_SETTLE_ROUNDS`] settle periods) and
/// returns how they look then.
async fn settle(files: &TlsFiles, mut latest: Fingerprint) -> Fingerprint {
    for _ in 0..MAX_SETTLE_ROUNDS {
        tokio::time::sleep(SETTLE).await;
        let now = Fingerprint::of(files).await;
        if now == latest {
            break;
        }
        latest = now;
    }
    latest
}

/// [`ReloadableTls::reload`] off the async threads; it logs its own outcome.
async fn reload_blocking(tls: &ReloadableTls) {
    let handle = tls.clone();
    if let Err(err) = tokio::task::spawn_blocking(move || handle.reload()).await {
        tracing::error!(error = %err, "tls reload task failed; still using the previous certificate");
    }
}

/// SIGHUP, where there is such a thing.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::hangup()) {
                Ok(signal) => Hangup { signal: Some(signal) },
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for SIGHUP; tls files are still reloaded when they change");
                    Hangup { signal: None }
                }
            }
        }
        #[cfg(not(unix))]
        {
            Hangup {}
        }
    }

    /// Resolves on the next SIGHUP; never, without them.
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(SECONDS_PER_DAY);

    #[test]
    fn expiry_is_valid_soon_or_expired() {
        let now = SystemTime::UNIX_EPOCH + 1000 * DAY;
        assert_eq!(Expiry::of(now + 30 * DAY, now), Expiry::Valid { remaining: 30 * DAY });
        assert_eq!(Expiry::of(now + 14 * DAY, now), Expiry::ExpiresSoon { remaining: 14 * DAY });
        assert_eq!(Expiry::of(now + DAY, now), Expiry::ExpiresSoon { remaining: DAY });
        assert_eq!(Expiry::of(now, now), Expiry::ExpiresSoon { remaining: Duration::ZERO });
        assert_eq!(Expiry::of(now - DAY, now), Expiry::Expired { since: DAY });
    }
}
