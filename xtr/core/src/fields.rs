//! How optional values appear in log fields: as values (or `none`), never
//! as Rust debug text (`Some(…)`).

use std::fmt;

/// An optional value, or `none`.
pub(crate) struct Opt<'a, T>(pub(crate) &'a Option<T>);

impl<T: fmt::Display> fmt::Display for Opt<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_not_debug_text() {
        assert_eq!(Opt(&Some(25u16)).to_string(), "25");
        assert_eq!(Opt::<u16>(&None).to_string(), "none");
    }
}
