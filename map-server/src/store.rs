//! Crash-safe persistence of registrations, so that a restarted map-server
//! (after `kill -9` too) answers at once for every unexpired registration.
//!
//! One redb table maps an encoded EID prefix to an encoded registration. The
//! shell applies each event-loop iteration's [`StoreOp`]s in one durable write
//! transaction before it sends that iteration's answers, so a Map-Notify is
//! never sent for a registration that would be lost by a crash.
//!
//! Expiry is stored as wall-clock time (Unix milliseconds): `Instant`s mean
//! nothing to another process. It is converted back against the clock at load.
//!
//! The value format is our own, small and versioned (see [`encode_value`]).
//! A value that does not decode is logged and skipped, never a panic: one bad
//! record must not keep the map-server from starting.

use lisp_wire::EidPrefix;
use map_server_core::{Mapping, Origin, Rloc, StoreOp};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, warn};

/// The database file inside the state directory.
pub const FILE_NAME: &str = "registrations.redb";
/// redb's page cache. redb defaults to 1 GiB; registrations are small and read
/// once at start-up, so a small cache keeps the daemon's memory low.
pub const DEFAULT_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Version byte of the value format written by [`encode_value`].
pub const VALUE_VERSION: u8 = 1;

const REGISTRATIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("registrations");
/// Control peer name -> the endpoint it was last seen at (family byte,
/// address, port), for waking it through its NAT after a restart.
const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");
/// Control peer name -> the highest Map-Register nonce accepted from it, so
/// that a replay is refused across restarts.
const REGISTER_NONCES: TableDefinition<&str, u64> = TableDefinition::new("register_nonces");

const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;
const FLAG_KEY: u8 = 0x01;
const FLAG_EXPIRES: u8 = 0x02;
const FLAG_PORT: u8 = 0x01;
/// The locator is a relay's (the node's TURN allocation).
const FLAG_RELAYED: u8 = 0x02;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}: {error}")]
    StateDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot open {path}: {error}. If the file is damaged, move it aside and start again: nodes re-register within their refresh interval")]
    Open {
        path: PathBuf,
        error: Box<redb::DatabaseError>,
    },
    #[error("{path}: {context}: {error}")]
    Db {
        path: PathBuf,
        context: &'static str,
        error: Box<redb::Error>,
    },
    #[error("{path} is empty (0 bytes), not a store: it was truncated or made by hand. Move it aside to start with no registrations (nodes re-register within their refresh interval), or restore it from a backup")]
    EmptyFile { path: PathBuf },
    #[error("{path}: closed after a failed commit, and not reopened yet")]
    Closed { path: PathBuf },
    #[error("{path}: redb panicked while {context}, so the file is damaged: {message}. Move it aside and start again: nodes re-register within their refresh interval")]
    Panicked {
        path: PathBuf,
        context: &'static str,
        message: String,
    },
}

/// A stored key or value that cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty value")]
    Empty,
    #[error("value format version {0} is not known to this map-server (it reads {VALUE_VERSION})")]
    UnknownVersion(u8),
    #[error("truncated while reading {0}")]
    Truncated(&'static str),
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("bad EID prefix: {0}")]
    Prefix(String),
    #[error("peer name is not UTF-8")]
    PeerName,
    #[error("registration without locators")]
    NoLocators,
}

/// A registration as read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored<'a> {
    pub peer: &'a str,
    /// `origin` is a placeholder ([`Origin::Static`]): the core assigns the
    /// peer's current index in [`crate::MapServer::restore`].
    pub mapping: Mapping,
}

/// What a load found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Records handed to the caller.
    pub loaded: usize,
    /// Records whose key or value did not decode (logged, left in place).
    pub undecodable: usize,
}

/// A pair of readings of the monotonic and the wall clock, to convert
/// between the two.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: Instant,
    pub wall: SystemTime,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            now: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// `at` as Unix milliseconds.
    pub fn to_wall_ms(&self, at: Instant) -> u64 {
        let wall = if at >= self.now {
            self.wall + (at - self.now)
        } else {
            self.wall.checked_sub(self.now - at).unwrap_or(UNIX_EPOCH)
        };
        wall.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
    }

    /// Unix milliseconds as an `Instant`; a time already past maps to now
    /// (an expired registration stays expired).
    pub fn from_wall_ms(&self, ms: u64) -> Instant {
        let wall = UNIX_EPOCH + Duration::from_millis(ms);
        match wall.duration_since(self.wall) {
            Ok(ahead) => self.now.checked_add(ahead).unwrap_or(self.now),
            Err(_) => self.now,
        }
    }
}

