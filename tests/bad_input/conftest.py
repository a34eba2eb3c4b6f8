"""The bad-input corpus is data for tests/test_bad_input.py, not suites to collect."""

collect_ignore_glob = ["*"]
