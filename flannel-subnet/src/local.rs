//! The embedded local store: flannel without a datastore, on one machine.
//!
//! Several flanneld processes on one host (for example one per network
//! namespace) share a directory:
//!
//! | file | content |
//! |---|---|
//! | `config` | the network configuration (`net-conf.json` text) |
//! | `leases.json` | the lease table: revision, leases with expiry, a change log |
//! | `lock` | taken with `flock` around every read-modify-write |
//!
//! Semantics match etcd's as flannel uses them: leases expire after their TTL,
//! create is create-if-absent, keys without TTL (reservations) never expire,
//! every change gets a revision, and a watch from a revision delivers the
//! changes after it (or [`ManagerError::Compacted`] when the change log no
//! longer reaches back that far). Watches poll the table (every 100 ms by
//! default); expiries are turned into deletions by whichever process touches
//! the table first.
//!
//! This store is for demos, tests and single-node use. A cluster uses etcd or
//! the Kubernetes API.
//!
//! File work (open, `flock`, read, write, fsync, rename) is blocking, and a
//! lock may be held by another process for a while, so every
//! [`LeaseStore`] method runs it on tokio's blocking pool
//! (`spawn_blocking`) and never on the async runtime's threads. The
//! synchronous setup helpers [`LocalStore::open`] and
//! [`LocalStore::set_config`] do their (short) I/O in the caller's thread.

use crate::env_file::write_atomic;
use crate::store::{LeaseStore, Listing, StoreBatch, StoreEvent, StoreWatch};
use flannel_core::key::SubnetKey;
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::manager::ManagerError;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::warn;

/// How many changes the log keeps for watchers that fall behind.
pub const LOG_LIMIT: usize = 4096;