/// The registration database of one map-server.
pub struct Store {
    /// `None` only between a failed commit's close and a reopen that
    /// failed too (the disk is still full, say).
    db: Option<redb::Database>,
    path: PathBuf,
    cache_bytes: usize,
    /// The last commit failed: after an I/O error redb refuses every later
    /// transaction until the database is opened again, so the next commit
    /// reopens it first. This is how a full disk that gets space back is
    /// written to again without a restart.
    failed: bool,
    /// Records deleted since the file was last compacted.
    deleted: u64,
}

/// Deletions after which the file is compacted: redb reuses freed pages but
/// never gives them back, so a fleet that once registered a million
/// prefixes would keep a file that size for ever.
const COMPACT_AFTER_DELETES: u64 = 10_000;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Runs `f`, turning a panic inside redb (which it documents for damaged
/// files) into an error.
fn guarded<T>(
    path: &Path,
    context: &'static str,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(StoreError::Panicked {
            path: path.to_path_buf(),
            context,
            message,
        })
    })
}

/// Runs `f` (at start-up, before the event loop) without the panic hook's
/// backtrace: a damaged file makes redb panic, and [`guarded`] turns that
/// into an error that says what to do; a backtrace would bury it.
fn quietly<T>(f: impl FnOnce() -> T) -> T {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = f();
    std::panic::set_hook(hook);
    out
}

fn open_db(path: &Path, cache_bytes: usize) -> Result<redb::Database, StoreError> {
    quietly(|| {
        guarded(path, "opening the database", || {
            redb::Builder::new()
                .set_cache_size(cache_bytes)
                .create(path)
                .map_err(|error| StoreError::Open {
                    path: path.to_path_buf(),
                    error: Box::new(error),
                })
        })
    })
}

impl Store {
    fn db(&self) -> Result<&redb::Database, StoreError> {
        self.db.as_ref().ok_or_else(|| StoreError::Closed {
            path: self.path.clone(),
        })
    }

    /// Closes and opens the database again, after a failed commit.
    fn reopen(&mut self) -> Result<(), StoreError> {
        self.db = None;
        self.db = Some(open_db(&self.path, self.cache_bytes)?);
        self.failed = false;
        tracing::info!(path = %self.path.display(), "store reopened after a failed commit");
        Ok(())
    }

