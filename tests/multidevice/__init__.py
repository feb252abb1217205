"""Tests that need 8 devices (see conftest.py); a package so its conftest does not shadow tests/conftest.py."""
