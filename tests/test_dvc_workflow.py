"""The DVC workflow contract, proven through the real `git` and `dvc` CLIs on a tiny phantom.

One project is built per module (a full `dvc repro` of every stage, about a minute) and then
exercised the way people use it: a no-op repro, cache precision per params group and per code
file, experiments with `-S`, a queued sweep, and metrics/params/plots diffs across branches.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from pipeline.evaluate.headline import headline_metric_keys
from pipeline.params import load_params
from pipeline.report.page import headline_keys, number
from tests.browser import browser, offline_problems
from tests.conftest import DEFAULT_LR, PROJECT_ROOT, DvcProject, create_project

# Learning rates the experiments set, as `-S` and `dvc exp show` write them: any four that
# differ from the committed default (which these tests compare against), so that a new default
# never turns an experiment into a no-op.
EXPERIMENT_LRS = tuple(
    lr for lr in ("0.0005", "0.003", "0.004", "0.005", "0.006") if float(lr) != DEFAULT_LR
)[:4]
SWEEP_LRS = EXPERIMENT_LRS[1:3]

STAGES = (
    "synthesize",
    "extract",
    "validate",
    "colorize",
    "split",
    "augment",
    "train",
    "evaluate",
    "export",
    "infer",
    "report",
)

# param (dotted) -> new value -> the stages that read it (and only those). `report` shows
# every param, so it reads them all.
READERS: list[tuple[str, object, set[str]]] = [
    ("seed", 7, {"synthesize", "split", "augment", "train", "evaluate", "export", "report"}),
    ("phantom.noise_hu", [2.0, 4.0], {"synthesize", "report"}),
    # export records the extract and infer sections: the new-images command's settings.
    ("extract.max_uncompressed_mb", 2048.0, {"extract", "export", "report"}),
    ("validate.min_lesion_slice_share", 0.1, {"validate", "report"}),
    ("colorize.image_interpolation", "linear", {"colorize", "report"}),
    # The crop round the head: colorize crops the training cases, and export records it for
    # the new-images command, which crops new slices alike.
    ("head_crop.max_zoom", 1.5, {"colorize", "export", "report"}),
    ("image_size", 48, {"colorize", "train", "report"}),
    (
        "rgb_map",
        {"background": [0, 0, 0], "Hemorrhagic": [255, 0, 255], "Ischemic": [0, 255, 0]},
        {"colorize", "augment", "train", "evaluate", "export", "infer", "report"},
    ),
    ("split.mini_test_per_class", 2, {"split", "report"}),
    ("augment.elastic.alpha", 6.0, {"augment", "report"}),
    ("lr", 0.0005, {"train", "report"}),
    ("model.dropout_rate", 0.1, {"train", "report"}),
    ("train.clipvalue", 1.0, {"train", "report"}),
    ("evaluate.nsd_tolerance_mm", 2.0, {"evaluate", "report"}),
    ("infer.overlay_alpha", 0.3, {"infer", "export", "report"}),
]


def nested(dotted: str, value: object) -> dict:
    result: object = value
    for part in reversed(dotted.split(".")):
        result = {part: result}
    return result  # type: ignore[return-value]


def ran_and_skipped(output: str) -> tuple[set[str], set[str]]:
    ran = set(re.findall(r"Running stage '([\w-]+)'", output))
    skipped = set(re.findall(r"Stage '([\w-]+)' didn't change, skipping", output))
    return ran, skipped


def plot_revisions(html: str) -> dict[str, set[str]]:
    """The revisions each Vega plot of a `dvc plots` page holds data of, by plot id."""
    specs = re.findall(r'<div id = "([^"]+)">\s*<script[^>]*>\s*var spec = (.*?);\n', html)
    return {
        plot: {row["rev"] for row in json.loads(spec)["data"]["values"]} for plot, spec in specs
    }


def status_stages(project: DvcProject) -> set[str]:
    return set(json.loads(project.dvc("status", "--json").stdout or "{}"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[DvcProject, str, Path]:
    """A tiny project after one full `dvc repro`, committed on main, with the params trace."""
    project = create_project(tmp_path_factory.mktemp("workflow") / "project")
    trace = project.path.parent / "params-trace.jsonl"
    result = project.dvc("repro", env={"PIPELINE_PARAMS_TRACE": str(trace)})
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "baseline run")
    return project, result.stdout, trace


def test_fresh_repro_runs_every_stage_and_a_second_runs_none(built):
    project, first_output, _ = built
    ran, _ = ran_and_skipped(first_output)
    assert ran == set(STAGES)
    second = project.dvc("repro").stdout
    assert ran_and_skipped(second)[0] == set()
    assert "up to date" in second
    assert status_stages(project) == set()


def test_each_stage_declares_exactly_the_params_it_reads(built):
    project, _, trace = built
    reads: dict[str, set[str]] = {}
    for line in trace.read_text().splitlines():
        record = json.loads(line)
        reads.setdefault(record["stage"], set()).update(record["reads"])
    stages = yaml.safe_load((project.path / "dvc.yaml").read_text())["stages"]
    for name in STAGES:
        declared = set(stages[name].get("params", []))
        read = reads.get(name, set())
        undeclared = {k for k in read if not any(k == d or k.startswith(d + ".") for d in declared)}
        unused = {d for d in declared if not any(k == d or k.startswith(d + ".") for k in read)}
        assert not undeclared, f"{name} reads params it does not declare: {sorted(undeclared)}"
        assert not unused, f"{name} declares params it never reads: {sorted(unused)}"


@pytest.mark.parametrize(("key", "value", "readers"), READERS, ids=[r[0] for r in READERS])
def test_changing_a_param_flags_exactly_its_readers(built, key, value, readers):
    project, _, _ = built
    try:
        project.update_params(nested(key, value))
        assert status_stages(project) == readers
    finally:
        project.git("checkout", "--", "params.yaml")


@pytest.mark.parametrize(
    ("key", "value", "reruns"),
    [
        (
            "augment.barrel.radius",
            0.4,
            {"augment", "train", "evaluate", "export", "infer", "report"},
        ),
        ("lr", 2 * DEFAULT_LR, {"train", "evaluate", "export", "infer", "report"}),
        ("infer.overlay_alpha", 0.3, {"infer", "export", "report"}),
    ],
)
def test_repro_reruns_readers_and_downstream_and_skips_the_rest(built, key, value, reruns):
    project, _, _ = built
    try:
        project.update_params(nested(key, value))
        ran, skipped = ran_and_skipped(project.dvc("repro").stdout)
        assert ran == reruns
        assert skipped == set(STAGES) - reruns
    finally:
        project.git("checkout", "--", ".")
        project.dvc("checkout", "-q", "--force")


def test_editing_a_pipeline_module_flags_only_the_stages_that_import_it(built):
    project, _, _ = built
    module = project.path / "pipeline" / "data" / "augment.py"
    try:
        module.write_text(module.read_text() + "\n# an edit\n")
        assert status_stages(project) == {"augment"}
    finally:
        project.git("checkout", "--", "pipeline/data/augment.py")


def test_an_edited_data_file_reruns_only_its_producer(built):
    """Readers depend on manifests (with each file's sha256), not on the folders of PNGs.

    An edited PNG is an edited output of the stage that wrote it: DVC flags that stage alone,
    `dvc repro` restores that stage's outputs from its run cache, and every reader is skipped.
    """
    project, _, _ = built
    image = sorted((project.path / "data" / "colorized" / "images").iterdir())[0]
    original = image.read_bytes()
    try:
        image.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        assert status_stages(project) == {"colorize"}
        output = project.dvc("repro").stdout
        ran, skipped = ran_and_skipped(output)
        assert ran == set()
        assert "Stage 'colorize' is cached - skipping run, checking out outputs" in output
        assert skipped == set(STAGES) - {"colorize"}
        assert image.read_bytes() == original
    finally:
        project.dvc("checkout", "-q", "--force")


def test_the_tiny_runs_report_works_offline_in_a_browser(built):
    """The report of a real (tiny) run: every picture loads, nothing reaches the network,
    the headline metrics are on the page; its screenshot is kept in tests/output/."""
    project, _, _ = built
    reports = project.path / "reports"
    metrics = json.loads((project.path / "metrics" / "evaluate.json").read_text())
    with browser() as chromium:
        visit = chromium.visit(reports / "index.html")
        assert offline_problems(visit, reports) == []
        assert len(visit.images) >= 8
        for key in headline_keys(metrics, ("hemorrhagic", "ischemic")):
            assert number(metrics[key]) in visit.text, key
        picture = chromium.screenshot(PROJECT_ROOT / "tests" / "output" / "report_tiny_run.png")
    assert picture.shape[1] == 1280 and picture.std() > 20


def test_committed_metrics_are_readable_before_running_anything(built, tmp_path):
    project, _, _ = built
    clone = tmp_path / "clone"
    project.run("git", "clone", "-q", str(project.path), str(clone))
    fresh = DvcProject(clone)
    shown = json.loads(fresh.dvc("metrics", "show", "--json").stdout)
    evaluate = next(iter(shown.values()))["data"]["metrics/evaluate.json"]["data"]
    assert "dice_hemorrhagic" in evaluate
    assert not (clone / "data" / "colorized").exists(), "large outputs must stay out of git"


def test_metrics_params_and_plots_diff_across_branches(built):
    project, _, _ = built
    branch_lr = float(EXPERIMENT_LRS[3])
    project.git("checkout", "-q", "-b", "faster-lr")
    try:
        project.update_params({"lr": branch_lr})
        project.dvc("repro")
        project.git("add", "-A")
        project.git("commit", "-q", "-m", f"lr {branch_lr}")
        diff = project.dvc("metrics", "diff", "main", "faster-lr", "--all", "--json").stdout
        evaluate = json.loads(diff)["metrics/evaluate.json"]
        assert {"dice_hemorrhagic", "dice_ischemic", "dice_mean", "hd95_mm_hemorrhagic"} <= set(
            evaluate
        )
        # One epoch on the tiny phantom may leave a class at the same Dice; the loss always moves.
        changed = {key for key, value in evaluate.items() if value.get("diff")}
        assert "categorical_crossentropy" in changed and changed & {"dice_hemorrhagic", "dice_mean"}
        # docs/experiments.md's comparison of all 12 headline figures, one row each.
        targets = ("--targets", "metrics/headline.json", "--json", "--all")
        headline = json.loads(
            project.dvc("metrics", "diff", *targets, "--", "main", "faster-lr").stdout
        )
        assert list(headline) == ["metrics/headline.json"]
        assert set(headline["metrics/headline.json"]) == set(headline_metric_keys())
        params = json.loads(project.dvc("params", "diff", "main", "faster-lr", "--json").stdout)
        assert (params["params.yaml"]["lr"]["old"], params["params.yaml"]["lr"]["new"]) == (
            DEFAULT_LR,
            branch_lr,
        )
        # Every plot of dvc.yaml, both revisions in each: in this working copy, and in a
        # fresh clone with no DVC cache (its sources are kept in git).
        project.dvc("plots", "diff", "main", "faster-lr", "-o", "plots-diff")
        page = project.path / "plots-diff" / "index.html"
        revisions = plot_revisions(page.read_text())
        assert len(revisions) >= 7, revisions  # curves x2, per-case Dice x2, volume x2, confusion
        assert all(revs == {"main", "faster-lr"} for revs in revisions.values()), revisions
        clone = DvcProject(project.path.parent / "plots-clone")
        project.run("git", "clone", "-q", str(project.path), str(clone.path))
        clone.git("checkout", "-q", "faster-lr")
        clone.dvc("plots", "diff", "main", "faster-lr", "-o", "plots-diff")
        assert plot_revisions((clone.path / "plots-diff" / "index.html").read_text()) == revisions
        assert not (clone.path / ".dvc" / "cache").exists()
        with browser() as chromium:
            visit = chromium.visit(page)
            assert offline_problems(visit, project.path) == []
            drawn = chromium.driver.execute_script(
                "return document.querySelectorAll('.vega-embed .marks').length"
            )
        assert drawn == len(revisions), "every plot drawn with the vendored Vega, offline"
    finally:
        project.git("checkout", "-q", "main")
        project.dvc("checkout", "-q")


def test_experiments_with_set_param_and_a_queued_sweep(built):
    project, _, _ = built
    project.dvc("exp", "run", "-S", f"lr={EXPERIMENT_LRS[0]}")
    shown = json.loads(project.dvc("exp", "show", "--json").stdout)
    experiments = [e for rev in shown for e in (rev.get("experiments") or [])]
    assert experiments, "dvc exp run produced no experiment"

    def params_and_metrics(record: dict) -> tuple[float, float]:
        data = record["data"]
        lr = data["params"]["params.yaml"]["data"]["lr"]
        ce = data["metrics"]["metrics/evaluate.json"]["data"]["categorical_crossentropy"]
        return lr, ce

    baseline = params_and_metrics(next(r for r in shown if r["rev"] != "workspace"))
    experiment = params_and_metrics(experiments[0]["revs"][0])
    assert experiment[0] == float(EXPERIMENT_LRS[0]) and baseline[0] == DEFAULT_LR
    assert experiment[1] != baseline[1]

    project.git("checkout", "--", ".")
    project.dvc("checkout", "-q", "--force")
    for lr in SWEEP_LRS:
        project.dvc("exp", "run", "--queue", "-S", f"lr={lr}")
    project.dvc("queue", "start", "-j", "1")
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        status = project.dvc("queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(3)
    else:
        pytest.fail(f"queued experiments did not finish:\n{status}")
    assert "Failed" not in status, status
    table = project.dvc("exp", "show", "--md").stdout
    assert all(lr in table for lr in SWEEP_LRS)

    # The docs' recipe: one row per experiment, within 120 columns, nothing cut off.
    experiments_doc = (PROJECT_ROOT / "docs" / "experiments.md").read_text()
    recipe = [
        line
        for line in experiments_doc.splitlines()
        if line.startswith(("HIDE=", "dvc exp show --only-changed"))
    ]
    assert len(recipe) == 2, recipe
    shown = project.run("bash", "-c", "; ".join(recipe), env={"COLUMNS": "120"}).stdout
    assert "…" not in shown, shown
    header = next(line for line in shown.splitlines() if "Experiment" in line).split()
    assert [name for name in header if name not in ("State", "Executor")] == [
        "Experiment",
        "Created",
        "metrics/headline.json:dice_hemorrhagic",
        "metrics/headline.json:dice_ischemic",
        "lr",
    ], shown
    for lr in EXPERIMENT_LRS[:3]:
        assert lr in shown


def test_a_learning_rate_without_a_dot_set_through_exp_run_is_a_number(make_project):
    """`dvc exp run -S lr=7e-5` writes `lr: 7e-05`: every stage's loader and `dvc params
    diff` read it as the number (YAML 1.1 needs a dot in a float and read it as a string)."""
    project = make_project()
    # synthesize is the cheapest stage, and it validates the whole params.yaml as train does.
    project.dvc("exp", "run", "-S", "lr=7e-5", "synthesize")
    assert load_params(project.path / "params.yaml").lr == 7e-05
    for typed, expected in (("1e-3", 1e-3), ("5.0e-4", 5e-4), (".5", 0.5), ("1E-6", 1e-6)):
        apply_overrides(project.path / "params.yaml", [f"lr={typed}"])  # what `-S` runs
        assert load_params(project.path / "params.yaml").lr == expected
        diff = json.loads(project.dvc("params", "diff", "--all", "--json").stdout)["params.yaml"][
            "lr"
        ]
        assert (diff["old"], diff["new"]) == (DEFAULT_LR, expected), typed
        assert isinstance(diff["diff"], float), typed  # DVC subtracts numbers, not strings


def test_an_applied_and_committed_experiment_keeps_the_params_tests_green(make_project):
    # params.yaml is the one place values live: an experiment's values committed as the new
    # params.yaml are as valid as the old ones, with no copy in the code to fall out of step.
    project = make_project()
    # `dvc exp run` applies the finished experiment to the workspace, as `dvc exp apply` does;
    # one cheap stage is enough to make it a real experiment.
    project.dvc("exp", "run", "--name", "faster", "-S", f"lr={SWEEP_LRS[1]}", "synthesize")
    assert project.params()["lr"] == float(SWEEP_LRS[1])
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "apply experiment faster")
    (project.path / "tests").mkdir()
    for name in ("conftest.py", "test_params.py"):
        (project.path / "tests" / name).write_text((PROJECT_ROOT / "tests" / name).read_text())
    (project.path / "pyproject.toml").write_text((PROJECT_ROOT / "pyproject.toml").read_text())
    result = project.run(sys.executable, "-m", "pytest", "tests/test_params.py", "-q", "-n", "0")
    assert " passed" in result.stdout and "failed" not in result.stdout
