"""The reliability tests share the data fixtures of tests/harness (real mp4 files, a tiny synthetic dataset)."""

from reliability_helpers import harness_fixtures

_fixtures = harness_fixtures()
tiny_synth = _fixtures.tiny_synth
index_videos = _fixtures.index_videos
