"""The paper's claim, testable on any labelled data: adversarial vs. random masking vs. no pre-training.

    report = run_experiment(config, "runs/experiment")    # configs/experiment.py; writes experiment.json/.png

Every arm x seed is an ordinary pre-training run and every arm x seed x task x protocol x fraction an
ordinary fine-tuning run (`train_and_evaluate` of train/pretrain.py and train/finetune.py), its best
checkpoint by validation accuracy evaluated on the test split (`evaluate.evaluate_workdir`). Layout:

    <workdir>/pretrain/<arm>_s<seed>/                                   (no folder for the 'none' arm)
    <workdir>/finetune/<task>/<arm>_s<seed>_<protocol>_f<fraction>/     (+ experiment_run.json once done)
    <workdir>/experiment.json, experiment.md, experiment.png

A fine-tuning run is finished when its folder holds `experiment_run.json` and an `eval_test.json` of
its current best step, newer than its newest checkpoint: running again reuses it (even when the
config changed since: a note says which keys; delete the folder to redo it), resumes an interrupted
run and starts the others. The aggregation (`summarize`) covers the finished runs and says which are
missing. A finished run's results are its record, eval_test.json and metrics: its checkpoints may go (a
copy made with `rsync -a --exclude checkpoints` continues elsewhere); a pre-training run is redone only
while a fine-tuning run still needs it, and its parameter fingerprint (`params_sha256`, also in every
record it started) says whether the redone encoder is the recorded one. Pure functions below the runner:
they are tested on synthetic numbers.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Any, Callable, Sequence

import ml_collections
from etils import epath

from midibert_jax import console, flags, paths
from midibert_jax.config_loading import ConfigError, apply_override, load_config, refuse_unread
from midibert_jax.experiment_report import ARMS, PROTOCOLS, build_report, machine_info, print_table, write_report

# Keys of the run configs that the experiment sets itself (from the arm, seed, protocol, fraction).
PRETRAIN_MANAGED = ("seed", "masking.policy")
FINETUNE_MANAGED = ("seed", "data.max_len", "train.init_from", "train.from_scratch", "train.freeze_encoder",
                    "train.piece_fraction")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_LABELLED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.+)$")


# ----------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class PretrainRun:
    """One pre-training run of the plan."""

    arm: str
    seed: int
    workdir: str
    config: ml_collections.ConfigDict = dataclasses.field(compare=False, repr=False)

    def describe(self) -> str:
        return f"pretrain {self.arm} seed {self.seed}"


@dataclasses.dataclass(frozen=True)
class FinetuneRun:
    """One fine-tuning run of the plan; `pretrain_workdir` is None for the 'none' arm."""

    task: str
    arm: str
    seed: int
    protocol: str
    fraction: float
    workdir: str
    pretrain_workdir: str | None
    config: ml_collections.ConfigDict = dataclasses.field(compare=False, repr=False)

    def describe(self) -> str:
        return f"finetune {self.task} {self.arm} seed {self.seed} {self.protocol} fraction {self.fraction:g}"

    def key(self) -> dict[str, Any]:
        return {"task": self.task, "arm": self.arm, "seed": self.seed, "protocol": self.protocol,
                "fraction": self.fraction}


@dataclasses.dataclass(frozen=True)
class Plan:
    """All runs in execution order: per seed, per arm, its pre-training then its fine-tuning runs."""

    runs: tuple[PretrainRun | FinetuneRun, ...]

    @property
    def pretrain(self) -> list[PretrainRun]:
        return [r for r in self.runs if isinstance(r, PretrainRun)]

    @property
    def finetune(self) -> list[FinetuneRun]:
        return [r for r in self.runs if isinstance(r, FinetuneRun)]


def task_entry(entry: str) -> tuple[str, str]:
    """A `tasks` item -> (name, config spec): `NAME=PATH:ARG`, or `PATH:ARG` named after ARG's first item."""
    labelled = _LABELLED.match(entry)
    if labelled:
        return labelled.group(1), labelled.group(2)
    path, _, arg = entry.partition(":")
    name = arg.split(",")[0].strip() if arg else os.path.splitext(os.path.basename(path))[0]
    return name, entry


def flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A nested ConfigDict / dict -> [(dotted key, leaf value)], in insertion order."""
    if tree is None:
        return []
    out = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            out.extend(flatten(value, dotted + "."))
        else:
            out.append((dotted, value))
    return out


def _apply(config: ml_collections.ConfigDict, values: Any, where: str, managed: Sequence[str], spec: str) -> None:
    """Sets the (nested) `values` on `config` (loaded from `spec`), type-checked; errors name the experiment
    key `where`. A `data.*` key the variant does not read is refused (`refuse_unread`: no silent wrong
    dataset); other keys' readers depend on what the experiment sets per arm, so they are not checked here."""
    items = flatten(values)
    for key, value in items:
        if key in managed:
            raise ConfigError(f"{where}.{key}: set by the experiment itself (from the arm, seed, protocol or "
                              "fraction); remove it")
        try:
            apply_override(config, key, value if isinstance(value, str) else repr(value))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e
    refuse_unread(config, [key for key, _ in items if key.startswith("data.")], spec, flag=f"{where}.")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the key of an experiment config field that cannot be used."""
    def fail(key: str, why: str):
        raise ConfigError(f"{key}={config.get(key)!r}: {why}")

    if not config.arms or set(config.arms) - set(ARMS) or len(set(config.arms)) != len(config.arms):
        fail("arms", f"must be distinct items of {ARMS}")
    if not config.seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in config.seeds) \
            or len(set(config.seeds)) != len(config.seeds):
        fail("seeds", "must be distinct non-negative integers")
    pretrain_seeds = tuple(config.get("pretrain_seeds", ()) or ())
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in pretrain_seeds) \
            or len(set(pretrain_seeds)) != len(pretrain_seeds):
        fail("pretrain_seeds", "must be distinct non-negative integers (empty: each replicate its own `seeds` item)")
    if not config.protocols or set(config.protocols) - set(PROTOCOLS) or len(set(config.protocols)) != len(config.protocols):
        fail("protocols", f"must be distinct items of {PROTOCOLS}")
    if not config.fractions or any(not isinstance(f, (int, float)) or not 0.0 < f <= 1.0 for f in config.fractions) \
            or len(set(config.fractions)) != len(config.fractions):
        fail("fractions", "must be distinct numbers in (0, 1] (fractions of the training pieces)")
    if not config.tasks:
        fail("tasks", "name at least one fine-tuning config (e.g. configs/finetune.py:demo_note,runlocal)")
    names = [task_entry(t)[0] for t in config.tasks]
    for name in names:
        if not _NAME.match(name):
            fail("tasks", f"task name {name!r} is not a folder name; write NAME=PATH:ARG")
    if len(set(names)) != len(names):
        fail("tasks", f"two tasks share a name ({names}); write NAME=PATH:ARG to tell them apart")
    if unknown := set(config.task_overrides.keys()) - set(names):
        fail("task_overrides", f"{sorted(unknown)} name no task (tasks: {names})")
    if unknown := set(config.protocol_overrides.keys()) - set(PROTOCOLS):
        fail("protocol_overrides", f"{sorted(unknown)} name no protocol of {PROTOCOLS}")
    if not config.metrics:
        fail("metrics", "name at least one test metric (accuracy, macro_f1, piece_accuracy)")
    roots = config.get("roots") or {}
    if unknown := set(config.pretrain.get("sources", ()) or ()) - set(roots.keys()):
        fail("pretrain.sources", f"{sorted(unknown)} name no dataset of `roots` ({sorted(roots.keys())})")


def dataset_root(config: ml_collections.ConfigDict, dataset: str, used_by: str) -> str:
    """The user's folder of a task dataset (`roots.<dataset>`); ConfigError naming the key when unset."""
    root = (config.get("roots") or {}).get(dataset, "")
    if not root:
        raise ConfigError(f"roots.{dataset} is empty but {used_by} needs the {dataset} dataset: pass "
                          f"--config.roots.{dataset}=DIR (your download; docs/datasets.md says where to get it)")
    return root