    /// Opens (creating if needed) `<state_dir>/registrations.redb`. After an
    /// unclean stop redb recovers the last committed transaction here.
    pub fn open(state_dir: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        if !state_dir.exists() {
            let mut builder = std::fs::DirBuilder::new();
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder
                .recursive(true)
                .create(state_dir)
                .map_err(|error| StoreError::StateDir {
                    path: state_dir.to_path_buf(),
                    error,
                })?;
        }
        let path = state_dir.join(FILE_NAME);
        // redb would take an empty file for a new store: silently, every
        // registration would be gone.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            return Err(StoreError::EmptyFile { path });
        }
        let db = open_db(&path, cache_bytes)?;
        let store = Store {
            db: Some(db),
            path,
            cache_bytes,
            failed: false,
            deleted: 0,
        };
        // Create the table once, so that loading an empty store is not a
        // special case.
        store.write(|_, _, _| Ok(()))?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_err(&self, context: &'static str) -> impl Fn(redb::Error) -> StoreError + '_ {
        move |e| StoreError::Db {
            path: self.path.clone(),
            context,
            error: Box::new(e),
        }
    }

    /// Calls `each(prefix, stored)` for every record that decodes; expiry is
    /// converted with `clock`. Records that do not decode are logged and
    /// counted, and left in the file (a newer map-server may have written
    /// them).
    pub fn load(
        &self,
        clock: Clock,
        mut each: impl FnMut(EidPrefix, Stored<'_>),
    ) -> Result<LoadReport, StoreError> {
        guarded(&self.path, "loading registrations", || {
            let err = self.db_err("load");
            let txn = self.db()?.begin_read().map_err(|e| err(e.into()))?;
            let table = txn.open_table(REGISTRATIONS).map_err(|e| err(e.into()))?;
            let mut report = LoadReport::default();
            for entry in table.iter().map_err(|e| err(e.into()))? {
                let (k, v) = entry.map_err(|e| err(e.into()))?;
                let (k, v) = (k.value(), v.value());
                let decoded = decode_key(k).and_then(|p| Ok((p, decode_value(v, &clock)?)));
                match decoded {
                    Ok((prefix, stored)) => {
                        report.loaded += 1;
                        each(prefix, stored);
                    }
                    Err(e) => {
                        report.undecodable += 1;
                        warn!(key = %hex(k), error = %e, path = %self.path.display(), "skipping a stored registration that does not decode");
                    }
                }
            }
            Ok(report)
        })
    }

    /// Applies `ops` in one durable transaction: when this returns Ok, they
    /// survive a crash.
    pub fn apply(&mut self, ops: &[StoreOp], clock: Clock) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        if self.failed {
            self.reopen()?;
        }
        let result = self.apply_ops(ops, clock);
        self.failed = result.is_err();
        if result.is_ok() {
            self.deleted += ops
                .iter()
                .filter(|op| matches!(op, StoreOp::Delete(_)))
                .count() as u64;
            if self.deleted >= COMPACT_AFTER_DELETES {
                self.compact();
            }
        }
        result
    }

    /// Gives freed pages back to the file system. A failure is only logged:
    /// the file stays as it was, bigger than needed.
    fn compact(&mut self) {
        self.deleted = 0;
        let Some(db) = self.db.as_mut() else { return };
        let t0 = Instant::now();
        let before = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        match db.compact() {
            Ok(_) => {
                let after = std::fs::metadata(&self.path).map_or(0, |m| m.len());
                tracing::info!(path = %self.path.display(), before, after, elapsed_ms = t0.elapsed().as_millis() as u64, "store compacted");
            }
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "store compaction failed; the file keeps its size")
            }
        }
    }

    fn apply_ops(&self, ops: &[StoreOp], clock: Clock) -> Result<(), StoreError> {
        self.write(|table, endpoints, nonces| {
            for op in ops {
                match op {
                    StoreOp::Put {
                        prefix,
                        mapping,
                        peer,
                    } => {
                        let value = encode_value(peer, mapping, &clock);
                        table.insert(encode_key(prefix).as_slice(), value.as_slice())?;
                    }
                    StoreOp::Delete(prefix) => {
                        table.remove(encode_key(prefix).as_slice())?;
                    }
                    StoreOp::Endpoint { peer, endpoint } => {
                        endpoints.insert(peer.as_str(), encode_endpoint(*endpoint).as_slice())?;
                    }
                    StoreOp::RegisterNonce { peer, nonce } => {
                        nonces.insert(peer.as_str(), *nonce)?;
                    }
                }
            }
            Ok(())
        })?;
        debug!(ops = ops.len(), "store committed");
        Ok(())
    }

    fn write(
        &self,
        f: impl FnOnce(
            &mut redb::Table<&[u8], &[u8]>,
            &mut redb::Table<&str, &[u8]>,
            &mut redb::Table<&str, u64>,
        ) -> Result<(), redb::StorageError>,
    ) -> Result<(), StoreError> {
        guarded(&self.path, "writing registrations", || {
            let err = self.db_err("write");
            let mut txn = self.db()?.begin_write().map_err(|e| err(e.into()))?;
            txn.set_durability(redb::Durability::Immediate)
                .map_err(|e| err(e.into()))?;
            // Saves the allocator state with each commit, so that opening after
            // a crash does not walk the whole file (start-up stays fast at a
            // million registrations).
            txn.set_quick_repair(true);
            {
                let mut table = txn.open_table(REGISTRATIONS).map_err(|e| err(e.into()))?;
                let mut endpoints = txn.open_table(ENDPOINTS).map_err(|e| err(e.into()))?;
                let mut nonces = txn.open_table(REGISTER_NONCES).map_err(|e| err(e.into()))?;
                f(&mut table, &mut endpoints, &mut nonces).map_err(|e| err(e.into()))?;
            }
            txn.commit().map_err(|e| err(e.into()))
        })
    }

    /// The highest register nonce accepted from each control peer, by name.
    pub fn load_register_nonces(&self) -> Result<Vec<(String, u64)>, StoreError> {
        guarded(&self.path, "loading register nonces", || {
            let err = self.db_err("load register nonces");
            let txn = self.db()?.begin_read().map_err(|e| err(e.into()))?;
            let table = txn.open_table(REGISTER_NONCES).map_err(|e| err(e.into()))?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(|e| err(e.into()))? {
                let (k, v) = entry.map_err(|e| err(e.into()))?;
                out.push((k.value().to_string(), v.value()));
            }
            Ok(out)
        })
    }

    /// The endpoints control peers were last seen at, by peer name. One
    /// that does not decode is logged and skipped.
    pub fn load_endpoints(&self) -> Result<Vec<(String, SocketAddr)>, StoreError> {
        guarded(&self.path, "loading endpoints", || {
            let err = self.db_err("load endpoints");
            let txn = self.db()?.begin_read().map_err(|e| err(e.into()))?;
            let table = txn.open_table(ENDPOINTS).map_err(|e| err(e.into()))?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(|e| err(e.into()))? {
                let (k, v) = entry.map_err(|e| err(e.into()))?;
                match decode_endpoint(v.value()) {
                    Some(ep) => out.push((k.value().to_string(), ep)),
                    None => {
                        warn!(peer = k.value(), path = %self.path.display(), "skipping a stored endpoint that does not decode")
                    }
                }
            }
            Ok(out)
        })
    }

    /// Number of stored records.
    pub fn len(&self) -> Result<u64, StoreError> {
        guarded(&self.path, "counting registrations", || {
            let err = self.db_err("count");
            let txn = self.db()?.begin_read().map_err(|e| err(e.into()))?;
            let table = txn.open_table(REGISTRATIONS).map_err(|e| err(e.into()))?;
            table.len().map_err(|e| err(e.into()))
        })
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}

