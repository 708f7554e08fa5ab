"""Real servers and fixtures shared by the tests (no mocks of the thing under test)."""
