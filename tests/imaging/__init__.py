"""Tests of connector.imaging."""
