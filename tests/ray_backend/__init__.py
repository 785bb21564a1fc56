"""The Ray-backend tests (a package, so its fixtures can be package-scoped)."""