/// Family byte (4 or 6), address, port (big-endian).
fn encode_endpoint(ep: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(19);
    put_addr(&mut out, ep.ip());
    out.extend_from_slice(&ep.port().to_be_bytes());
    out
}

fn decode_endpoint(b: &[u8]) -> Option<SocketAddr> {
    let (ip, rest): (IpAddr, &[u8]) = match *b.first()? {
        FAMILY_V4 if b.len() == 7 => {
            let o: [u8; 4] = b[1..5].try_into().ok()?;
            (Ipv4Addr::from(o).into(), &b[5..])
        }
        FAMILY_V6 if b.len() == 19 => {
            let o: [u8; 16] = b[1..17].try_into().ok()?;
            (Ipv6Addr::from(o).into(), &b[17..])
        }
        _ => return None,
    };
    Some(SocketAddr::new(
        ip,
        u16::from_be_bytes(rest.try_into().ok()?),
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn put_addr(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => {
            out.push(FAMILY_V4);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(FAMILY_V6);
            out.extend_from_slice(&a.octets());
        }
    }
}

/// The table key of a prefix: instance ID (4 bytes, big-endian), family (4
/// or 6), network address (4 or 16 bytes), prefix length. Big-endian fields
/// keep the file ordered by instance, family and address.
pub fn encode_key(prefix: &EidPrefix) -> Vec<u8> {
    let mut out = Vec::with_capacity(22);
    out.extend_from_slice(&prefix.iid.to_be_bytes());
    put_addr(&mut out, prefix.addr());
    out.push(prefix.prefix_len());
    out
}

/// Reads a key written by [`encode_key`].
pub fn decode_key(bytes: &[u8]) -> Result<EidPrefix, DecodeError> {
    let mut r = Reader(bytes);
    let iid = r.u32("instance ID")?;
    let addr = r.addr()?;
    let len = r.u8("prefix length")?;
    r.end()?;
    let prefix = EidPrefix::new(iid, addr, len).map_err(|e| DecodeError::Prefix(e.to_string()))?;
    if prefix.addr() != addr {
        return Err(DecodeError::Prefix(format!(
            "{addr}/{len} has host bits set"
        )));
    }
    Ok(prefix)
}

/// Encodes a registration. Version 1 layout, integers big-endian:
///
/// ```text
/// u8  version (1)
/// u8  flags: 0x01 a WireGuard key follows, 0x02 an expiry follows
/// u16 map-version
/// u32 TTL in minutes
/// u64 expiry, Unix milliseconds           (if flag 0x02)
/// [32] WireGuard public key               (if flag 0x01)
/// u16 peer-name length, then UTF-8 bytes
/// u8  locator count, then per locator:
///     u8 family (4|6), 4 or 16 address bytes, u8 priority, u8 weight,
///     u8 flags (0x01: port present, 0x02: relayed), u16 port
/// ```
pub fn encode_value(peer: &str, m: &Mapping, clock: &Clock) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + peer.len() + m.rlocs.len() * 22);
    out.push(VALUE_VERSION);
    let mut flags = 0;
    if m.wg_key.is_some() {
        flags |= FLAG_KEY;
    }
    if m.expires.is_some() {
        flags |= FLAG_EXPIRES;
    }
    out.push(flags);
    out.extend_from_slice(&m.map_version.to_be_bytes());
    out.extend_from_slice(&m.ttl_minutes.to_be_bytes());
    if let Some(at) = m.expires {
        out.extend_from_slice(&clock.to_wall_ms(at).to_be_bytes());
    }
    if let Some(key) = &m.wg_key {
        out.extend_from_slice(key);
    }
    // Peer names come from the configuration; one longer than 64 KiB is
    // cut, and then no longer matches a peer at load (the record is dropped).
    let name = &peer.as_bytes()[..peer.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
    let rlocs = &m.rlocs[..m.rlocs.len().min(u8::MAX as usize)];
    out.push(rlocs.len() as u8);
    for r in rlocs {
        put_addr(&mut out, r.addr);
        out.push(r.priority);
        out.push(r.weight);
        let mut lflags = 0;
        if r.port.is_some() {
            lflags |= FLAG_PORT;
        }
        if r.relayed {
            lflags |= FLAG_RELAYED;
        }
        out.push(lflags);
        out.extend_from_slice(&r.port.unwrap_or(0).to_be_bytes());
    }
    out
}

/// Reads a value written by [`encode_value`], converting expiry with `clock`.
pub fn decode_value<'a>(bytes: &'a [u8], clock: &Clock) -> Result<Stored<'a>, DecodeError> {
    let mut r = Reader(bytes);
    let version = r.u8("version").map_err(|_| DecodeError::Empty)?;
    if version != VALUE_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let flags = r.u8("flags")?;
    let map_version = r.u16("map-version")?;
    let ttl_minutes = r.u32("TTL")?;
    let expires = if flags & FLAG_EXPIRES != 0 {
        Some(clock.from_wall_ms(r.u64("expiry")?))
    } else {
        None
    };
    let wg_key = if flags & FLAG_KEY != 0 {
        let mut key = [0u8; 32];
        key.copy_from_slice(r.take(32, "WireGuard key")?);
        Some(key)
    } else {
        None
    };
    let name_len = r.u16("peer-name length")? as usize;
    let peer =
        std::str::from_utf8(r.take(name_len, "peer name")?).map_err(|_| DecodeError::PeerName)?;
    let count = r.u8("locator count")?;
    if count == 0 {
        return Err(DecodeError::NoLocators);
    }
    let mut rlocs = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let addr = r.addr()?;
        let priority = r.u8("priority")?;
        let weight = r.u8("weight")?;
        let port_flags = r.u8("locator flags")?;
        let port = r.u16("port")?;
        rlocs.push(Rloc {
            addr,
            port: (port_flags & FLAG_PORT != 0).then_some(port),
            priority,
            weight,
            relayed: port_flags & FLAG_RELAYED != 0,
        });
    }
    r.end()?;
    Ok(Stored {
        peer,
        mapping: Mapping {
            rlocs: rlocs.into_boxed_slice(),
            wg_key,
            origin: Origin::Static,
            ttl_minutes,
            map_version,
            expires,
        },
    })
}

