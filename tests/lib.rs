//! Shared helpers for the netns integration tests.
