//! Environment overrides (in their own test binary: they change the
//! process environment).

use conf::map_server::MapServerConfig;
use std::os::unix::fs::PermissionsExt;

#[test]
fn known_overrides_apply_and_stray_variables_are_ignored() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("ms.toml");
    std::fs::write(
        &path,
        "[server]\nplain_listen = \"127.0.0.1:4342\"\nmetrics = \"127.0.0.1:9342\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // SAFETY: this test binary has a single test, so no other thread reads
    // the environment concurrently.
    unsafe {
        std::env::set_var("LISPWG_MS__SERVER__METRICS", "127.0.0.1:9999");
        std::env::set_var("LISPWG_MS__SERVER__REGISTRATION_LIFETIME_SECS", "60");
        std::env::set_var("LISPWG_MS__UNRELATED", "x");
    }
    let cfg = MapServerConfig::load(&path).unwrap();
    assert_eq!(cfg.metrics, Some("127.0.0.1:9999".parse().unwrap()));
    assert_eq!(cfg.registration_lifetime.as_secs(), 60);
    assert_eq!(cfg.ignored_env, vec!["LISPWG_MS__UNRELATED".to_string()]);
}