def pretrain_config(config: ml_collections.ConfigDict, arm: str, seed: int) -> ml_collections.ConfigDict:
    """The pre-training config of `arm` ('adversarial' | 'random') and `seed`."""
    pre = load_config(config.pretrain.spec)
    _apply(pre, config.pretrain.overrides, "pretrain.overrides", PRETRAIN_MANAGED, config.pretrain.spec)
    if pre.masking.policy != "adversarial":
        raise ConfigError(f"pretrain.spec={config.pretrain.spec!r} sets masking.policy={pre.masking.policy!r}: "
                          "give the adversarial arm's config; the random arm adds masking=random to it")
    if pre.data.dataset == "tasks":  # the task datasets' training splits (configs/prepare.py:tasks)
        for dataset in config.pretrain.get("sources", ()) or ():
            pre.data.task_roots[dataset] = dataset_root(config, dataset, "pretrain.sources")
        pre.data.extra_folders = tuple(config.pretrain.get("extra_folders", ()) or ()) or pre.data.extra_folders
    pre.seed = seed
    if arm == "random":  # what configs/pretrain.py's masking=random modifier does
        pre.masking.policy = "random"
        pre.mask_book.every = 0
    if pre.optim.schedule == "warmup_cosine" and pre.optim.warmup_steps >= pre.train.steps:
        pre.optim.warmup_steps = pre.train.steps // 10  # a short run: warmup must stay below the steps
    return pre


def finetune_config(config: ml_collections.ConfigDict, spec: str, task: str, arm: str, seed: int, protocol: str,
                    fraction: float, pre: ml_collections.ConfigDict, pre_dir: str | None) -> ml_collections.ConfigDict:
    """The fine-tuning config of one run; windows and encoder architecture are the pre-training config's."""
    from midibert_jax.data import tasks  # pylint: disable=import-outside-toplevel
    from midibert_jax.train import warm_start  # pylint: disable=import-outside-toplevel

    ft = load_config(spec)
    _apply(ft, config.finetune.overrides, "finetune.overrides", FINETUNE_MANAGED, spec)
    _apply(ft, config.task_overrides.get(task), f"task_overrides.{task}", FINETUNE_MANAGED, spec)
    _apply(ft, config.protocol_overrides.get(protocol), f"protocol_overrides.{protocol}", FINETUNE_MANAGED, spec)
    dataset = tasks.get_task(ft.data.task).dataset
    if dataset in (config.get("roots") or {}) and not ft.data.root:
        ft.data.root = dataset_root(config, dataset, f"task {task!r}")
    ft.seed = seed
    ft.data.max_len = pre.data.max_len
    # The same encoder in every arm (the pre-trained arms take it from init_from anyway).
    for name in warm_start.ARCHITECTURE_FIELDS:
        if name in pre.model and name in ft.model:
            ft.model[name] = pre.model[name]
    ft.train.init_from = pre_dir or ""
    ft.train.from_scratch = pre_dir is None  # the 'scratch' modifier
    ft.train.freeze_encoder = protocol == "probe"  # the 'probe' modifier
    ft.train.piece_fraction = float(fraction)
    return ft


def pretrain_seed(config: ml_collections.ConfigDict, replicate: int) -> int:
    """The pre-training seed of replicate `replicate` (position in `seeds`): `pretrain_seeds` in turn, else its own seed."""
    pretrain_seeds = tuple(config.get("pretrain_seeds", ()) or ())
    return pretrain_seeds[replicate % len(pretrain_seeds)] if pretrain_seeds else config.seeds[replicate]


