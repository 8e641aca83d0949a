"""Demo stack: fake model servers and a launcher for `make run` and the end-to-end tests."""
