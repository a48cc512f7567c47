"""Support code for tests and for the tools built on the tests' fakes (`make demo`)."""
