//! Map-server configuration: a good file loads; every bad one names the
//! file, the field and the problem.

use conf::map_server::MapServerConfig;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

const PUB_A: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
const PRIV_MS: &str = "oJ6xNrlfnmydcY1tSJhHTSUGE5VMRkkuWZdY0cpj4Vc=";

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        let d = Dir(tempfile::tempdir().unwrap());
        d.secret("ms.key", PRIV_MS);
        d.secret("a.site", "site-a\n");
        d
    }
    fn secret(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }
    fn config(&self, text: &str) -> PathBuf {
        self.secret("ms.toml", text)
    }
}

fn good(extra: &str) -> String {
    format!(
        r#"
[control]
interface = "lwms0"
private_key_file = "ms.key"
listen_port = 4340
address = "100.64.0.1/16"

[server]
state_dir = "state"
metrics = "127.0.0.1:9342"

[[peers]]
name = "robot-a"
public_key = "{PUB_A}"
control_address = "100.64.0.2"
site_key_file = "a.site"
eids = [{{ prefix = "10.1.0.1/32" }}, {{ prefix = "10.7.0.0/16", iid = 7, more_specifics = true }}]
{extra}
"#
    )
}

#[test]
fn a_good_file_loads_with_defaults() {
    let d = Dir::new();
    let cfg = MapServerConfig::load(&d.config(&good(""))).unwrap();
    let ctl = cfg.control.as_ref().unwrap();
    assert_eq!(
        (ctl.interface.as_str(), ctl.listen_port, ctl.prefix_len),
        ("lwms0", 4340, 16)
    );
    assert_eq!(
        ctl.private_key.public_key().to_base64(),
        "px9yFaNcbUK2mHMkVTKYTiPntif7mmtVf998ak5qvjc="
    );
    assert_eq!(
        cfg.registration_lifetime.as_secs(),
        180,
        "3 minutes by default"
    );
    assert_eq!(
        cfg.state_dir,
        d.0.path().join("state"),
        "relative paths are relative to the file"
    );
    assert_eq!(
        cfg.peers[0].site_key.as_bytes(),
        b"site-a",
        "trailing newline stripped"
    );
    assert_eq!(cfg.peers[0].eids[1].prefix.iid, 7);
    assert!(cfg.peers[0].eids[1].more_specifics);
    assert!(
        format!("{:?}", cfg).contains("<redacted>"),
        "secrets never printed"
    );
    assert!(!format!("{:?}", cfg).contains("site-a"));
}

fn error_of(text: &str) -> (String, String, PathBuf) {
    let d = Dir::new();
    let path = d.config(text);
    let e = MapServerConfig::load(&path).expect_err("should be refused");
    assert_eq!(e.file, path, "the error names the file");
    let shown = e.to_string();
    assert!(shown.starts_with(&path.display().to_string()), "{shown}");
    (e.field, e.problem, path)
}

#[test]
fn errors_name_the_field_and_the_value() {
    let cases: &[(&str, &str, &str)] = &[
        ("10.1.0.1/33", "peers[0].eids[0].prefix", "prefix length"),
        ("10.1.0.300/32", "peers[0].eids[0].prefix", "10.1.0.300"),
        ("10.1.0.1/24", "peers[0].eids[0].prefix", "host bits"),
    ];
    for (bad, field, needle) in cases {
        let text = good("").replace("10.1.0.1/32", bad);
        let (f, problem, _) = error_of(&text);
        assert_eq!(&f, field);
        assert!(
            problem.contains(needle),
            "{problem} should mention {needle}"
        );
    }
    let (f, p, _) = error_of(&good("").replace(PUB_A, "not-a-key"));
    assert_eq!(
        (f.as_str(), p.contains("public key")),
        ("peers[0].public_key", true)
    );
    let (f, p, _) = error_of(&good("").replace("100.64.0.2", "100.65.0.2"));
    assert_eq!(f, "peers[0].control_address");
    assert!(p.contains("outside the control tunnel"), "{p}");
    let (f, _, _) = error_of(&good("").replace(
        "interface = \"lwms0\"",
        "interface = \"a-very-long-interface\"",
    ));
    assert_eq!(f, "control.interface");
    let (f, p, _) = error_of(&good("").replace("listen_port = 4340", "listen_port = 70000"));
    assert!(
        f.contains("listen_port") || p.contains("listen_port"),
        "{f}: {p}"
    );
    let (f, p, _) = error_of(&good("bogus = 1"));
    assert!(
        p.contains("bogus") || f.contains("bogus"),
        "unknown fields are refused: {f}: {p}"
    );
    let dup = good(&format!(
        "[[peers]]\nname = \"robot-a\"\npublic_key = \"{PUB_A}\"\ncontrol_address = \"100.64.0.9\"\nsite_key_file = \"a.site\"\neids = [{{ prefix = \"10.1.0.9/32\" }}]\n"
    ));
    let (f, _, _) = error_of(&dup);
    assert_eq!(f, "peers[1].name");
}

