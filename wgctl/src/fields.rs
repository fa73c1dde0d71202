//! How optional and list values appear in log fields: as values (`none`,
//! `10.0.0.2/32,10.1.0.0/24`), never as Rust debug text (`Some(…)`, `[…]`).

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

/// A list of values, comma-separated (empty: `none`).
pub(crate) struct List<'a, T>(pub(crate) &'a [T]);

impl<T: fmt::Display> fmt::Display for List<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            v.fmt(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_not_debug_text() {
        assert_eq!(Opt(&Some(25u16)).to_string(), "25");
        assert_eq!(Opt::<u16>(&None).to_string(), "none");
        assert_eq!(List(&["a", "b"]).to_string(), "a,b");
        assert_eq!(List::<&str>(&[]).to_string(), "none");
    }
}
