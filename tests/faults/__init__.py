"""The fault campaign of docs/reliability.md: each test prints its figure and asserts it."""
