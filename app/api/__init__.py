"""The HTTP layer: routes, dependencies and the one error-to-status mapping."""
