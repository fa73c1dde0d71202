//! coturn in the lab, on the map-server's host: it starts in its namespace,
//! answers a STUN binding request over UDP with the address it sees (the
//! NAT's public one for a robot behind a NAT), listens on TCP 3478 and TLS
//! 443, and is stopped by its PID with the lab.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;
use testbed::turn::{stun_binding, TURN_PORT, TURN_TLS_PORT};
use testbed::{Lab, LabSpec, NatKind, Segment};

fn relay_lab(tag: &str) -> Lab {
    Lab::for_test(
        LabSpec::campus()
            .tag(tag)
            .idle_all()
            .coturn()
            .nat("n1", NatKind::Eim, Segment::SubnetA)
            .behind("robot-b", "n1")
            .without("edge"),
    )
}

#[test]
fn coturn_answers_stun_with_the_address_it_sees_and_listens_on_tcp_and_tls() {
    let lab = relay_lab("rs");
    let server = SocketAddr::new(lab.address("ms"), TURN_PORT);
    // Where coturn sees a socket of `node` bound to port 40000.
    let seen_from = |node: &str| {
        lab.ns(node)
            .run(|| {
                let sock = UdpSocket::bind("0.0.0.0:40000")?;
                stun_binding(&sock, server, Duration::from_secs(2))
            })
            .unwrap()
            .unwrap()
    };
    let a = lab.ns("robot-a");
    assert_eq!(
        seen_from("robot-a"),
        SocketAddr::new(lab.address("robot-a"), 40000)
    );
    // Behind the NAT, coturn sees the NAT's public address.
    assert_eq!(
        seen_from("robot-b"),
        SocketAddr::new(lab.address("n1"), 40000)
    );
    for port in [TURN_PORT, TURN_TLS_PORT] {
        let to = SocketAddr::new(lab.address("ms"), port);
        let connected = a
            .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)))
            .unwrap();
        assert!(connected.is_ok(), "TCP {to}: {connected:?}");
    }
    // TLS on 443 with the lab's self-signed certificate.
    let to = format!("{}:{TURN_TLS_PORT}", lab.address("ms"));
    let tls = lab.exec(
        "robot-a",
        &[
            "timeout", "5", "openssl", "s_client", "-connect", &to, "-brief",
        ],
    );
    let text = testbed::output_text(&tls);
    assert!(
        text.contains("CONNECTION ESTABLISHED") && text.contains("turn.lispwg.lab"),
        "{text}"
    );
}

#[test]
fn coturn_relays_with_rest_api_credentials_and_refuses_a_wrong_password() {
    let lab = relay_lab("rc");
    let (user, password) = lab
        .turn_credentials("robot-a", Duration::from_secs(600))
        .unwrap();
    assert!(user.ends_with(":robot-a"), "{user}");
    // coturn's own test client: two allocations on the relay, 3 messages
    // from one to the other through it.
    let uclient = |password: &str| {
        let ms = lab.address("ms").to_string();
        let out = lab.exec(
            "robot-a",
            &[
                "timeout",
                "10",
                "turnutils_uclient",
                "-y",
                "-n",
                "3",
                "-m",
                "1",
                "-u",
                &user,
                "-w",
                password,
                &ms,
            ],
        );
        testbed::output_text(&out)
    };
    let ok = uclient(&password);
    assert!(ok.contains("Total lost packets 0"), "{ok}");
    let refused = uclient("not-the-password");
    assert!(refused.contains("Cannot complete Allocation"), "{refused}");
}
