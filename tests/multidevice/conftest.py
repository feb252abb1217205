"""Tests that need 8 devices: they run in one child pytest process with 8 simulated CPU devices.

XLA fixes the number of host devices when the JAX backend starts, and `python -m pytest` runs the
whole suite in one process whose backend is started early (test modules such as test_checkpointing
read `jax.devices()` at import). Two designs were possible:

  (a) the whole suite on 8 host devices (XLA_FLAGS set in the root conftest). The in-process
      trainers of test_finetune use the default mesh (`data: -1`) and would train 8-way data
      parallel instead of on one device, which changes what those tests check, and cost more: two
      of them took 126 s of CPU instead of 93 s. Every other test would also run beside 7 idle devices.
  (b) this folder runs in a child pytest with the flag, and each test's outcome is reported back
      under its own name (chosen).

So, in the suite's process, every test collected here is replaced by a stand-in item with the same
node id; the first one to run starts one child `pytest` on exactly the selected node ids (with
`--xla_force_host_platform_device_count=8`, JAX_PLATFORMS=cpu, and, as the end-to-end tests' child
processes, `--xla_backend_optimization_level=0`: the tests compare sharded against single-device
results inside one process, and compiling costs a third less CPU), which writes one JSON line per test;
each stand-in then passes, fails (with the child's traceback and captured output) or skips as its
test did. `-k`/`-m` selections and per-test reports therefore work as usual; the first stand-in's
duration includes the whole child run. A process started with the flag already (the child, or a user
running `XLA_FLAGS=--xla_force_host_platform_device_count=8 pytest tests/multidevice`) runs the tests
in place.

The test modules here must not start the JAX backend at import time (the suite's process imports
them to collect them); the `devices` fixture gives the 8 devices.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

NUM_DEVICES = 8
HERE = pathlib.Path(__file__).resolve().parent
_REPORT_ENV = "MIDIBERT_MULTIDEVICE_REPORT"  # set in the child: where it writes one JSON line per test
_CHILD_TIMEOUT_S = 1200
_results_key = pytest.StashKey[dict]()


def forced_device_count(xla_flags: str) -> int:
    """The host device count that `xla_flags` forces (1 when it forces none)."""
    counts = re.findall(r"--xla_force_host_platform_device_count=(\d+)", xla_flags)
    return int(counts[-1]) if counts else 1


IN_PLACE = forced_device_count(os.environ.get("XLA_FLAGS", "")) >= NUM_DEVICES


@pytest.fixture(scope="session")
def devices():
    """The 8 CPU devices the tests here shard over."""
    import jax  # pylint: disable=import-outside-toplevel

    found = jax.devices("cpu")
    assert len(found) >= NUM_DEVICES, f"need {NUM_DEVICES} CPU devices, have {found} (XLA_FLAGS not applied?)"
    return found[:NUM_DEVICES]


def _is_here(item: pytest.Item) -> bool:
    return HERE in pathlib.Path(item.path).resolve().parents


class ChildFailure(Exception):
    """A test failed (or errored) in the child process; the message is the child's report."""


class ChildResult(pytest.Item):
    """Stand-in for a test of this folder: reports what the test did in the child process."""

    def runtest(self) -> None:
        results = _child_results(self.config, self.session)
        outcome = results.get(self.nodeid)
        if outcome is None:
            raise ChildFailure(f"no result from the multi-device child for {self.nodeid}:\n{results['<child>']}\n"
                               f"(child work folder: {results.get('<workdir>')})")
        if outcome["outcome"] == "skipped":
            pytest.skip(outcome["text"])
        if outcome["outcome"] == "failed":
            raise ChildFailure(f"{outcome['text']}\n(child work folder: {results['<workdir>']})")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ChildFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, self.name


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: the child runs exactly what was selected
def pytest_collection_modifyitems(session, config, items):
    if IN_PLACE:
        return
    for i, item in enumerate(items):
        if _is_here(item):
            stand_in = ChildResult.from_parent(item.parent, name=item.name)
            stand_in.own_markers.extend(item.own_markers)
            stand_in.keywords.update(item.keywords)
            items[i] = stand_in


def _child_results(config: pytest.Config, session: pytest.Session) -> dict:
    """{node id: {'outcome', 'text'}} of one child run over every stand-in; run on first use."""
    if _results_key in config.stash:
        return config.stash[_results_key]
    nodeids = [item.nodeid for item in session.items if isinstance(item, ChildResult)]
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="multidevice-"))
    report = workdir / "results.jsonl"
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if "device_count" not in f and "optimization_level" not in f]
    flags += [f"--xla_force_host_platform_device_count={NUM_DEVICES}", "--xla_backend_optimization_level=0"]
    env = dict(
        os.environ,
        XLA_FLAGS=" ".join(flags),
        JAX_PLATFORMS="cpu",
        **{_REPORT_ENV: str(report)},
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={workdir / 'tmp'}"]
    if config.inipath is not None:
        command += ["-c", str(config.inipath)]
    try:
        proc = subprocess.run(command + ["--rootdir", str(config.rootpath), *nodeids], cwd=config.rootpath,
                              env=env, capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S)
        passed = proc.returncode == 0
        child = f"exit status {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    except subprocess.TimeoutExpired as e:
        passed, child = False, f"timed out after {_CHILD_TIMEOUT_S} s\n{(e.stdout or b'')[-6000:]!r}"
    results: dict = {"<child>": child}
    if report.exists():
        for line in report.read_text().splitlines():
            entry = json.loads(line)
            results[entry["nodeid"]] = entry
    if passed:
        shutil.rmtree(workdir)
    else:  # the child's tmp_path folders stay for inspection
        results["<workdir>"] = str(workdir)
    config.stash[_results_key] = results
    return results


def _merge(previous: dict | None, report: pytest.TestReport) -> dict:
    """One test's outcome over its setup/call/teardown reports: the first failure or skip wins."""
    if previous is not None and previous["outcome"] != "passed":
        return previous
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        return {"nodeid": report.nodeid, "outcome": "skipped", "text": report.longrepr[2]}
    crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", "")
    text = f"{crash.splitlines()[0] if crash else report.outcome}  [in the {NUM_DEVICES}-device child process]\n\n"
    text += report.longreprtext
    for title, content in report.sections:
        text += f"\n----- {title} -----\n{content}"
    return {"nodeid": report.nodeid, "outcome": report.outcome, "text": text}


_child_outcomes: dict[str, dict] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """In the child: record each test's outcome once its teardown has run."""
    path = os.environ.get(_REPORT_ENV)
    if not path or not IN_PLACE:
        return
    _child_outcomes[report.nodeid] = _merge(_child_outcomes.get(report.nodeid), report)
    if report.when == "teardown":
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_child_outcomes.pop(report.nodeid)) + "\n")
