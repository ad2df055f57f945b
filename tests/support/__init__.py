"""Helpers the tests share (on the test path: ``from support.google_dp import ...``)."""
