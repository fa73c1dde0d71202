//! Which WireGuard implementation drives an interface. Robots have the kernel
//! module; development and CI machines only have wireguard-go, so the choice is
//! made at run time unless the config forces it.

use std::{fmt, str::FromStr};

use crate::error::{Error, Result};

/// What the config asks for (`backend = "auto" | "kernel" | "userspace"`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Kernel WireGuard when this host can create a `wireguard` link, else
    /// wireguard-go.
    #[default]
    Auto,
    /// Kernel WireGuard over generic netlink; fails if the module is missing.
    Kernel,
    /// wireguard-go, started and supervised by wgctl, configured over UAPI.
    Userspace,
}

/// The implementation actually in use for an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Kernel,
    Userspace,
}

/// Whether the kernel can create `wireguard` links, as found by a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelSupport {
    Available,
    Missing,
}

impl BackendKind {
    /// Turns the configured choice into a backend, given what the kernel
    /// supports. Kept free of I/O so the policy is testable on any host.
    pub fn resolve(self, kernel: KernelSupport) -> Result<Backend> {
        match (self, kernel) {
            (BackendKind::Userspace, _) => Ok(Backend::Userspace),
            (BackendKind::Auto | BackendKind::Kernel, KernelSupport::Available) => {
                Ok(Backend::Kernel)
            }
            (BackendKind::Auto, KernelSupport::Missing) => Ok(Backend::Userspace),
            (BackendKind::Kernel, KernelSupport::Missing) => Err(Error::KernelModuleMissing),
        }
    }

    /// Whether resolving this choice needs a kernel probe at all.
    pub fn needs_probe(self) -> bool {
        self != BackendKind::Userspace
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Auto => "auto",
            BackendKind::Kernel => "kernel",
            BackendKind::Userspace => "userspace",
        })
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendKind::Auto),
            "kernel" => Ok(BackendKind::Kernel),
            "userspace" => Ok(BackendKind::Userspace),
            other => Err(format!(
                "unknown WireGuard backend {other:?}: expected auto, kernel or userspace"
            )),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace",
        })
    }
}

impl Backend {
    pub(crate) fn to_wgc(self) -> wireguard_control::Backend {
        match self {
            Backend::Kernel => wireguard_control::Backend::Kernel,
            Backend::Userspace => wireguard_control::Backend::Userspace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::{value::StrDeserializer, IntoDeserializer};

    #[test]
    fn selection_policy() {
        use BackendKind::*;
        use KernelSupport::*;
        assert_eq!(Auto.resolve(Available).unwrap(), Backend::Kernel);
        assert_eq!(Auto.resolve(Missing).unwrap(), Backend::Userspace);
        assert_eq!(Kernel.resolve(Available).unwrap(), Backend::Kernel);
        assert!(matches!(
            Kernel.resolve(Missing),
            Err(Error::KernelModuleMissing)
        ));
        assert_eq!(Userspace.resolve(Available).unwrap(), Backend::Userspace);
        assert_eq!(Userspace.resolve(Missing).unwrap(), Backend::Userspace);
        assert!(!Userspace.needs_probe());
        assert!(Auto.needs_probe() && Kernel.needs_probe());
    }

    #[test]
    fn deserialises_lowercase_names_only() {
        for (text, kind) in [
            ("auto", BackendKind::Auto),
            ("kernel", BackendKind::Kernel),
            ("userspace", BackendKind::Userspace),
        ] {
            let de: StrDeserializer<'_, serde::de::value::Error> = text.into_deserializer();
            assert_eq!(
                <BackendKind as serde::Deserialize>::deserialize(de).unwrap(),
                kind
            );
            assert_eq!(text.parse::<BackendKind>().unwrap(), kind);
            assert_eq!(kind.to_string(), text);
        }
        for bad in ["Kernel", "wireguard-go", ""] {
            let de: StrDeserializer<'_, serde::de::value::Error> = bad.into_deserializer();
            assert!(<BackendKind as serde::Deserialize>::deserialize(de).is_err());
            assert!(bad.parse::<BackendKind>().is_err());
        }
        assert_eq!(BackendKind::default(), BackendKind::Auto);
    }
}
