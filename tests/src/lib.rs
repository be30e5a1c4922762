//! Fixtures for berth's integration tests (skeleton).
