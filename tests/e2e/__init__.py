"""End-to-end tests: separate processes over loopback."""
