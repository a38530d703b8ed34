"""Test and benchmark helpers shipped with mvsync (synthetic connectors, server harnesses)."""
