"""Tests of the active-directory agent (most run against the session's Samba AD DC)."""