/// A bounds-checked cursor.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn addr(&mut self) -> Result<IpAddr, DecodeError> {
        match self.u8("address family")? {
            FAMILY_V4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>("IPv4 address")?))),
            FAMILY_V6 => Ok(IpAddr::V6(Ipv6Addr::from(
                self.array::<16>("IPv6 address")?,
            ))),
            other => Err(DecodeError::Family(other)),
        }
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.0.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_shrinks_again_after_many_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
        let clock = Clock::now();
        let m = mapping(&clock);
        let prefixes: Vec<EidPrefix> = (0..COMPACT_AFTER_DELETES as u32)
            .map(|i| EidPrefix::host(0, std::net::Ipv4Addr::from(0x0a00_0000 + i).into()))
            .collect();
        for chunk in prefixes.chunks(1000) {
            let ops: Vec<StoreOp> = chunk
                .iter()
                .map(|p| StoreOp::Put {
                    prefix: *p,
                    mapping: m.clone(),
                    peer: "robot-a".into(),
                })
                .collect();
            store.apply(&ops, clock).unwrap();
        }
        let full = std::fs::metadata(store.path()).unwrap().len();
        for chunk in prefixes.chunks(1000) {
            let ops: Vec<StoreOp> = chunk.iter().map(|p| StoreOp::Delete(*p)).collect();
            store.apply(&ops, clock).unwrap();
        }
        let after = std::fs::metadata(store.path()).unwrap().len();
        assert!(after < full / 2, "compacted: {full} -> {after} bytes");
        assert_eq!(store.len().unwrap(), 0);
    }

    #[test]
    fn an_empty_or_damaged_file_is_a_clear_error_never_a_silent_empty_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, b"").unwrap();
        let Err(e) = Store::open(dir.path(), DEFAULT_CACHE_BYTES) else {
            panic!("refused")
        };
        let shown = e.to_string();
        assert!(
            shown.contains("is empty") && shown.contains(&path.display().to_string()),
            "{shown}"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left as it was");

        // Garbage where the store should be.
        let junk: Vec<u8> = (0..64 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&path, &junk).unwrap();
        let Err(e) = Store::open(dir.path(), DEFAULT_CACHE_BYTES) else {
            panic!("refused")
        };
        let shown = e.to_string();
        assert!(
            shown.contains(&path.display().to_string()) && shown.contains("move it aside"),
            "{shown}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            junk,
            "a damaged file is never overwritten"
        );
    }

    fn mapping(clock: &Clock) -> Mapping {
        Mapping {
            rlocs: vec![
                Rloc {
                    addr: "192.0.2.10".parse().unwrap(),
                    port: Some(51820),
                    priority: 1,
                    weight: 100,
                    relayed: false,
                },
                Rloc {
                    addr: "2001:db8::1".parse().unwrap(),
                    port: None,
                    priority: 2,
                    weight: 0,
                    relayed: true,
                },
            ]
            .into_boxed_slice(),
            wg_key: Some([9; 32]),
            origin: Origin::Static,
            ttl_minutes: 10,
            map_version: 3,
            expires: Some(clock.now + Duration::from_secs(180)),
        }
    }

    #[test]
    fn keys_and_values_round_trip() {
        let clock = Clock::now();
        for prefix in [
            EidPrefix::new(0, "10.1.0.0".parse().unwrap(), 16).unwrap(),
            EidPrefix::new(7, "fd00::".parse().unwrap(), 64).unwrap(),
            EidPrefix::host(u32::MAX, "10.0.0.1".parse().unwrap()),
        ] {
            assert_eq!(decode_key(&encode_key(&prefix)), Ok(prefix));
        }
        let m = mapping(&clock);
        let bytes = encode_value("robot-a", &m, &clock);
        let back = decode_value(&bytes, &clock).unwrap();
        assert_eq!(back.peer, "robot-a");
        let mut expected = m.clone();
        // Wall-clock milliseconds: the round trip is exact to the millisecond.
        let (a, b) = (back.mapping.expires.unwrap(), m.expires.unwrap());
        assert!(a.max(b) - a.min(b) < Duration::from_millis(1));
        expected.expires = back.mapping.expires;
        assert_eq!(back.mapping, expected);
    }

    #[test]
    fn observed_endpoints_persist_and_bad_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
        let a: SocketAddr = "198.51.100.7:40001".parse().unwrap();
        let b: SocketAddr = "[2001:db8::7]:51820".parse().unwrap();
        for ep in [a, b] {
            assert_eq!(decode_endpoint(&encode_endpoint(ep)), Some(ep));
        }
        assert_eq!(decode_endpoint(&[4, 1, 2]), None);
        assert_eq!(decode_endpoint(&[]), None);
        let op = |peer: &str, endpoint| StoreOp::Endpoint {
            peer: peer.into(),
            endpoint,
        };
        store
            .apply(&[op("robot-a", a), op("robot-b", b)], Clock::now())
            .unwrap();
        store.apply(&[op("robot-a", b)], Clock::now()).unwrap();
        drop(store);
        let store = Store::open(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
        let mut got = store.load_endpoints().unwrap();
        got.sort();
        assert_eq!(got, vec![("robot-a".into(), b), ("robot-b".into(), b)]);
    }

    #[test]
    fn expiry_survives_a_restart_as_remaining_time() {
        let before = Clock::now();
        let m = mapping(&before);
        let bytes = encode_value("p", &m, &before);
        // A "restart" 60 s later: a new Instant base, the wall clock moved on.
        let after = Clock {
            now: before.now + Duration::from_secs(1000),
            wall: before.wall + Duration::from_secs(60),
        };
        let left = decode_value(&bytes, &after)
            .unwrap()
            .mapping
            .expires
            .unwrap()
            - after.now;
        assert!(
            left > Duration::from_secs(119) && left <= Duration::from_secs(120),
            "{left:?}"
        );
        // Already past: expired at load.
        let late = Clock {
            now: before.now,
            wall: before.wall + Duration::from_secs(3600),
        };
        let back = decode_value(&bytes, &late).unwrap().mapping;
        assert!(!back.is_live(late.now));
    }

    #[test]
    fn damaged_values_are_typed_errors_never_panics() {
        let clock = Clock::now();
        let good = encode_value("robot-a", &mapping(&clock), &clock);
        // Every truncation, and every single-byte corruption, of a good value.
        for n in 0..good.len() {
            assert!(
                decode_value(&good[..n], &clock).is_err(),
                "truncated to {n}"
            );
        }
        for i in 0..good.len() {
            for x in [0x00, 0xff, 0x80, 0x05] {
                let mut bad = good.clone();
                bad[i] = x;
                let _ = decode_value(&bad, &clock);
            }
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(
            decode_value(&longer, &clock).unwrap_err(),
            DecodeError::Trailing(1)
        );
        let mut v2 = good.clone();
        v2[0] = 2;
        assert_eq!(
            decode_value(&v2, &clock).unwrap_err(),
            DecodeError::UnknownVersion(2)
        );
        assert_eq!(decode_value(&[], &clock).unwrap_err(), DecodeError::Empty);
        assert!(decode_key(&[0, 0, 0, 0, 4, 10, 0, 0, 1, 33]).is_err());
        assert!(
            decode_key(&[0, 0, 0, 0, 4, 10, 0, 0, 1, 8]).is_err(),
            "host bits"
        );
        assert!(decode_key(&[0, 0, 0, 0, 5, 10, 0, 0, 1, 8]).is_err());
    }

    #[test]
    fn applied_ops_survive_reopening_and_bad_records_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let clock = Clock::now();
        let a = EidPrefix::host(0, "10.0.0.1".parse().unwrap());
        let b = EidPrefix::host(0, "10.0.0.2".parse().unwrap());
        {
            let mut store = Store::open(&state, DEFAULT_CACHE_BYTES).unwrap();
            let put = |prefix| StoreOp::Put {
                prefix,
                mapping: mapping(&clock),
                peer: "robot".into(),
            };
            store.apply(&[put(a), put(b)], clock).unwrap();
            store.apply(&[StoreOp::Delete(b)], clock).unwrap();
            // A record from some future format, and a damaged key.
            store
                .write(|t, _, _| {
                    t.insert(encode_key(&b).as_slice(), [9u8, 1, 2].as_slice())?;
                    t.insert([1u8, 2, 3].as_slice(), [1u8].as_slice())?;
                    Ok(())
                })
                .unwrap();
        }
        let mode = std::fs::metadata(&state).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o700
        );
        let store = Store::open(&state, DEFAULT_CACHE_BYTES).unwrap();
        let mut seen = Vec::new();
        let report = store
            .load(clock, |p, s| seen.push((p, s.peer.to_string())))
            .unwrap();
        assert_eq!(seen, vec![(a, "robot".to_string())]);
        assert_eq!(
            report,
            LoadReport {
                loaded: 1,
                undecodable: 2
            }
        );
        assert_eq!(store.len().unwrap(), 3);
    }

    #[test]
    fn a_second_opener_gets_an_error_not_a_shared_file() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
        let second = Store::open(dir.path(), DEFAULT_CACHE_BYTES).unwrap_err();
        assert!(
            second.to_string().contains(FILE_NAME),
            "the error names the file: {second}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), vec![0x5a; 10_000]).unwrap();
        let err = Store::open(dir.path(), DEFAULT_CACHE_BYTES).unwrap_err();
        assert!(err.to_string().contains(FILE_NAME), "{err}");
    }
}
