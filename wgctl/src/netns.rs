//! Network namespaces: wgctl acts on the namespace of the thread that opened
//! the [`crate::Host`]; helper threads (cleanup, wireguard-go supervision)
//! move into it first.

use std::{fs::File, io, os::unix::fs::MetadataExt};

use crate::error::{Error, Result};

/// Link of the calling thread's network namespace; every thread has one.
pub(crate) const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Moves this thread into `netns` unless it is already there.
pub(crate) fn enter_netns(netns: Option<&File>) -> Result<()> {
    let target = netns.ok_or_else(|| {
        Error::io(
            "enter network namespace",
            io::Error::new(io::ErrorKind::NotFound, "namespace handle already released"),
        )
    })?;
    let here = File::open(THREAD_NETNS).and_then(|f| f.metadata());
    let there = target.metadata();
    if let (Ok(here), Ok(there)) = (here, there) {
        if here.ino() == there.ino() && here.dev() == there.dev() {
            return Ok(());
        }
    }
    nix::sched::setns(target, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::io("setns into the host's network namespace", e.into()))
}