def plan(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Plan:
    """Every run of the experiment, with its config (loaded and checked; nothing built or compiled)."""
    check_config(config)
    root = paths.resolve(workdir)
    tasks = [task_entry(t) for t in config.tasks]
    runs: list[PretrainRun | FinetuneRun] = []
    planned: set[str] = set()
    for i, seed in enumerate(config.seeds):
        pre_seed = pretrain_seed(config, i)
        for arm in config.arms:
            pre = pretrain_config(config, "adversarial" if arm == "none" else arm, pre_seed)
            pre_dir = None
            if arm != "none":
                pre_dir = os.fspath(root / "pretrain" / f"{arm}_s{pre_seed}")
                if pre_dir not in planned:  # shared by the replicates that reuse this pre-training seed
                    planned.add(pre_dir)
                    runs.append(PretrainRun(arm, pre_seed, pre_dir, pre))
            for name, spec in tasks:
                for protocol in config.protocols:
                    for fraction in config.fractions:
                        workdir_ = os.fspath(root / "finetune" / name / f"{arm}_s{seed}_{protocol}_f{fraction:g}")
                        ft = finetune_config(config, spec, name, arm, seed, protocol, fraction, pre, pre_dir)
                        runs.append(FinetuneRun(name, arm, seed, protocol, float(fraction), workdir_, pre_dir, ft))
    return Plan(tuple(runs))


# ----------------------------------------------------------------------------- running


def held_out_pieces(dataset_dir: str | os.PathLike) -> set[str]:
    """Keys of the pieces in a built dataset's validation and test splits (from its manifest)."""
    from midibert_jax.data import manifest  # pylint: disable=import-outside-toplevel

    return {r.path for r in manifest.Manifest.load(dataset_dir).records if r.split in ("validation", "test")}


def hold_out_demo_pieces(the_plan: Plan, say: Callable[[str], Any] = print) -> int:
    """When pre-training reads the demo corpus and a task is a demo task, keeps the task's validation and
    test pieces out of pre-training (builds the tasks' datasets to know them). Returns how many."""
    from midibert_jax.data import prepare, tasks  # pylint: disable=import-outside-toplevel

    demo_runs = [r for r in the_plan.pretrain if r.config.data.dataset == "demo"]
    data_blocks = {}
    for run in the_plan.finetune:
        if tasks.get_task(run.config.data.task).dataset == "demo":
            data_blocks.setdefault(run.config.data.to_json(), run.config.data)
    if not demo_runs or not data_blocks:
        return 0
    say("[experiment] building the demo tasks' datasets: their validation and test pieces stay out of pre-training")
    held = set()
    for data in data_blocks.values():
        held |= held_out_pieces(prepare.prepare(data))
    for run in demo_runs:
        run.config.data.demo.exclude = tuple(sorted(held | set(run.config.data.demo.exclude)))
    return len(held)


def validate(the_plan: Plan) -> None:
    """Checks every run's config against the devices; one ConfigError line naming the run and where its keys come from."""
    import jax  # pylint: disable=import-outside-toplevel

    from midibert_jax import config_validation  # pylint: disable=import-outside-toplevel

    seen = set()
    for run in the_plan.runs:
        text = run.config.to_json()
        if text in seen:
            continue
        seen.add(text)
        try:
            config_validation.validate(run.config, num_devices=jax.device_count(), num_processes=jax.process_count())
        except config_validation.InvalidConfigError as e:
            source = ("pretrain.spec, then --config.pretrain.overrides.KEY" if isinstance(run, PretrainRun) else
                      "its tasks entry, then --config.finetune.overrides.KEY, task_overrides, protocol_overrides")
            raise ConfigError(f"{run.describe()}: {'; '.join(e.problems)} (keys of its config: {source})") from None


def _is_primary() -> bool:
    import jax  # pylint: disable=import-outside-toplevel

    return jax.process_index() == 0


def _mtime(path: epath.Path) -> float:
    return float(path.stat().mtime)


def _current_test_eval(workdir: str) -> dict[str, Any] | None:
    """eval_test.json when it evaluates the run's current best step and is newer than its newest checkpoint."""
    from midibert_jax import run as run_lib  # pylint: disable=import-outside-toplevel

    path = paths.resolve(workdir) / paths.eval_file("test")
    if not path.exists():
        return None
    if not (paths.resolve(workdir) / paths.CHECKPOINTS).exists():  # pruned (or copied without them): results stay
        return paths.read_json(path)
    try:
        with run_lib.Run.open(workdir) as run:
            best, latest = run.step("best"), run.latest_step
            newest = run.checkpoint_dir / str(latest)
    except run_lib.NoCheckpointError:
        return None
    result = paths.read_json(path)
    if result.get("step") != best or _mtime(path) < _mtime(newest):
        return None
    return result


def finished_record(run: FinetuneRun) -> dict[str, Any] | None:
    """The record of a finished fine-tuning run (its record and a current test evaluation; its checkpoints may
    be gone), else None."""
    record = read_record(run.workdir)
    return record if record is not None and _current_test_eval(run.workdir) is not None else None


def is_finished(run: FinetuneRun) -> bool:
    """A fine-tuning run with its record and a current test evaluation (its checkpoints may be gone)."""
    return finished_record(run) is not None


def params_fingerprint(workdir: str) -> str:
    """sha256 over a run's latest parameters (every array's key path, dtype, shape and bytes, in key order).

    A pre-training run is redone when its checkpoints are gone but a fine-tuning run still needs it: equal
    fingerprints show the redone encoder is the one the finished fine-tuning runs started from."""
    import hashlib  # pylint: disable=import-outside-toplevel

    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    from midibert_jax import run as run_lib  # pylint: disable=import-outside-toplevel

    with run_lib.Run.open(workdir) as run:
        params = run.params(which="latest")
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for key, leaf in sorted((jax.tree_util.keystr(k), np.asarray(v)) for k, v in leaves):
        digest.update(f"{key}:{leaf.dtype}:{leaf.shape};".encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def read_record(workdir: str) -> dict[str, Any] | None:
    """A run's experiment_run.json, or None."""
    path = paths.resolve(workdir) / paths.EXPERIMENT_RUN
    return paths.read_json(path) if path.exists() else None


# Config keys added after runs were recorded, with the value that does what those runs did: a record without
# the key and a plan with that value are the same run.
ADDED_KEYS = {"train.eval_views": 1}


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = dict(flatten(old)), dict(flatten(new))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k != "train.init_from"
            and not (k not in a and k in ADDED_KEYS and b.get(k) == ADDED_KEYS[k])]


def _change_note(record: dict[str, Any] | None, config: ml_collections.ConfigDict) -> str:
    """'' or a note naming the keys in which a reused run's recorded config differs from the planned one."""
    changed = _changed_keys(record.get("config", {}), _plain(config)) if record else []
    if not changed:
        return ""
    return (f" (NOTE: trained with another config: {'; '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}; "
            "delete its folder to redo it)")


def _plain(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as JSON would give it back (tuples as lists), for comparisons with a stored one."""
    import json  # pylint: disable=import-outside-toplevel

    return json.loads(config.to_json())


def _outcome(record: dict[str, Any], metrics: Sequence[str]) -> str:
    """'test accuracy 0.691, best validation accuracy 0.726 at step 40, 14 s' for a run's one line."""
    shown = next((m for m in metrics if m in record["test"]), None)
    parts = [f"test {shown} {record['test'][shown]:.3f}"] if shown else []
    if record.get("validation_best_accuracy") is not None:
        parts.append(f"best validation accuracy {record['validation_best_accuracy']:.3f} at step {record.get('best_step')}")
    if record.get("seconds") is not None:
        parts.append(console.format_seconds(record["seconds"]))
    return ", ".join(parts)


def run_finetune(run: FinetuneRun, metrics: Sequence[str], say: Callable[[str], Any] = print,
                 label: str = "") -> dict[str, Any] | None:
    """Trains (or resumes) and evaluates one fine-tuning run; returns its record (None: preempted).

    A finished run (its record and a current eval_test.json) is reused without training. Says one line,
    `label: outcome`, when done: the trainer's own lines (header, every evaluation) stay off."""
    from midibert_jax import evaluate  # pylint: disable=import-outside-toplevel
    from midibert_jax.train import finetune  # pylint: disable=import-outside-toplevel

    label = label or f"[experiment] {run.describe()}"
    if (record := finished_record(run)) is not None:
        say(f"{label}: finished earlier, reused: {_outcome(record, metrics)}" + _change_note(record, run.config))
        return record
    start = time.monotonic()
    result = finetune.train_and_evaluate(run.config, run.workdir, verbose=False)
    if result.get("stopped") == "preempted":
        return None
    test = _current_test_eval(run.workdir)
    if test is None:
        test = evaluate.evaluate_workdir(run.workdir, "test")
    record = {**run.key(), "test": {m: float(test[m]) for m in metrics if m in test},
              "validation_best_accuracy": result.get("best_accuracy"), "best_step": test.get("step"),
              "seconds": round(time.monotonic() - start, 2), "config": _plain(run.config)}
    if run.pretrain_workdir is not None:  # which encoder it started from (see params_fingerprint)
        record["pretrain_sha256"] = (read_record(run.pretrain_workdir) or {}).get("params_sha256")
    if _is_primary():
        paths.write_json(paths.resolve(run.workdir) / paths.EXPERIMENT_RUN, record)
    say(f"{label}: {_outcome(record, metrics)}")
    return record


def run_pretrain(run: PretrainRun, say: Callable[[str], Any] = print) -> bool:
    """Trains (or resumes) one pre-training run unless it reached its steps; False when preempted."""
    from midibert_jax import run as run_lib  # pylint: disable=import-outside-toplevel
    from midibert_jax.train import pretrain  # pylint: disable=import-outside-toplevel

    try:
        with run_lib.Run.open(run.workdir) as existing:
            latest = existing.latest_step
    except run_lib.NoCheckpointError:
        latest = None
    record = read_record(run.workdir)
    seconds = None
    if latest is not None and latest >= run.config.train.steps:
        say(f"[experiment]   finished earlier (step {latest}): reused" + _change_note(record, run.config))
        if record is not None and record.get("params_sha256"):
            return True
        seconds = (record or {}).get("seconds")  # a record written before fingerprints: add one
    else:
        start = time.monotonic()
        result = pretrain.train_and_evaluate(run.config, run.workdir)
        if "preempted_at" in result:
            return False
        seconds = round(time.monotonic() - start, 2)
    fingerprint = params_fingerprint(run.workdir)
    if record is not None and record.get("params_sha256") and latest is None:  # redone after its checkpoints went
        same = record["params_sha256"] == fingerprint
        say("[experiment]   redone: its parameters are " + (
            "identical to the recorded run's" if same else
            "NOT those of the recorded run (another machine or library version?): the fine-tuning runs finished "
            "earlier started from another encoder; delete them to redo them from this one"))
        seconds = record.get("seconds") if same else seconds
    if _is_primary():
        paths.write_json(paths.resolve(run.workdir) / paths.EXPERIMENT_RUN,
                         {"arm": run.arm, "seed": run.seed, "seconds": seconds, "params_sha256": fingerprint,
                          "config": _plain(run.config)})
    return True


def use_compilation_cache() -> str:
    """Turns on JAX's persistent compilation cache (unless JAX_COMPILATION_CACHE_DIR chose one); returns its folder.

    An experiment compiles the same programs again and again (every seed and arm of a task and protocol
    has the same shapes): from the second run on they load in a fraction of a second instead of
    compiling for tens of seconds. Folder: $MIDIBERT_JAX_CACHE (default ~/.cache/midibert_jax)/jax-compilation.
    """
    import jax  # pylint: disable=import-outside-toplevel

    folder = os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir
    if not folder:
        folder = os.path.join(paths.cache_root(), "jax-compilation")
        jax.config.update("jax_compilation_cache_dir", folder)
    return folder


def run_experiment(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, progress: bool = True,
                   max_runs: int | None = None, table: bool = True) -> dict[str, Any]:
    """Runs (or continues) every run of configs/experiment.py's `config` under `workdir`; writes
    experiment.json, experiment.md and experiment.png there, prints the table; returns the report (see `build_report`).

    max_runs: go through at most this many runs of the plan (pre-training and fine-tuning runs, finished
    ones included) this time; 0 only aggregates what has finished. table: print the table at the end
    (the demo prints its own verdict instead).
    """
    if max_runs is not None and (problem := flags.int_problem(max_runs, 0)):
        raise ConfigError(f"--max-runs: {problem}")
    paths.check_workdir(workdir)
    say = print if progress and _is_primary() else (lambda text: None)
    use_compilation_cache()
    the_plan = plan(config, workdir)
    validate(the_plan)
    from midibert_jax.train import run_lock  # pylint: disable=import-outside-toplevel

    with run_lock.RunLock(paths.resolve(workdir), "experiment"):  # one experiment per folder; each run locks its own
        return _run_plan(config, workdir, the_plan, say=say, progress=progress, max_runs=max_runs, table=table)


def _run_plan(config: ml_collections.ConfigDict, workdir: str | os.PathLike, the_plan: Plan, *,
              say: Callable[[str], Any], progress: bool, max_runs: int | None, table: bool) -> dict[str, Any]:
    """run_experiment's runs and report, under the experiment folder's lock."""
    total = len(the_plan.runs)
    todo = the_plan.runs if max_runs is None else the_plan.runs[:max(0, max_runs)]
    if todo:
        held = hold_out_demo_pieces(the_plan, say)
        if held:
            say(f"[experiment] {held} pieces of the demo tasks' validation and test splits held out of pre-training")
    stopped = ""
    for i, run in enumerate(todo, 1):
        name = f"run {i}/{total}: {run.describe()}"
        try:
            if isinstance(run, PretrainRun):
                waiting = [r for r in the_plan.finetune if r.pretrain_workdir == run.workdir and not is_finished(r)]
                if not waiting and read_record(run.workdir) is not None:
                    say(f"[experiment] {name}: finished earlier, and every fine-tuning run from it too")
                    continue
                say(f"[experiment] {name} -> {run.workdir}")
                finished = run_pretrain(run, say)
            else:
                finished = run_finetune(run, config.metrics, say, f"[experiment] {name}")
        except Exception as e:  # noted, re-raised: which run failed, whatever the failure
            e.add_note(f"while running {name} in {run.workdir}")
            raise
        if not finished:
            stopped = "preempted"
            say("[experiment] preempted: rerun the same command to continue")
            break
    if not stopped and len(todo) < total:
        stopped = f"max_runs={max_runs}"
    report = collect(config, workdir, the_plan=the_plan, stopped=stopped)
    if _is_primary():
        write_report(report, workdir)
    if progress and table and _is_primary():
        print_table(report)
        root = paths.resolve(workdir)
        print(f"[experiment] {root / paths.EXPERIMENT_FILE}, {root / paths.EXPERIMENT_TABLE}, "
              f"{root / paths.EXPERIMENT_PLOT}")
    return report


def _curve(workdir: str) -> dict[str, list[float]]:
    """The run's validation accuracy against its wall-clock seconds (`analysis.time_to_accuracy`)."""
    from midibert_jax import analysis  # pylint: disable=import-outside-toplevel

    try:
        seconds, accuracy = analysis.time_to_accuracy(workdir)
    except FileNotFoundError:
        return {"seconds": [], "validation_accuracy": []}
    return {"seconds": seconds.tolist(), "validation_accuracy": accuracy.tolist()}


def _last_value(workdir: str, key: str) -> float | None:
    from midibert_jax import analysis  # pylint: disable=import-outside-toplevel

    try:
        values = analysis.read_metrics(workdir).get(key, ((), ()))[1]
    except FileNotFoundError:
        return None
    return float(values[-1]) if len(values) else None


def collect(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, the_plan: Plan | None = None,
            stopped: str = "") -> dict[str, Any]:
    """The report of the runs finished under `workdir` (`finished_record`: the runner's own test, so a run it
    would redo is missing here too); trains nothing.
    `stopped`: why the runner stopped before the end of the plan ('preempted', 'max_runs=N'), if it did."""
    the_plan = the_plan or plan(config, workdir)
    runs, missing = [], []
    for run in the_plan.finetune:
        record = finished_record(run)
        if record is None:
            missing.append({**run.key(), "workdir": run.workdir})
            continue
        runs.append({**run.key(), "workdir": run.workdir, "pretrain_workdir": run.pretrain_workdir,
                     "test": record["test"], "validation_best_accuracy": record.get("validation_best_accuracy"),
                     "best_step": record.get("best_step"), "seconds": record.get("seconds"),
                     "curve": _curve(run.workdir)})
    pretrain_runs = []
    for run in the_plan.pretrain:
        record = read_record(run.workdir) or {}
        pretrain_runs.append({"arm": run.arm, "seed": run.seed, "workdir": run.workdir, "steps": run.config.train.steps,
                              "finished": bool(record),
                              "validation_accuracy": _last_value(run.workdir, "eval/accuracy"),
                              "seconds": record.get("seconds")})
    return build_report(_plain(config), runs, missing=missing, pretrain=pretrain_runs, machine=machine_info(),
                        metrics=tuple(config.metrics), stopped=stopped, baselines=task_baselines(the_plan, workdir))


def task_baselines(the_plan: Plan, workdir: str | os.PathLike) -> dict[str, Any]:
    """Per task whose dataset is built: the non-neural baselines on its test split (`midibert_jax.baselines`),
    computed once and kept in <workdir>/baselines/<task>.json (redone when the dataset folder changes)."""
    from midibert_jax import baselines  # pylint: disable=import-outside-toplevel
    from midibert_jax.data import dataset_lock, prepare  # pylint: disable=import-outside-toplevel

    out: dict[str, Any] = {}
    for run in the_plan.finetune:
        if run.task in out:
            continue
        dataset_dir = prepare.make_builder(run.config.data).data_path
        if not dataset_lock.is_complete(dataset_dir):
            continue
        cache = paths.resolve(workdir) / "baselines" / f"{run.task}.json"
        if cache.exists() and paths.read_json(cache).get("dataset_dir") == os.fspath(dataset_dir):
            out[run.task] = paths.read_json(cache)
            continue
        result = {**baselines.evaluate_baselines(os.fspath(dataset_dir)), "dataset_dir": os.fspath(dataset_dir)}
        if _is_primary():
            paths.write_json(cache, result)
        out[run.task] = result
    return out
