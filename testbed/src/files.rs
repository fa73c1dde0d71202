//! Files: keys and secrets (0600), the workspace's binaries, scratch folders.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Writes `contents` to `path` with mode 0600 (keys, site keys, configs: the
/// daemons refuse key files that others can read).
pub fn secret_file(path: &Path, contents: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// Creates `dir` (and its parents) with mode 0700.
pub fn private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// A fresh WireGuard key pair: the private key written to `path` (0600, as
/// `xtr genkey` writes it), the public key returned in base64.
pub fn keypair(path: &Path) -> Result<String> {
    let key = wgctl::keys::PrivateKey::generate();
    secret_file(path, &format!("{}\n", key.to_base64().as_str()))?;
    Ok(key.public_key().to_string())
}

/// The public key of the private key file at `path`.
pub fn public_key_of(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let key = wgctl::keys::PrivateKey::from_base64(text.trim())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(key.public_key().to_string())
}

/// A fresh public key (for mappings of nodes that do not exist).
pub fn random_public_key() -> String {
    wgctl::keys::PrivateKey::generate().public_key().to_string()
}

/// `n` random letters and digits: site keys, TURN secrets.
pub fn random_token(n: usize) -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric.sample_string(&mut rand::thread_rng(), n)
}

/// A place for a test's files, removed at the end.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lispwg-test-")
        .tempdir()
        .expect("create a temporary folder")
}

/// The workspace root (the folder of the top Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testbed/ is inside the workspace")
        .to_path_buf()
}

/// The workspace's target folder (CARGO_TARGET_DIR respected).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(d) if d.is_absolute() => d,
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    }
}

/// `target/debug/<name>`, built (once per process) if it is missing: tests
/// that run alone (`cargo test -p …`) do not build other packages' binaries.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let path = target_dir().join("debug").join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !path.is_file() && !built.iter().any(|b| b == name) {
        let package = if name == "lispwg-lab" {
            "testbed"
        } else {
            name
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "-p", package, "--bin", name])
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build {name}: {e}"));
        assert!(
            status.success(),
            "cargo build -p {package} --bin {name} failed"
        );
        built.push(name.to_owned());
    }
    assert!(path.is_file(), "{} does not exist", path.display());
    path
}

/// The lispwg daemons a lab runs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub dir: PathBuf,
    pub xtr: PathBuf,
    pub map_server: PathBuf,
}

impl Bins {
    /// The binaries in `dir`, which must exist.
    pub fn in_dir(dir: &Path) -> Result<Bins> {
        let bins = Bins {
            dir: dir.to_path_buf(),
            xtr: dir.join("xtr"),
            map_server: dir.join("map-server"),
        };
        for b in [&bins.xtr, &bins.map_server] {
            if !b.is_file() {
                bail!(
                    "{} not found; build the binaries first (cargo build --bins), or name \
                     their folder",
                    b.display()
                );
            }
        }
        Ok(bins)
    }

    /// The workspace's debug binaries, built if missing (for tests).
    pub fn workspace() -> Bins {
        binary("xtr");
        binary("map-server");
        Bins::in_dir(&target_dir().join("debug")).expect("the binaries were just built")
    }

    /// "release" or "debug" (from the folder name), else the folder.
    pub fn profile(&self) -> String {
        match self.dir.file_name().and_then(|n| n.to_str()) {
            Some(n @ ("release" | "debug")) => n.to_string(),
            _ => self.dir.display().to_string(),
        }
    }
}