#[test]
fn type_errors_from_serde_name_the_dotted_field() {
    let text = good("").replace(
        "{ prefix = \"10.1.0.1/32\" }",
        "{ prefix = \"10.1.0.1/32\", iid = \"seven\" }",
    );
    let (f, p, _) = error_of(&text);
    assert_eq!(f, "peers[0].eids[0].iid");
    assert!(p.contains("seven"), "{p}");
}

#[test]
fn secrets_readable_by_others_are_refused() {
    let d = Dir::new();
    let path = d.config(&good(""));
    std::fs::set_permissions(
        d.0.path().join("ms.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let e = MapServerConfig::load(&path).unwrap_err();
    assert_eq!(e.field, "control.private_key_file");
    assert!(e.problem.contains("chmod 600"), "{}", e.problem);

    let d = Dir::new();
    let path = d.config(&good("").replace("site_key_file = \"a.site\"", "site_key = \"inline\""));
    assert!(
        MapServerConfig::load(&path).is_ok(),
        "inline key in a 0600 file is fine"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = MapServerConfig::load(&path).unwrap_err();
    assert_eq!(e.field, "peers[0].site_key");
}

#[test]
fn a_missing_file_or_nothing_to_listen_on_is_explained() {
    let e = MapServerConfig::load(std::path::Path::new("/nonexistent/ms.toml")).unwrap_err();
    assert_eq!(e.problem, "file not found");
    let text = good("").replace("[control]", "[unused]");
    let (_, p, _) = error_of(&text);
    assert!(
        p.contains("unknown field") || p.contains("unused") || p.contains("nothing to listen on"),
        "{p}"
    );
}

#[test]
fn metrics_default_to_loopback_and_an_empty_string_disables_them() {
    let d = Dir::new();
    let cfg =
        MapServerConfig::load(&d.config(&good("").replace("metrics = \"127.0.0.1:9342\"\n", "")))
            .unwrap();
    assert_eq!(cfg.metrics, Some("127.0.0.1:9342".parse().unwrap()));
    let cfg = MapServerConfig::load(
        &d.config(&good("").replace("metrics = \"127.0.0.1:9342\"", "metrics = \"\"")),
    )
    .unwrap();
    assert_eq!(cfg.metrics, None);
}

#[test]
fn the_plain_listener_answers_the_sources_allowed_and_nobody_else_by_default() {
    let d = Dir::new();
    let plain = |extra: &str| {
        good("").replace(
            "metrics = \"127.0.0.1:9342\"",
            &format!("metrics = \"127.0.0.1:9342\"\nplain_listen = \"192.0.2.1:4342\"\n{extra}"),
        )
    };
    let cfg = MapServerConfig::load(&d.config(&plain(""))).unwrap();
    assert!(cfg.plain_allowed.is_empty(), "only the keyless peers");
    let cfg = MapServerConfig::load(&d.config(&plain(
        "plain_allowed = [\"192.0.2.0/24\", \"2001:db8::7\"]",
    )))
    .unwrap();
    let shown: Vec<String> = cfg.plain_allowed.iter().map(|p| p.to_string()).collect();
    assert_eq!(shown, ["192.0.2.0/24", "2001:db8::7/128"]);
    assert!(cfg.plain_allowed[0].contains("192.0.2.200".parse().unwrap()));
    assert!(!cfg.plain_allowed[0].contains("198.51.100.1".parse().unwrap()));
    let (f, p, _) = error_of(&plain(
        "plain_allowed = [\"192.0.2.0/24\", \"192.0.2.0/40\"]",
    ));
    assert_eq!(f, "server.plain_allowed[1]");
    assert!(p.contains("192.0.2.0/40"), "{p}");
    let (f, _, _) = error_of(&plain("plain_allowed = [\"nowhere\"]"));
    assert_eq!(f, "server.plain_allowed[0]");
    let (f, p, _) = error_of(&good("").replace(
        "metrics = \"127.0.0.1:9342\"",
        "metrics = \"127.0.0.1:9342\"\nplain_allowed = [\"192.0.2.0/24\"]",
    ));
    assert_eq!(f, "server.plain_allowed");
    assert!(p.contains("plain_listen"), "{p}");
}

fn second_peer(key: &str, eid: &str) -> String {
    format!(
        "[[peers]]\nname = \"robot-b\"\npublic_key = \"{key}\"\ncontrol_address = \"100.64.0.3\"\nsite_key_file = \"a.site\"\neids = [{{ prefix = \"{eid}\" }}]\n"
    )
}

#[test]
fn peers_that_would_take_each_others_tunnel_or_eids_are_refused_naming_both() {
    // Two peers with one WireGuard key.
    let (f, p, _) = error_of(&good(&second_peer(PUB_A, "10.1.0.2/32")));
    assert_eq!(f, "peers[1].public_key");
    assert!(p.contains("robot-a") && p.contains("robot-b"), "{p}");
    // A peer with the map-server's own key.
    let own = wgctl::keys::PrivateKey::from_base64(PRIV_MS)
        .unwrap()
        .public_key()
        .to_base64();
    let text = good("").replace(PUB_A, &own);
    let (f, p, _) = error_of(&text);
    assert_eq!(f, "peers[0].public_key");
    assert!(p.contains("own key"), "{p}");
    // Overlapping EIDs: robot-a may register anything in 10.7.0.0/16 (iid 7).
    let other = "aANHLyhks4tKhTT3JWdFBj1suhhI4vqrxa/p9XHrhjY=";
    let overlapping = second_peer(other, "10.1.0.1/32");
    let (f, p, _) = error_of(&good(&overlapping));
    assert_eq!(f, "peers[1].eids");
    assert!(p.contains("robot-a") && p.contains("overlap"), "{p}");
    // ... unless the file says it is meant.
    let allowed =
        good(&overlapping).replace("[server]\n", "[server]\nallow_overlapping_eids = true\n");
    let d = Dir::new();
    MapServerConfig::load(&d.config(&allowed)).expect("overlap allowed explicitly");
}

#[test]
fn a_string_where_a_number_or_a_boolean_belongs_is_refused() {
    let text = good("").replace("listen_port = 4340", "listen_port = \"4340\"");
    let (f, p, _) = error_of(&text);
    assert!(f.starts_with("line "), "{f}");
    assert!(p.contains("invalid type"), "{p}");
    let text = good("").replace("[server]\n", "[server]\npush_moves = \"yes\"\n");
    let (_, p, _) = error_of(&text);
    assert!(p.contains("invalid type"), "{p}");
}

#[test]
fn limits_load_with_defaults_and_zero_means_unlimited() {
    let d = Dir::new();
    let cfg = MapServerConfig::load(&d.config(&good(""))).unwrap();
    assert_eq!(cfg.limits.max_records_per_request, 32);
    let text = good("[limits]\nrequests_per_second = 0\nmax_registrations_per_peer = 8\n");
    let cfg = MapServerConfig::load(&d.config(&text)).unwrap();
    assert!(cfg.limits.requests.per_second.is_infinite());
    assert_eq!(cfg.limits.max_registrations_per_peer, 8);
    let (f, _, _) = error_of(&good("[limits]\nrequests_per_second = -3\n"));
    assert_eq!(f, "limits.requests_per_second");
}

#[test]
fn the_names_domain_defaults_and_is_checked() {
    let d = Dir::new();
    let cfg = MapServerConfig::load(&d.config(&good(""))).unwrap();
    assert_eq!(cfg.domain, "lispwg.internal");
    let text = good("").replace("[server]\n", "[server]\ndomain = \"Fleet.Example\"\n");
    let cfg = MapServerConfig::load(&d.config(&text)).unwrap();
    assert_eq!(cfg.domain, "fleet.example");
    let text = good("").replace("[server]\n", "[server]\ndomain = \"-bad.example\"\n");
    let e = MapServerConfig::load(&d.config(&text)).unwrap_err();
    assert_eq!(e.field, "server.domain", "{e}");
}