/// The default directory of the local store.
pub const DEFAULT_LOCAL_DIR: &str = "/run/flannel/local-store";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Table {
    /// Not stored: the owning store's setting, applied when recording.
    #[serde(skip)]
    log_limit: usize,
    revision: i64,
    /// Changes with a revision at or below this are gone from `log`.
    compacted: i64,
    leases: Vec<Row>,
    log: Vec<Change>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    key: String,
    /// The lease value: `LeaseAttrs` JSON exactly as Go writes it.
    value: String,
    /// Expiry in milliseconds since the Unix epoch; `None` never expires.
    expires_ms: Option<u64>,
    revision: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Change {
    revision: i64,
    key: String,
    /// The new row, or `None` for a deletion.
    row: Option<Row>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn io_err(what: &str, path: &Path, e: io::Error) -> ManagerError {
    ManagerError::Unavailable(format!("local store: {what} {}: {e}", path.display()))
}

impl Row {
    fn expired(&self, now: u64) -> bool {
        self.expires_ms.is_some_and(|t| t <= now)
    }

    fn to_lease(&self) -> Option<Lease> {
        let key = match self.key.parse::<SubnetKey>() {
            Ok(k) => k,
            Err(e) => {
                warn!("local store: ignoring lease with a bad key: {e}");
                return None;
            }
        };
        let attrs = match LeaseAttrs::from_json(&self.value) {
            Ok(a) => a,
            Err(e) => {
                warn!("local store: ignoring lease {key} with a bad value: {e}");
                return None;
            }
        };
        let mut lease = Lease::new(key, attrs);
        lease.expiration = self
            .expires_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
        lease.asof = self.revision;
        Some(lease)
    }
}

impl Table {
    fn record(&mut self, key: String, row: Option<Row>) {
        self.log.push(Change {
            revision: self.revision,
            key,
            row,
        });
        if self.log.len() > self.log_limit {
            let drop = self.log.len() - self.log_limit;
            self.compacted = self.log[drop - 1].revision;
            self.log.drain(..drop);
        }
    }

    /// Turns expired leases into logged deletions; true if anything changed.
    fn expire(&mut self, now: u64) -> bool {
        let (gone, kept): (Vec<Row>, Vec<Row>) =
            self.leases.drain(..).partition(|r| r.expired(now));
        self.leases = kept;
        for row in &gone {
            self.revision += 1;
            self.record(row.key.clone(), None);
        }
        !gone.is_empty()
    }

    fn upsert(&mut self, key: &SubnetKey, attrs: &LeaseAttrs, ttl: Option<Duration>) -> Lease {
        self.revision += 1;
        let row = Row {
            key: key.to_string(),
            value: attrs.to_json(),
            expires_ms: ttl.map(|t| now_ms() + t.as_millis() as u64),
            revision: self.revision,
        };
        match self.leases.iter_mut().find(|r| r.key == row.key) {
            Some(existing) => *existing = row.clone(),
            None => self.leases.push(row.clone()),
        }
        self.record(row.key.clone(), Some(row.clone()));
        let mut lease = Lease::new(*key, attrs.clone());
        lease.expiration = row
            .expires_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
        lease.asof = row.revision;
        lease
    }
}

/// The file-backed lease store (see the module docs).
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
    poll: Duration,
    log_limit: usize,
}

impl LocalStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<LocalStore, ManagerError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        Ok(LocalStore {
            dir,
            poll: Duration::from_millis(100),
            log_limit: LOG_LIMIT,
        })
    }

    /// Changes how often watches look for changes.
    pub fn with_poll_interval(self, poll: Duration) -> Self {
        LocalStore { poll, ..self }
    }

    /// Changes how many changes the log keeps (default [`LOG_LIMIT`]); a
    /// watcher further behind gets [`ManagerError::Compacted`].
    pub fn with_log_limit(self, log_limit: usize) -> Self {
        LocalStore {
            log_limit: log_limit.max(1),
            ..self
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores the network configuration (written atomically; not validated
    /// here — the manager validates on every read, as for etcd).
    pub fn set_config(&self, json: &str) -> Result<(), ManagerError> {
        let path = self.dir.join("config");
        write_atomic(&path, json.as_bytes(), 0o644).map_err(|e| io_err("cannot write", &path, e))
    }

    fn lock(&self, exclusive: bool) -> Result<File, ManagerError> {
        let path = self.dir.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err("cannot open", &path, e))?;
        let locked = if exclusive { f.lock() } else { f.lock_shared() };
        locked.map_err(|e| io_err("cannot lock", &path, e))?;
        Ok(f)
    }

    fn load(&self) -> Result<Table, ManagerError> {
        let path = self.dir.join("leases.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(|t| Table {
                    log_limit: self.log_limit,
                    ..t
                })
                .map_err(|e| {
                    ManagerError::Other(format!("local store: {} is corrupt: {e}", path.display()))
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Table {
                log_limit: self.log_limit,
                ..Table::default()
            }),
            Err(e) => Err(io_err("cannot read", &path, e)),
        }
    }

    fn save(&self, table: &Table) -> Result<(), ManagerError> {
        let path = self.dir.join("leases.json");
        let bytes = serde_json::to_vec(table).map_err(|e| ManagerError::Other(e.to_string()))?;
        write_atomic(&path, &bytes, 0o644).map_err(|e| io_err("cannot write", &path, e))
    }

    /// Runs `f` on the table under the exclusive lock, saving when it (or
    /// expiry) changed something.
    fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Table) -> Result<(T, bool), ManagerError>,
    ) -> Result<T, ManagerError> {
        let _guard = self.lock(true)?;
        let mut table = self.load()?;
        let expired = table.expire(now_ms());
        let (out, changed) = f(&mut table)?;
        if changed || expired {
            self.save(&table)?;
        }
        Ok(out)
    }

    /// Reads the table under the shared lock; expired leases are hidden.
    fn read(&self) -> Result<Table, ManagerError> {
        let _guard = self.lock(false)?;
        let mut table = self.load()?;
        let now = now_ms();
        table.leases.retain(|r| !r.expired(now));
        Ok(table)
    }

    /// Runs `f` (blocking file work) on tokio's blocking pool with a copy of
    /// this store, so no runtime thread waits on the disk or a lock.
    async fn blocking<T, F>(&self, f: F) -> Result<T, ManagerError>
    where
        T: Send + 'static,
        F: FnOnce(&LocalStore) -> Result<T, ManagerError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| {
                ManagerError::Other(format!(
                    "local store in {}: file task failed: {e}",
                    self.dir.display()
                ))
            })?
    }

    fn poll_changes(&self, after: i64) -> Result<StoreBatch, ManagerError> {
        let mut table = {
            let _guard = self.lock(false)?;
            self.load()?
        };
        if table.leases.iter().any(|r| r.expired(now_ms())) {
            // Someone has to log the expiry; the first poller does.
            self.mutate(|_| Ok(((), false)))?;
            let _guard = self.lock(false)?;
            table = self.load()?;
        }
        if after < table.compacted {
            return Err(ManagerError::Compacted(table.compacted));
        }
        let mut batch = StoreBatch {
            events: Vec::new(),
            revision: after,
        };
        for change in table.log.iter().filter(|c| c.revision > after) {
            batch.revision = change.revision;
            match &change.row {
                Some(row) => {
                    if let Some(lease) = row.to_lease() {
                        batch.events.push(StoreEvent::Put(lease));
                    }
                }
                None => match change.key.parse::<SubnetKey>() {
                    Ok(key) => batch.events.push(StoreEvent::Delete(key)),
                    Err(e) => warn!("local store: ignoring deletion of a bad key: {e}"),
                },
            }
        }
        Ok(batch)
    }
}

