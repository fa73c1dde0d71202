//! The sample configurations the packages install in /etc/lispwg load, once
//! their keys exist: what an operator copies is a working file.

use conf::map_server::MapServerConfig;
use conf::xtr::XtrConfig;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

fn sample(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn secret(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn the_xtr_sample_loads() {
    let dir = tempfile::tempdir().unwrap();
    secret(dir.path(), "robot.key", KEY);
    secret(dir.path(), "site.key", "site-secret\n");
    let file = secret(dir.path(), "xtr.toml", &sample("xtr.toml.sample"));
    let cfg = XtrConfig::load(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.map_servers.len(), 1);
    assert_eq!(cfg.metrics, Some("127.0.0.1:9343".parse().unwrap()));
    assert!(cfg.ignored_env.is_empty());
}

#[test]
fn the_map_server_sample_loads() {
    let dir = tempfile::tempdir().unwrap();
    secret(dir.path(), "ms.key", KEY);
    secret(dir.path(), "robot-a.site", "site-secret\n");
    let file = secret(
        dir.path(),
        "map-server.toml",
        &sample("map-server.toml.sample"),
    );
    let cfg = MapServerConfig::load(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.peers.len(), 1);
    assert_eq!(cfg.state_dir, Path::new("/var/lib/lispwg/map-server"));
}
