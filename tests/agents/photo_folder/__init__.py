"""Tests of the photo-folder agent."""
