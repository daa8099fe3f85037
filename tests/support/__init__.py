"""Helpers shared by the test modules (real servers and stores, no mocks)."""