#[async_trait::async_trait]
impl LeaseStore for LocalStore {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn get_config(&self) -> Result<String, ManagerError> {
        self.blocking(|s| {
            let path = s.dir.join("config");
            match fs::read_to_string(&path) {
                Ok(text) => Ok(text),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    Err(ManagerError::ConfigNotFound(format!(
                        "flannel config not found in the local store: {} does not exist",
                        path.display()
                    )))
                }
                Err(e) => Err(io_err("cannot read", &path, e)),
            }
        })
        .await
    }

    async fn list(&self) -> Result<Listing, ManagerError> {
        let table = self.blocking(LocalStore::read).await?;
        let mut leases: Vec<Lease> = table.leases.iter().filter_map(Row::to_lease).collect();
        leases.sort_by_key(|l| l.key().to_string());
        Ok(Listing {
            leases,
            revision: table.revision,
        })
    }

    async fn get(&self, key: &SubnetKey) -> Result<Option<Lease>, ManagerError> {
        let k = key.to_string();
        Ok(self
            .blocking(LocalStore::read)
            .await?
            .leases
            .iter()
            .find(|r| r.key == k)
            .and_then(Row::to_lease))
    }

    async fn create(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Lease, ManagerError> {
        let (key, attrs) = (*key, attrs.clone());
        self.blocking(move |s| {
            let k = key.to_string();
            s.mutate(|t| {
                if t.leases.iter().any(|r| r.key == k) {
                    return Err(ManagerError::AlreadyExists(key));
                }
                Ok((t.upsert(&key, &attrs, Some(ttl)), true))
            })
        })
        .await
    }

    async fn put(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Lease, ManagerError> {
        let (key, attrs) = (*key, attrs.clone());
        self.blocking(move |s| s.mutate(|t| Ok((t.upsert(&key, &attrs, ttl), true))))
            .await
    }

    async fn delete(&self, key: &SubnetKey) -> Result<(), ManagerError> {
        let k = key.to_string();
        self.blocking(move |s| {
            s.mutate(|t| {
                let before = t.leases.len();
                t.leases.retain(|r| r.key != k);
                let changed = t.leases.len() != before;
                if changed {
                    t.revision += 1;
                    t.record(k.clone(), None);
                }
                Ok(((), changed))
            })
        })
        .await
    }

    async fn watch(&self, revision: i64) -> Result<StoreWatch, ManagerError> {
        let store = self.clone();
        // Fail fast when the history is already gone.
        let first = store.blocking(move |s| s.poll_changes(revision)).await?;
        let state = (store, revision, Some(first));
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            |(store, mut after, mut pending)| async move {
                loop {
                    let batch = match pending.take() {
                        Some(b) => Ok(b),
                        None => {
                            tokio::time::sleep(store.poll).await;
                            store.blocking(move |s| s.poll_changes(after)).await
                        }
                    };
                    match batch {
                        Ok(b) if b.events.is_empty() && b.revision <= after => continue,
                        Ok(b) => {
                            after = b.revision;
                            return Some((Ok(b), (store, after, None)));
                        }
                        Err(e) => return Some((Err(e), (store, after, None))),
                    }
                }
            },
        )))
    }
}
