//! What both daemons tell their service manager, and the signals they take
//! from it besides SIGINT and SIGTERM (which the shells handle).
//!
//! * [`ready`]: `READY=1` to systemd (`Type=notify` units, through
//!   `NOTIFY_SOCKET`), sent once the daemon really serves: its control
//!   tunnel, sockets and telemetry endpoint are up. Nothing is sent when the
//!   daemon was not started by systemd.
//! * [`stopping`]: `STOPPING=1`, when a shutdown begins.
//! * [`ignore_sighup`]: the units' `ExecReload` sends SIGHUP. Reloading the
//!   configuration is not implemented yet, so SIGHUP is logged and ignored
//!   instead of killing the daemon (its default action).

use tokio::signal::unix::{signal, SignalKind};

/// Tells systemd the daemon is ready, with a status line for `systemctl
/// status`.
pub fn ready(status: &str) {
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// Tells systemd the daemon is shutting down.
pub fn stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// Installs a SIGHUP handler that logs and ignores the signal, for as long
/// as the runtime runs. Must be called on a tokio runtime.
pub fn ignore_sighup() -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::warn!("SIGHUP: reload not supported yet; ignored");
        }
    });
    Ok(())
}

/// For the command-line tools (not the daemons): writing to a closed pipe
/// (`map-server status | head`) ends the process quietly, by SIGPIPE (exit
/// status 141 in a shell), as other Unix tools do. Rust ignores SIGPIPE by
/// default, which turns the write into an error and `println!` into a panic.
pub fn restore_default_sigpipe() {
    // SAFETY: changes one signal's disposition, at start-up, before any
    // other thread exists; SIG_DFL is always a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    #[tokio::test]
    async fn sighup_is_logged_and_survived() {
        super::ignore_sighup().unwrap();
        // SAFETY: raise(3) only sends a signal to this process.
        unsafe { libc_raise(1) };
        // Still alive to yield and finish.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    extern "C" {
        #[link_name = "raise"]
        fn libc_raise(sig: i32) -> i32;
    }

    #[test]
    fn ready_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        // The only test of this crate that touches NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &path);
        super::ready("serving");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(msg.contains("READY=1"), "{msg}");
        assert!(msg.contains("STATUS=serving"), "{msg}");
    }
}
