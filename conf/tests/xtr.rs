//! xtr configuration: a good file loads; bad ones name file, field, problem.

use conf::xtr::{Mode, XtrConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

const PUB_MS: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
const PRIV: &str = "GHuYXrGdVLXXZHPXvhWkoQEjWkNW6Fo0Bj6r2Hy0sVo=";

fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn good() -> String {
    format!(
        r#"
mode = "mobile-node"
[wireguard]
interface = "lwra"
private_key_file = "a.key"
[control]
address = "100.64.0.2/16"
[[map_servers]]
name = "ms1"
endpoint = "192.0.2.1:4340"
public_key = "{PUB_MS}"
control_address = "100.64.0.1"
site_key = "s3cret"
[[eids]]
prefix = "10.0.0.1/32"
[[rlocs]]
interface = "eth0"
[overlay]
capture = ["10.0.0.0/8"]
"#
    )
}

fn load(text: &str) -> Result<XtrConfig, conf::ConfigError> {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.key", PRIV);
    let path = write(d.path(), "xtr.toml", text);
    XtrConfig::load(&path)
}

#[test]
fn a_good_file_loads_with_defaults() {
    let cfg = load(&good()).unwrap();
    assert_eq!(cfg.mode, Mode::MobileNode);
    assert_eq!(cfg.wireguard.listen_port, 51820);
    assert_eq!(cfg.miss_interface, "lwram");
    assert_eq!(cfg.cache.idle_timeout.as_secs(), 600);
    assert_eq!(cfg.metrics, Some("127.0.0.1:9343".parse().unwrap()));
    assert_eq!(cfg.capture, vec![("10.0.0.0".parse().unwrap(), 8)]);
    assert_eq!(cfg.map_servers[0].site_key.as_bytes(), b"s3cret");
}

#[test]
fn bad_values_are_named() {
    let cases = [
        (good().replace("mobile-node", "robot"), "mode"),
        (good().replace("10.0.0.1/32", "10.0.0.0/24"), "eids"),
        (
            good().replace("192.0.2.1:4340", "192.0.2.1"),
            "map_servers[0].endpoint",
        ),
        (
            good().replace("100.64.0.2/16", "100.64.0.2"),
            "control.address",
        ),
        (good().replace("[\"10.0.0.0/8\"]", "[]"), "overlay.capture"),
        (
            good().replace("mode = \"mobile-node\"", "mode = \"xtr\""),
            "lan",
        ),
        (
            good().replace("interface = \"eth0\"", "interface = \"eth0/bad\""),
            "rlocs[0].interface",
        ),
    ];
    for (text, field) in cases {
        let e = load(&text).expect_err(field);
        assert_eq!(e.field, field, "{e}");
    }
}

#[test]
fn xtr_mode_takes_a_prefix_and_a_lan() {
    let text = good()
        .replace("mode = \"mobile-node\"", "mode = \"xtr\"")
        .replace("10.0.0.1/32", "10.1.0.0/24")
        + "[lan]\ninterface = \"eth1\"\n";
    let cfg = load(&text).unwrap();
    assert_eq!(cfg.mode, Mode::Xtr);
    assert_eq!(cfg.lan_interface.as_deref(), Some("eth1"));
    assert_eq!(cfg.eids[0].prefix_len(), 24);
}

#[test]
fn the_register_hmac_is_sha256_unless_a_map_server_asks_for_sha1() {
    use lisp_wire::KeyId;
    let cfg = load(&good()).unwrap();
    assert_eq!(cfg.map_servers[0].key_id, KeyId::HmacSha256);
    let with = |k: &str| {
        good().replace(
            "site_key = \"s3cret\"",
            &format!("site_key = \"s3cret\"\nkey_id = \"{k}\""),
        )
    };
    assert_eq!(
        load(&with("sha1")).unwrap().map_servers[0].key_id,
        KeyId::HmacSha1
    );
    assert_eq!(
        load(&with("sha256")).unwrap().map_servers[0].key_id,
        KeyId::HmacSha256
    );
    let e = load(&with("md5")).unwrap_err();
    assert_eq!(e.field, "map_servers[0].key_id");
    assert!(e.problem.contains("md5"), "{}", e.problem);
}

#[test]
fn the_dns_listener_defaults_to_the_control_address_and_checks_its_fields() {
    let cfg = load(&good()).unwrap();
    assert!(cfg.dns.enabled && cfg.dns.resolved && cfg.dns.search);
    assert_eq!(cfg.dns.domain, "lispwg.internal");
    assert_eq!(cfg.dns.listen, "100.64.0.2:53".parse().unwrap());
    assert_eq!(cfg.dns.upstream, None, "from /etc/resolv.conf at start");

    let cfg = load(&format!(
        "{}\n[dns]\ndomain = \"Fleet.Example.\"\nport = 5353\nupstream = [\"192.0.2.53\", \"[2001:db8::53]:5300\"]\nsearch = false\n",
        good()
    ))
    .unwrap();
    assert_eq!(cfg.dns.domain, "fleet.example");
    assert_eq!(cfg.dns.listen, "100.64.0.2:5353".parse().unwrap());
    assert_eq!(
        cfg.dns.upstream,
        Some(vec![
            "192.0.2.53:53".parse().unwrap(),
            "[2001:db8::53]:5300".parse().unwrap()
        ])
    );
    assert!(!cfg.dns.search);

    for (section, field) in [
        ("domain = \"a..b\"", "dns.domain"),
        ("port = 0", "dns.port"),
        ("upstream = [\"resolver\"]", "dns.upstream[0]"),
    ] {
        let e = load(&format!("{}\n[dns]\n{section}\n", good())).expect_err(field);
        assert_eq!(e.field, field, "{e}");
    }
}
