//! Helpers for the JSON status documents (`serde(serialize_with = ...)`):
//! durations are numbers of seconds (with millisecond precision) in fields
//! named `..._secs`.

use serde::Serializer;
use std::time::Duration;

fn as_secs(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

/// A duration as seconds.
pub fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(as_secs(*d))
}

/// An optional duration as seconds, or `null`.
pub fn opt_secs<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(as_secs(*d)),
        None => s.serialize_none(),
    }
}

/// A `(name, help, kind, value)` metric list as `{name: value}`.
pub fn metric_map<'a, S: Serializer>(
    list: impl IntoIterator<Item = (&'a str, &'a str, &'a str, u64)>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(list.into_iter().map(|(name, _, _, v)| (name, v)))
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize)]
    struct T {
        #[serde(serialize_with = "super::secs")]
        a_secs: std::time::Duration,
        #[serde(serialize_with = "super::opt_secs")]
        b_secs: Option<std::time::Duration>,
        #[serde(serialize_with = "super::opt_secs")]
        c_secs: Option<std::time::Duration>,
    }

    #[test]
    fn durations_are_seconds() {
        let t = T {
            a_secs: std::time::Duration::from_millis(1500),
            b_secs: Some(std::time::Duration::from_secs(3)),
            c_secs: None,
        };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"a_secs":1.5,"b_secs":3.0,"c_secs":null}"#
        );
    }
}
