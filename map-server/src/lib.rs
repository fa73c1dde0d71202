//! map-server (placeholder crate; filled in by its issue).
