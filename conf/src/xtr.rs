//! xtr configuration (filled in by the xtr issue).
