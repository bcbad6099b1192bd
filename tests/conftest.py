"""Offline, CPU-only test setup shared by the whole suite."""

import os

# No code path may wait on the Hub: everything is built from configs in `trl_rpo.testing`.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite's datasets caches (DPO precompute caches among them) live in a folder of this run, not the user's cache.
if "HF_DATASETS_CACHE" not in os.environ:
    import tempfile

    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="trl-rpo-tests-datasets-")

import pytest  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    # A run in which nothing passed (everything skipped or deselected) must not look green in CI.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and exitstatus == 0 and not reporter.stats.get("passed"):
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
